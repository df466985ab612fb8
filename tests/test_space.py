"""Search spaces (``--space``): the full space reaches every searchable operator and terminal, the
presets nest, the default is today's, space files are checked, and the size limit's rule."""
from __future__ import annotations

import random

import pytest
import torch

from sycam.capture import CaptureRequest, capture
from sycam.compile import LayerResolver
from sycam.errors import SycamError
from sycam.lang import ast as A
from sycam.lang.ops import TABLE, operator_of
from sycam.lang.pretty import pretty
from sycam.lang.parse import parse
from sycam.lang.types import check
from sycam.search.enumerate import Enumerator
from sycam.search.presets import FULL, PRESETS, SMALL, load_space, max_size_for, with_expensive
from sycam.search.space import DEFAULT, PRODUCTIONS, REQUIRED, Sampler, Space, derive, to_params
from tests.test_search import tiny_cnn


def _probe(n: int = 6, expensive: bool = False):
    model = tiny_cnn()
    resolver = LayerResolver(model)
    torch.manual_seed(1)
    x = torch.rand(n, 3, 32, 32)
    last = frozenset([resolver.default]) if expensive else frozenset()
    request = CaptureRequest(layers=tuple(resolver.convs), grad_layers=frozenset(resolver.convs),
                             score_cam_layers=last, ablation_layers=last, reciprocal_layers=last,
                             reciprocal_onehot_layers=last)
    return capture(model, x, torch.arange(n) % 4, request), resolver


def _used(expr: A.Expr) -> set[str]:
    """Operator and terminal names, and selection kinds, in an expression."""
    out: set[str] = set()
    for node in A.walk(expr):
        if isinstance(node, (A.BinOp, A.Pow, A.Call)):
            out.add(operator_of(node)[0].name)
        elif isinstance(node, A.Terminal):
            out.add(node.kind)
        elif isinstance(node, A.Each):
            out.add(type(node.selection).__name__)
    return out


SEARCHABLE = {name for name, spec in TABLE.items() if spec.search}


def test_the_full_space_searches_every_operator_and_terminal() -> None:
    """Sampled programs of ``full --expensive`` use every operator with a search form, every terminal
    (A, G, S, D, R, R1, and X as mi's second argument) and layer slices and lists; each type checks, prints and parses back, and derives
    back to itself in the full space (so Optuna can replay it)."""
    space = with_expensive(FULL)
    rng = random.Random(0)
    seen: set[str] = set()
    for _ in range(3000):
        deriv = Sampler(lambda path, options: rng.choice(list(options)), max_depth=4,
                        selections=space.selections, space=space).sample()
        program = deriv.program()
        seen |= _used(program.body)
        if _ < 300:
            assert str(check(program).type) == "Map"
            assert parse(pretty(program)) == program
            assert derive(program.body, space=space) == deriv
    wanted = SEARCHABLE | {"A", "G", "S", "D", "R", "R1", "X", "SelSlice", "SelList", "SelNamed"}
    assert wanted <= seen, sorted(wanted - seen)
    # today's space reaches none of the new operators, and no S or D
    for _ in range(500):
        deriv = Sampler(lambda path, options: rng.choice(list(options)), max_depth=4).sample()
        assert not _used(deriv.program().body) & {"exp", "log", "sqrt", "sigmoid", "threshold", "pc1", "mi", "S", "D", "R",
                                                  "R1", "X", "SelSlice"}


def test_the_enumerator_of_the_full_space_builds_every_operator_and_terminal() -> None:
    caps, resolver = _probe(expensive=True)
    space = with_expensive(FULL)
    enum = Enumerator(caps, resolver, max_size=4, bucket=100_000, lifted=0, space=space)
    enum.run()
    # rescale(M, 0.1, 1) has 5 nodes at least, select_max(S, M, S, M) 11: spaces of each and the
    # required productions, to those sizes (keys mean_c(mean_hw(G)) and sum_hw(sum_c(G)) cross where
    # the gradient's mean changes sign, so some selections are new values)
    few = Space("few", REQUIRED + ("rescale_M_0.1_1",))
    more = Enumerator(caps, resolver, max_size=5, bucket=100_000, lifted=0, space=few)
    more.run()
    select = Enumerator(caps, resolver, max_size=11, bucket=100_000, lifted=0,
                        space=Space("select", REQUIRED + ("sum_hw_M", "select_max_SMSM")))
    select.run()
    assert select.banks["M"][11]
    built = set()
    for bank in list(enum.banks.values()) + list(more.banks.values()) + list(select.banks.values()):
        for entries in bank.values():
            for e in entries:
                built |= _used(e.expr)
    wanted = SEARCHABLE | {"A", "G", "S", "D", "R", "R1", "X"}
    assert wanted <= built, sorted(wanted - built)
    # the default space enumerates exactly today's list: its productions are a subset of the full one
    default = Enumerator(caps, resolver, max_size=4, lifted=0).run()
    assert all(derive(d.program().body, space=FULL) is not None for d in default)


def test_the_full_space_produces_mi_cam() -> None:
    """MI-CAM (micam.cam: ``sum_c(mi(A, X) * A)``) lies in the full space, not in the default one: the
    sampler replays it from its Optuna parameters, and the enumerator builds it (the full space
    takes a type's productions in turns, so ``mi(A, X) * A`` gets into the full bucket of products
    of size 5), with the values of the compiled reference program."""
    from sycam.compile import CompiledProgram
    from sycam.programs import load

    micam = load("micam")
    deriv = derive(micam.body, space=FULL)
    assert deriv is not None and derive(micam.body, space=DEFAULT) is None
    params = to_params(deriv)
    replay = Sampler(lambda path, options: params[path] if params[path] in options else pytest.fail(path),
                     space=FULL, selections=FULL.selections).sample()
    assert replay == deriv and replay.program() == micam
    caps, resolver = _probe()
    enum = Enumerator(caps, resolver, max_size=6, lifted=0, space=FULL)
    found = [d for d in enum.run() if d == deriv]
    assert found, "the full space's enumerator did not build sum_c(mi(A, X) * A)"
    entry = next(e for e in enum.banks["M"][6] if e.expr == micam.body)
    compiled = CompiledProgram(micam, resolver).raw(caps)  # sum_c(w * A) as a matrix product: float rounding apart
    assert torch.allclose(entry.value, compiled, rtol=1e-5, atol=1e-6 * float(compiled.abs().max()))
    # in production order (interleave off) the products' bucket fills before mi(A, X) * A
    plain = Space("plain", FULL.productions, FULL.selections)
    assert deriv not in Enumerator(caps, resolver, max_size=6, lifted=0, space=plain).run()


def test_presets_nest_and_the_default_is_todays_space() -> None:
    assert set(SMALL.productions) < set(DEFAULT.productions) < set(FULL.productions)
    assert set(SMALL.selections) <= set(DEFAULT.selections) <= set(FULL.selections)
    assert {"S", "D", "R", "R1"} & set(FULL.productions) == set()  # only behind --expensive
    assert FULL.interleave and not DEFAULT.interleave and not SMALL.interleave
    assert set(with_expensive(FULL).productions) == {p.name for p in PRODUCTIONS}
    assert load_space("default") is DEFAULT and load_space("small") is SMALL
    assert load_space("default", expensive=True).expensive == ("S", "D", "R", "R1")
    # a sampled program of the small space lies in the default space, with the same Optuna parameters
    rng = random.Random(1)
    for _ in range(200):
        deriv = Sampler(lambda path, options: rng.choice(list(options)), max_depth=5, selections=SMALL.selections,
                        space=SMALL).sample()
        again = derive(deriv.program().body, space=DEFAULT)
        assert again == deriv and to_params(again) == to_params(deriv)


def test_the_size_limit_grows_with_the_budget_only() -> None:
    assert [max_size_for(DEFAULT, b, None) for b in (15, 90, 300, 599, 600, 1199, 1200, 2400, 10**6)] == \
        [8, 8, 8, 8, 9, 9, 10, 11, 12]
    assert max_size_for(DEFAULT, 5000, candidates=300) == 8  # --candidates: no clock, reproducible
    assert max_size_for(DEFAULT, 5000, None, given=5) == 5  # --max-size wins
    assert max_size_for(SMALL, 5000, None) == 6  # small does not grow


def test_space_files(tmp_path) -> None:
    toml = tmp_path / "mine.toml"
    toml.write_text('base = "small"\noperators = ["relu", "sum_c", "mean_hw", "mean_c", "threshold", "*"]\n'
                    'selections = ["stages", "-2:"]\nmax_size = 5\n')
    space = load_space(str(toml))
    assert space.name == "mine" and space.max_size == 5 and space.selections == ("stages", "-2:")
    assert {"threshold_M_50", "threshold_M_80", "mul_TT", "relu_T"} <= set(space.productions)
    assert "add_MM" not in space.productions  # the operators replace the base's
    js = tmp_path / "other.json"
    js.write_text('{"base": "full", "remove": ["pc1"], "terminals": ["A", "G", "S"]}')
    space = load_space(str(js))
    assert "pc1" not in space.productions and "S" in space.productions and "D" not in space.productions
    assert space.interleave  # full's, inherited
    toml.write_text('base = "full"\nterminals = ["A", "G", "R1"]\ninterleave = false\n')
    space = load_space(str(toml))
    assert space.expensive == ("R1",) and not space.interleave and "mi_TX" in space.productions


@pytest.mark.parametrize("text, message", [
    ('base = "small"\nopertors = ["relu"]\n', "line 2: opertors: unknown key"),
    ('base = "small"\n\noperators = ["relu", "frobnicate"]\n', "line 3: operators: unknown 'frobnicate'"),
    ('selections = ["stages", "1:2:3:4"]\n', "line 1: selections: '1:2:3:4' is not a layer selection"),
    ('terminals = ["A"]\n', "line 1: terminals: every space needs G"),
    ('max_size = 0\n', "line 1: max_size: expected a positive integer"),
    ('base = "full"\ninterleave = 1\n', "line 2: interleave: expected true or false"),
    ('base = "huge"\n', "line 1: base: 'huge' is not a preset"),
    ('operators = [\n', "not valid TOML"),
    ('base = "default"\nscores = ["logit", "probb"]\n', "line 2: scores: 'probb' is not a score"),
    ('scores = ["logit", "finer(0, 0.6)"]\n', "line 1: scores: 'finer(0, 0.6)' is not a score"),
    ('scores = ["prob"]\n', 'line 1: scores: must include "logit"'),
    ('scores = "prob"\n', "line 1: scores: expected a non-empty list of score directives"),
    ('scores = []\n', "line 1: scores: expected a non-empty list"),
])
def test_bad_space_files_say_where(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SycamError) as err:
        load_space(str(path))
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_bad_space_names_say_what_is_expected(tmp_path) -> None:
    with pytest.raises(SycamError, match="small, default, full"):
        load_space("ful")
    with pytest.raises(SycamError, match="cannot read the space file"):
        load_space(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"base": "small",\n "operators": [relu]}')
    with pytest.raises(SycamError, match=r"bad.json line 2: not valid JSON"):
        load_space(str(bad))


def test_multi_layer_memory_rule_keeps_mobilenet_off_every_conv() -> None:
    """A model with more than MAX_CONVS_FOR_ALL conv layers searches no selection that caches all of
    them (the full space's slices and lists stay: they are a few layers)."""
    from torch import nn

    from sycam.search.synthesize import MAX_CONVS_FOR_ALL, _search_request, search_selections

    deep = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1) for i in range(MAX_CONVS_FOR_ALL + 6)])
    resolver = LayerResolver(deep)
    assert search_selections(resolver) == ("stages",)
    full = search_selections(resolver, FULL)
    assert "convs" not in full and {"-2:", "-3:", "-4:", "[-1, -3]"} <= set(full)
    request = _search_request(resolver, A.ScoreSpec(), full)
    assert len(request.layers) <= 4 + len(resolver.stages) + 1 < len(resolver.convs)
    small = LayerResolver(tiny_cnn())
    assert search_selections(small) == ("convs", "stages")


def test_presets_are_listed() -> None:
    assert list(PRESETS) == ["small", "default", "full"]


def test_the_cli_refuses_a_bad_space_before_any_work(tmp_path, capsys) -> None:
    from sycam.cli import main

    out = tmp_path / "out"
    assert main(["synthesize", "--metric", "iou", "--space", "ful", "--out", str(out)]) == 2
    assert "--space 'ful': expected one of the presets small, default, full" in capsys.readouterr().err
    bad = tmp_path / "s.toml"
    bad.write_text("max_size = -1\n")
    assert main(["synthesize", "--metric", "iou", "--space", str(bad), "--out", str(out)]) == 2
    assert f"{bad} line 1: max_size: expected a positive integer" in capsys.readouterr().err
    assert not out.exists()  # refused before the model, the data or the output folder


def test_a_search_with_the_expensive_recipro_terminals_and_mi(tmp_path, monkeypatch) -> None:
    """A synthesis over a space with ``R``, ``R1`` (behind --expensive) and MI-CAM's weights: their
    capture cost is measured, the train captures (and the enumerator's probe) hold them, and
    programs that read them are scored with the values their compiled programs give."""
    import json
    from pathlib import Path

    from sycam.compile import CompiledProgram
    from sycam.search.synthesize import SynthConfig, Synthesis
    from sycam.workbench import mean_score

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    space = with_expensive(Space("rx", REQUIRED + ("mi_TX", "mul_CT", "relu_M")))
    assert space.expensive == ("S", "D", "R", "R1")
    cfg = SynthConfig(metrics=["iou"], model="tiny_models:bundle", candidates=200, out=str(tmp_path / "run"),
                      train_limit=16, val_limit=16, test_limit=16, batch_size=16, max_size=6,
                      references=("gradcam",), progress=False, sanity="off", space=space, racing=False)
    synthesis = Synthesis(cfg)
    result = synthesis.run()
    costs = result["stats"]["expensive_seconds_per_image"]
    assert set(costs) == {"S", "D", "R", "R1"} and all(v >= 0 for v in costs.values())
    rows = [json.loads(line) for line in (tmp_path / "run" / "enumerated.jsonl").read_text().splitlines()]
    scored = {row["program"]: row["values"][0] for row in rows if row["rung"] == "exact"}
    for text in ("R", "R1", "sum_c(mi(A, X) * A)"):
        assert text in scored, (text, sorted(scored))
        compiled = CompiledProgram(parse(text), LayerResolver(synthesis.bundle.module, synthesis.bundle.default_layer,
                                                               synthesis.bundle.stage_layers))
        train = synthesis.bench("train", compiled.request)
        assert scored[text] == pytest.approx(mean_score(train.score(compiled, synthesis.metrics)["iou"]), abs=1e-6), text


def test_the_map_bucket_grows_with_the_budget_only() -> None:
    from sycam.search.presets import PRESETS, map_bucket_for

    default = PRESETS["default"]
    assert map_bucket_for(default, 90, None) is None  # the default 90 s run: unchanged
    assert map_bucket_for(default, 300, None) == 1500
    assert map_bucket_for(default, 600, None) == 3000 == map_bucket_for(default, 3600, None)
    assert map_bucket_for(default, 600, 100) is None  # --candidates: reproducible, no clock
    assert map_bucket_for(PRESETS["small"], 600, None) is None  # a space that does not grow


def test_value_keys_of_large_values_hash_a_seeded_sample_of_positions() -> None:
    import torch

    from sycam.search.enumerate import FINGERPRINT_POSITIONS, value_key

    g = torch.Generator().manual_seed(0)
    v = torch.rand(4, 64, 32, 32, generator=g)  # 262,144 entries: sampled
    assert v.numel() > FINGERPRINT_POSITIONS
    assert value_key(v) == value_key(v.clone()) and value_key(v) != value_key(v * 1.01)
    w = v.clone()
    w.view(-1)[torch.randperm(v.numel(), generator=g)[: v.numel() // 4]] += 0.5  # a quarter of the entries change
    assert value_key(w) != value_key(v)
    small = torch.rand(3, 5, 7, generator=g)  # hashed everywhere: one entry changed changes the key
    other = small.clone()
    other[1, 2, 3] += 0.1
    assert value_key(small) != value_key(other)
    assert value_key(torch.full((2, 3), float("nan"))) is None


def test_maps_beyond_the_size_limit_are_enumerated_from_the_banks_below() -> None:
    """With ``map_max_size`` the enumerator goes on past ``max_size`` with Maps and Scalars only:
    every program up to the limit is still there, the larger ones are Maps whose Tensor parts are
    no larger than the limit."""
    from sycam.lang import ast as A
    from sycam.search.enumerate import Enumerator
    from sycam.search.space import T

    probe, resolver = _probe()
    plain = Enumerator(probe, resolver, max_size=4)
    small = {d.program().body for d in plain.run()}
    grown = Enumerator(probe, resolver, max_size=4, map_bucket=600, map_max_size=6)
    programs = grown.run()
    sizes = [A.size(d.program().body) for d in programs if d.prod == "single"]
    assert max(sizes) > 4 and grown.stats.largest > 4 and plain.stats.largest <= 4
    assert not grown.banks[T].get(5) and not grown.banks[T].get(6)  # no Tensor beyond the limit
    bodies = {d.program().body for d in programs}
    assert len(small & bodies) >= 0.9 * len(small) and len(programs) > len(small)
