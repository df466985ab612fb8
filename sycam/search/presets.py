"""Named search spaces (``--space small|default|full``) and space files, and the enumerator's size
limit under a budget.

- ``default``: the space every search used before there were others (:data:`sycam.search.space.DEFAULT`).
- ``small``: a subset of it, for quick runs: ReLU, products and sums of Maps, Grad-CAM's channel
  weights and layer averaging over the stage ends; programs of at most 6 nodes.
- ``full``: every production of :data:`sycam.search.space.PRODUCTIONS` — every form the operator
  table declares (map-level ``threshold``/``percentile``/``winsorize``/``rescale``, the guarded
  ``exp``/``log``/``sqrt``, ``sigmoid``, ``tanh``, ``pc1``, ``max``/``min``/``-``, ``norm``,
  ``zscore`` ...) and layer slices and lists besides the named selections — except the expensive
  terminals ``S`` (Score-CAM), ``D`` (Ablation-CAM), ``R`` and ``R1`` (Recipro-CAM, Gaussian and
  one-hot kernel), which need ``--expensive`` (a forward pass per channel of the target layer, or
  per position of its grid, per image: their capture cost is measured and printed). Its programs
  may explain the logit, the probability or Finer-CAM's comparison (``score finer(3, 0.6);``):
  Optuna's sampler chooses the score (:data:`FULL_SCORES`; the enumerator stays on the logit), and
  each other score sampled costs one more capture of the train split (printed).

A space file (``--space my.toml`` or ``my.json``; TOML read with the standard library's
``tomllib``) holds one table of these keys, every one optional::

    base = "default"                 # the preset the file starts from
    operators = ["relu", "exp", "threshold", "*", "+"]   # replaces the base's operators: every form of each
    add = ["pc1"]                    # production names to add (see `sycam.search.space.PRODUCTIONS`)
    remove = ["layers_max"]          # ... and to remove
    terminals = ["A", "G"]           # of A, G, S, D, R, R1 (S, D, R, R1: the expensive ones)
    programs = ["single", "layers_mean", "layers_winsor"]
    selections = ["stages", "-3:", "[-1, -2]"]
    max_size = 8                     # the enumerator's largest Map (AST nodes) ...
    grow = true                      # ... raised with the budget (see max_size_for)
    max_depth = 6                    # the Optuna sampler's deepest derivation
    interleave = false               # the enumerator takes a type's productions in turns (full: true)
    scores = ["logit", "prob", "finer(3, 0.6)"]   # score directives Optuna's sampler may give a program
                                                  # (logit among them; default, small: logit only)

A bad file is a :class:`~sycam.errors.SycamError` naming the file and the line.

The size limit (:func:`max_size_for`): ``--max-size`` when given; otherwise the space's
``max_size``, plus one for every doubling of the budget beyond 300 s when the space grows (9 from
600 s, 10 from 1,200 s; at most 4 more). With ``--candidates`` the budget plays no part, so such
runs stay reproducible. The default space at the default 90 s budget (and at 300 s) keeps size 8.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from sycam.errors import SycamError
from sycam.lang.ops import TABLE
from sycam.lang import ast as A
from sycam.search.space import BY_NAME, DEFAULT, EXPENSIVE, PRODUCTIONS, REQUIRED, Space, parse_score, selection_node

GROW_FROM = 300.0  # seconds of budget from which the size limit grows: one more per doubling
GROW_MAX = 4  # at most this many nodes more

_OPERATOR_OF = {spec.production(f): name for name, spec in TABLE.items() for f in spec.search}
_TERMINALS = ("A", "G") + EXPENSIVE
_PROGRAMS = tuple(p.name for p in PRODUCTIONS if p.type == "P")

#: the full space's scores: the logit, its softmax probability and Finer-CAM's comparison with the 3
#: most similar classes at the strength its paper recommends for fine-grained data (alpha 0.6)
FULL_SCORES = ("logit", "prob", "finer(3, 0.6)")
SMALL = Space("small", frozenset(["A", "G", "relu_T", "mean_hw", "relu_C", "sum_c", "mean_c", "relu_M", "mul_MM",
                                  "add_MM", "mean_c_S", "single", "layers_mean"]),
              selections=("stages",), max_size=6, grow=False, max_depth=5)
FULL = Space("full", frozenset(p.name for p in PRODUCTIONS if p.name not in EXPENSIVE),
             selections=("convs", "stages", "-2:", "-3:", "-4:", "[-1, -3]"), max_size=8, interleave=True,
             scores=FULL_SCORES)
PRESETS = {"small": SMALL, "default": DEFAULT, "full": FULL}
KEYS = ("base", "operators", "add", "remove", "terminals", "programs", "selections", "max_size", "grow", "max_depth",
        "interleave", "scores")


def with_expensive(space: Space) -> Space:
    """``space`` with the expensive terminals ``S``, ``D``, ``R`` and ``R1`` (``--expensive``)."""
    if set(EXPENSIVE) <= set(space.productions):
        return space
    return Space(space.name + "+expensive", space.productions + EXPENSIVE, space.selections, space.max_size,
                 space.grow, space.max_depth, space.interleave, space.scores)


def load_space(spec: str, expensive: bool = False) -> Space:
    """The space ``spec`` names: a preset (small, default, full) or a ``.toml`` / ``.json`` file."""
    if spec in PRESETS:
        space = PRESETS[spec]
    elif spec.endswith((".toml", ".json")):
        space = _from_file(Path(spec))
    else:
        raise SycamError(f"--space {spec!r}: expected one of the presets {', '.join(PRESETS)}, "
                         "or a .toml or .json space file")
    return with_expensive(space) if expensive else space


def max_size_for(space: Space, budget: float | None, candidates: int | None, given: int | None = None) -> int:
    """The enumerator's size limit (see the module docstring for the rule)."""
    if given is not None:
        return given
    if candidates or budget is None or not space.grow or budget < 2 * GROW_FROM:
        return space.max_size
    return space.max_size + min(GROW_MAX, int(math.floor(math.log2(budget / GROW_FROM))))


MAP_BUCKET_GROWTH = 10  # at most this many times the enumerator's bucket for Maps and Scalars
MAP_EXTRA_SIZE = 3  # with a grown map bucket, Maps and Scalars are enumerated this much beyond the size limit


def map_bucket_for(space: Space, budget: float | None, candidates: int | None, bucket: int = 300) -> int | None:
    """The enumerator's bucket for Maps and Scalars (:class:`~sycam.search.enumerate.Enumerator`;
    None: the common bucket). It grows with the budget as the size limit does, ``bucket · budget / 60``
    from 300 s on (1,500 at 300 s, 3,000 from 600 s), at most :data:`MAP_BUCKET_GROWTH` times:
    the enumerator's time limit, not the bucket, then decides how far it goes. Maps and Scalars
    cost little memory (a Map's probe value is 16 × 7 × 7 on MobileNetV2), and with the common
    bucket of 300 the enumerator ran out of programs (934 in a 600 s MobileNetV2 run, which ended
    after 326 s). Not with ``--candidates`` (reproducible runs) or a space that does not grow.
    With it, Maps and Scalars alone (no more Tensors) are also enumerated up to
    :data:`MAP_EXTRA_SIZE` nodes beyond the size limit, while the enumerator's time lasts: with the
    size limit alone the enumerator of a 600 s MobileNetV2 run was done after 49 of its 159 s."""
    if candidates or budget is None or not space.grow or budget < GROW_FROM:
        return None
    return int(bucket * min(MAP_BUCKET_GROWTH, budget / 60))


# ------------------------------------------------------------------ space files


def _line_of(text: str, key: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf'\s*"?{re.escape(key)}"?\s*[=:]', line):
            return i
    return None


def _from_file(path: Path) -> Space:
    try:
        text = path.read_text()
    except OSError as err:
        raise SycamError(f"--space {path}: cannot read the space file ({err.strerror or err})") from None
    if path.suffix == ".toml":
        import tomllib

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SycamError(f"{path}: not valid TOML: {err}") from None
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise SycamError(f"{path} line {err.lineno}: not valid JSON: {err.msg}") from None
    if not isinstance(doc, dict):
        raise SycamError(f"{path}: a space file holds one table (object) of keys: {', '.join(KEYS)}")

    def bad(key: str, why: str) -> SycamError:
        line = _line_of(text, key)
        return SycamError(f"{path}{f' line {line}' if line else ''}: {key}: {why}")

    for key in doc:
        if key not in KEYS:
            raise bad(key, f"unknown key; a space file has {', '.join(KEYS)}")

    def names(key: str, known) -> list[str]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(key, "expected a list of strings")
        unknown = [v for v in value if v not in known]
        if unknown:
            raise bad(key, f"unknown {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
        return value

    base_name = doc.get("base", "default")
    if base_name not in PRESETS:
        raise bad("base", f"{base_name!r} is not a preset; expected one of {', '.join(PRESETS)}")
    base = PRESETS[base_name]
    chosen = set(base.productions)
    if "operators" in doc:
        ops = set(names("operators", {n for n, s in TABLE.items() if s.search}))
        chosen = {n for n in chosen if n not in _OPERATOR_OF} | {p for p, op in _OPERATOR_OF.items() if op in ops}
    if "terminals" in doc:
        terms = set(names("terminals", _TERMINALS))
        chosen = {n for n in chosen if n not in _TERMINALS} | terms
    if "programs" in doc:
        progs = set(names("programs", _PROGRAMS))
        chosen = {n for n in chosen if n not in _PROGRAMS} | progs
    chosen |= set(names("add", BY_NAME))
    chosen -= set(names("remove", BY_NAME))
    missing = [n for n in REQUIRED if n not in chosen]
    if missing:
        where = "operators" if "operators" in doc else "terminals" if "terminals" in doc else "remove"
        raise bad(where, f"every space needs {', '.join(missing)} (the sampler's smallest programs)")
    selections = base.selections
    if "selections" in doc:
        selections = tuple(doc["selections"]) if isinstance(doc["selections"], list) else ()
        if not selections or not all(isinstance(s, str) for s in selections):
            raise bad("selections", "expected a non-empty list of layer selections, e.g. [\"stages\", \"-3:\"]")
        for sel in selections:
            try:
                selection_node(sel)
            except SycamError as err:
                raise bad("selections", f"{sel!r} is not a layer selection ({str(err).splitlines()[0]})") from None
    ints = {}
    for key, lo in (("max_size", 1), ("max_depth", 1)):
        value = doc.get(key, getattr(base, key))
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise bad(key, f"expected a positive integer, got {value!r}")
        ints[key] = value
    flags = {}
    for key in ("grow", "interleave"):
        flags[key] = doc.get(key, getattr(base, key))
        if not isinstance(flags[key], bool):
            raise bad(key, f"expected true or false, got {flags[key]!r}")
    scores = base.scores
    if "scores" in doc:
        texts = doc["scores"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise bad("scores", 'expected a non-empty list of score directives, e.g. ["logit", "prob", "finer(3, 0.6)"]')
        specs = []
        for t in texts:
            try:
                specs.append(parse_score(t))
            except SycamError as err:
                raise bad("scores", f"{t!r} is not a score ({str(err).splitlines()[0]}); "
                                    "expected logit, prob or finer(k, alpha)") from None
        if A.ScoreSpec() not in specs:
            raise bad("scores", "must include \"logit\" (the enumerator's programs and the references explain the logit)")
        scores = tuple(specs)
    return Space(path.stem, frozenset(chosen), selections, ints["max_size"], flags["grow"], ints["max_depth"],
                 flags["interleave"], scores)


__all__ = ["FULL", "MAP_EXTRA_SIZE", "PRESETS", "SMALL", "load_space", "map_bucket_for", "max_size_for", "with_expensive"]
