"""Bottom-up, type-directed enumeration of programs by size, deduplicated twice.

1. **Canonical form**: each new expression is mapped to sympy (:mod:`sycam.lang.canon`); an
   expression whose canonical form was seen is dropped.
2. **Observational equivalence**: each sub-expression is evaluated on a probe batch of captures;
   one whose values equal (to 5 significant digits) those of a smaller one is dropped, since it
   behaves the same under every parent. Whole programs are compared on their *normalised* maps,
   so programs equal up to a positive scale (CAM metrics cannot tell them apart) are one.

The enumerator never touches a model: it reads cached captures only.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sycam import kernels as K
from sycam.capture import Captures
from sycam.compile import CompiledProgram, LayerResolver, eval_op
from sycam.errors import ProgramRuntimeError, SycamError
from sycam.lang import ast as A
from sycam.lang.canon import canonical
from sycam.search.space import BY_NAME, C, DEFAULT, M, P, SELECTIONS, S, T, Derivation, Production, Space


_WEIGHTS: dict[tuple[int, str], Tensor] = {}


FINGERPRINT_POSITIONS = 1 << 16  # values larger than this are hashed at this many seeded positions
_POSITIONS: dict[tuple[int, str], Tensor] = {}


def _fingerprint(q: Tensor) -> bytes:
    """A fingerprint of an integer-valued tensor (|q| < 2³¹): two random linear hashes.

    Hashing the bytes (blake2b of a copy) took 80% of the enumerator's time on MobileNetV2
    probes. Here each product wraps modulo 2³² (int32 multiplies vectorise; int64 ones do not)
    and so do the sums (a hash modulo 2³² each); the weights come from a fixed seed, so keys are reproducible
    and two different tensors share a key with probability about 2⁻⁶⁴.

    """
    flat = q.reshape(-1).to(torch.int32)
    key = (flat.numel(), str(flat.device))
    w = _WEIGHTS.get(key)
    if w is None:
        g = torch.Generator().manual_seed(0x5C4)
        w = torch.randint(-(2**31), 2**31 - 1, (2, flat.numel()), generator=g, dtype=torch.int32).to(flat.device)
        _WEIGHTS[key] = w
    h = torch.stack([(flat * w[0]).sum(dtype=torch.int32), (flat * w[1]).sum(dtype=torch.int32)])
    return h.cpu().numpy().tobytes()


def _sampled(x: Tensor) -> Tensor:
    """``x`` flattened, or its entries at :data:`FINGERPRINT_POSITIONS` seeded positions (fixed per size)."""
    flat = x.reshape(-1)
    if flat.numel() <= FINGERPRINT_POSITIONS:
        return flat
    key = (flat.numel(), str(flat.device))
    idx = _POSITIONS.get(key)
    if idx is None:
        g = torch.Generator().manual_seed(0x5C5)
        idx = torch.randperm(flat.numel(), generator=g)[:FINGERPRINT_POSITIONS].sort().values.to(flat.device)
        _POSITIONS[key] = idx
    return flat.index_select(0, idx)


def value_key(v: Tensor) -> bytes | None:
    """A hash of a value up to float noise (5 significant digits), None if not finite.

    A value of more than :data:`FINGERPRINT_POSITIONS` entries is hashed at that many positions,
    drawn once per size with a fixed seed (its scale and finiteness still come from every entry).
    Why: a Tensor-typed value on MobileNetV2's probe holds 1 M entries (16 × 1280 × 7 × 7), and
    rounding and hashing all of them was half of the enumeration time (14 of 28 s in a 240 s run).
    Two sub-expressions then count as observationally equal when they agree, to 5 significant
    digits, at 65,536 random positions of the probe; the enumerator keeps the smaller. Whole
    programs (:func:`map_key`, which also decides the race's twins) are still compared everywhere.
    """
    scale = float(v.abs().amax()) if v.numel() else 0.0  # NaN and inf propagate into the maximum
    if not math.isfinite(scale):
        return None
    if scale == 0.0:
        return b"zero" + str(tuple(v.shape)).encode()
    q = torch.round(_sampled(v) * (1e5 / scale))  # rounded where it is hashed only
    return _fingerprint(q) + f"{scale:.5g}|{tuple(v.shape)}".encode()


def map_key(maps: Tensor) -> bytes:
    """Fingerprint of normalised maps (B, H, W) in [0, 1], to 1/100."""
    return _fingerprint(torch.round(maps * 100)) + str(tuple(maps.shape)).encode()


@dataclass
class EnumStats:
    generated: int = 0  # expressions built (all types)
    canonical_duplicates: int = 0
    observational_duplicates: int = 0  # sub-expressions with the values of a smaller one
    invalid: int = 0  # NaN/Inf on the probe
    programs: int = 0  # whole programs that survived both dedupes
    program_duplicates: int = 0  # whole programs with the normalised maps of a smaller one
    largest: int = 0  # the largest Map size that gave a program
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class _Entry:
    deriv: Derivation
    expr: A.Expr
    value: Tensor
    size: int


@dataclass
class Enumerator:
    """Enumerate programs of the search space by size on one probe batch.

    ``probe``: captures of a few images holding every conv layer (A and G); ``resolver``: the
    model's layers; ``max_size``: largest Map expression (AST nodes) enumerated; ``bucket``:
    at most this many expressions are kept per (type, size), smallest first; ``map_bucket``: the
    same for Maps and Scalars, whose probe values are small (16 × 7 × 7 on MobileNetV2, against
    16 × 1280 × 7 × 7 for a Tensor): a run with time for many programs keeps more of them without
    holding more Tensors (300 per size of those held 11 GB on MobileNetV2); ``map_max_size``:
    beyond ``max_size``, Maps and Scalars alone are built (from the banks below) up to this size,
    for as long as the time limit allows; ``space``: the
    productions it combines (:class:`~sycam.search.space.Space`; its expensive terminals need
    ``S``/``D`` in the probe).
    """

    probe: Captures
    resolver: LayerResolver
    max_size: int = 8
    bucket: int = 300
    map_bucket: int | None = None  # the bucket of Maps and Scalars (None: ``bucket``)
    map_max_size: int | None = None  # Maps and Scalars (only) go on up to this size, while time is left
    multi_layer_from: int = 6  # Maps up to this size are also lifted over layer selections ...
    lifted: int = 40  # ... at most this many of them (the smallest)
    selections: tuple[str, ...] = SELECTIONS  # layer selections the multi-layer programs use
    stats: EnumStats = field(default_factory=EnumStats)
    space: Space = DEFAULT

    def __post_init__(self) -> None:
        self.layer = self.resolver.default
        self.banks: dict[str, dict[int, list[_Entry]]] = {t: {} for t in (T, C, M, S)}
        self.seen_canon: set[str] = set()
        self.seen_values: set[bytes] = set()
        self.seen_maps: set[bytes] = set()

    def _bucket(self, typ: str) -> int:
        return self.map_bucket if self.map_bucket is not None and typ in (M, S) else self.bucket

    # -------------------------------------------------------------- evaluation on the probe
    def _eval(self, node: A.Expr, kids: list[Tensor]) -> Tensor:
        """A production's template on its children's probe values: the placeholders are the
        children, a terminal is the default layer's capture, and every operator is evaluated by
        the compiler's :func:`~sycam.compile.eval_op`, as in a compiled program."""
        if isinstance(node, A.Var):
            return kids[int(node.name[1:])]
        if isinstance(node, A.Terminal):
            if node.kind == "X":  # the image (mi's second argument in the search): one Map for every layer
                if self.probe.X is None:
                    raise SycamError("the enumerator's probe holds no image X (captures built without sycam.capture.capture)")
                return self.probe.X
            return getattr(self.probe, node.kind)[self.layer]
        return eval_op(node, lambda a: self._eval(a, kids), _constant)  # type: ignore[arg-type, return-value]

    # -------------------------------------------------------------- enumeration
    def _combos(self, prod: Production, size: int):
        """Children (entries) whose sizes add up with the production's own nodes to ``size``."""
        for gen in self._combo_groups(prod, size):
            yield from gen

    def _combo_groups(self, prod: Production, size: int):
        """:meth:`_combos` as one iterator per split of the size among the children."""
        rest = size - prod.own_size
        arity = len(prod.children)
        if arity == 0:
            if rest == 0:
                yield iter([()])
            return
        for sizes in _compositions(rest, arity):
            pools = [self.banks[t].get(s, []) for t, s in zip(prod.children, sizes)]
            if all(pools):
                yield itertools.product(*pools)

    def _candidates(self, typ: str, size: int):
        """(production, children) of type ``typ`` and size ``size``: production after production, or
        with the space's ``interleave`` one of each production and split of the size among its
        children in turn (so that a full bucket holds some of every production and split, not only
        of the first ones: ``mi(A, X) * A`` is a product's split 3 + 1, after 2 + 2)."""
        prods = self.space.by_type(typ)
        if not self.space.interleave:
            for prod in prods:
                for kids in self._combos(prod, size):
                    yield prod, kids
            return
        gens = [(prod, gen) for prod in prods for gen in self._combo_groups(prod, size)]
        while gens:
            alive = []
            for prod, gen in gens:
                kids = next(gen, None)
                if kids is not None:
                    alive.append((prod, gen))
                    yield prod, kids
            gens = alive

    def _add(self, typ: str, size: int, prod: Production, kids: tuple[_Entry, ...]) -> _Entry | None:
        self.stats.generated += 1
        expr = prod.build([k.expr for k in kids])
        key = canonical(expr)
        if key in self.seen_canon:
            self.stats.canonical_duplicates += 1
            return None
        self.seen_canon.add(key)
        value = self._eval(prod.template, [k.value for k in kids])
        vkey = value_key(value)
        if vkey is None:
            self.stats.invalid += 1
            return None
        vkey = typ.encode() + vkey
        if vkey in self.seen_values:
            self.stats.observational_duplicates += 1
            return None
        self.seen_values.add(vkey)
        entry = _Entry(Derivation(prod.name, tuple(k.deriv for k in kids)), expr, value, size)
        self.banks[typ].setdefault(size, []).append(entry)
        return entry

    def _program(self, deriv: Derivation, value: Tensor | None = None) -> bool:
        """Whole-program dedupe on the final (upsampled, normalised) probe maps. A single-layer
        program's final map is norm(resize(value)): no need to recompile it."""
        if value is not None:
            if not bool(torch.isfinite(value).all()):
                self.stats.invalid += 1
                return False
            maps = K.norm(K.resize(value.float(), self.probe.input_size))
        else:
            try:
                maps = CompiledProgram(deriv.program(), self.resolver)(self.probe)
            except ProgramRuntimeError:
                self.stats.invalid += 1
                return False
        key = map_key(maps)
        if key in self.seen_maps:
            self.stats.program_duplicates += 1
            return False
        self.seen_maps.add(key)
        self.stats.programs += 1
        return True

    def run(self, time_limit: float | None = None, limit: int | None = None) -> list[Derivation]:
        """Programs in order of size, deduplicated; stops at ``time_limit`` seconds or ``limit``
        programs."""
        start = time.perf_counter()
        out: list[Derivation] = []
        maps_for_layers: list[_Entry] = []
        importance = self._importance()
        with torch.no_grad():
            for size in range(1, max(self.max_size, self.map_max_size or 0) + 1):
                for typ in ((T, C, S, M) if size <= self.max_size else (S, M)):
                    for prod, kids in self._candidates(typ, size):
                        if len(self.banks[typ].get(size, [])) >= self._bucket(typ):
                            break
                        entry = self._add(typ, size, prod, kids)
                        if entry is None or typ != M:
                            continue
                        deriv = Derivation("single", (entry.deriv,))
                        if self._program(deriv, entry.value):
                            out.append(deriv)
                            self.stats.largest = size
                        if size <= self.multi_layer_from and len(maps_for_layers) < self.lifted:
                            maps_for_layers.append(entry)
                        if (limit and len(out) >= limit) or (time_limit and time.perf_counter() - start > time_limit):
                            return self._finish(out, maps_for_layers, importance, start)
        return self._finish(out, maps_for_layers, importance, start)

    def _importance(self) -> Derivation:
        # Winsor-CAM's layer importance: mean over channels of the Grad-CAM weights
        return Derivation("mean_c_S", (Derivation("mean_hw", (Derivation("G"),)),))

    def _finish(self, out: list[Derivation], maps: list[_Entry], importance: Derivation, start: float) -> list[Derivation]:
        """Lift the small Maps over layer selections (averaged, max, and Winsor-weighted)."""
        with torch.no_grad():
            for entry in maps:
                for sel in self.selections:
                    for name in [p.name for p in self.space.by_type(P) if p.needs_selection]:
                        kids = (entry.deriv, importance) if name == "layers_winsor" else (entry.deriv,)
                        deriv = Derivation(name, kids, sel)
                        self.stats.generated += 1
                        if self._program(deriv):
                            out.append(deriv)
        self.stats.seconds = time.perf_counter() - start
        return out


def _constant(node: A.Num | A.Param) -> float:
    if isinstance(node, A.Num):
        return node.value
    raise SycamError(f"the enumerator cannot evaluate ?{node.name}: its productions have no parameters")  # pragma: no cover


def _compositions(total: int, parts: int):
    """Ordered tuples of ``parts`` positive integers summing to ``total``."""
    if parts == 1:
        if total >= 1:
            yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in _compositions(total - first, parts - 1):
            yield (first,) + rest


__all__ = ["Enumerator", "EnumStats", "value_key", "map_key", "BY_NAME", "P"]
