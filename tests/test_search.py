"""Search: the space, the enumerator's deduplication, and Optuna studies (tiny model, no training)."""
from __future__ import annotations

import torch
from torch import nn

from sycam.capture import CaptureRequest, capture
from sycam.compile import CompiledProgram, LayerResolver
from sycam.lang import ast as A
from sycam.lang import check, parse, pretty
from sycam.lang.canon import canonical
from sycam.programs import load
from sycam.search.enumerate import Enumerator, map_key, value_key
from sycam.search.space import Sampler, derive, to_params


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(12, 16, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ).eval()


def probe_captures(model: nn.Module, n: int = 6):
    resolver = LayerResolver(model)
    torch.manual_seed(1)
    x = torch.rand(n, 3, 32, 32)
    request = CaptureRequest(layers=tuple(resolver.convs), grad_layers=frozenset(resolver.convs))
    return capture(model, x, torch.arange(n) % 4, request), resolver


def test_reference_programs_in_the_space_replay_exactly():
    for name in ("gradcam", "hirescam", "layercam", "winsorcam"):
        expr = A.inline_lets(load(name))
        deriv = derive(expr)
        assert deriv is not None, name
        assert deriv.build() == expr
        # the Optuna parameters replay the same derivation
        params = to_params(deriv)
        replay = Sampler(lambda path, options: params[path]).sample()
        assert replay == deriv
    assert derive(A.inline_lets(load("scorecam"))) is None  # S is outside the default space


def test_sampled_programs_type_check_and_round_trip():
    import random

    rng = random.Random(0)
    for _ in range(200):
        deriv = Sampler(lambda path, options: rng.choice(list(options)), max_depth=5).sample()
        program = deriv.program()
        assert str(check(program).type) == "Map"
        assert parse(pretty(program)) == program
        assert derive(program.body) == deriv


def test_enumerator_dedupes_canonically_and_observationally():
    model = tiny_cnn()
    caps, resolver = probe_captures(model)
    enum = Enumerator(caps, resolver, max_size=5, lifted=5)
    programs = enum.run()
    stats = enum.stats
    assert stats.generated > stats.programs > 0
    assert stats.canonical_duplicates > 0 and stats.observational_duplicates > 0
    # no two surviving programs share a canonical form or normalised probe maps
    canon = [canonical(d.program()) for d in programs]
    assert len(set(canon)) == len(canon)
    maps = [map_key(CompiledProgram(d.program(), resolver)(caps)) for d in programs]
    assert len(set(maps)) == len(maps)
    # programs come smallest first (single-layer ones), then the lifted multi-layer ones
    singles = [A.size(d.build()) for d in programs if d.prod == "single"]
    assert singles == sorted(singles)
    assert any(d.prod == "layers_winsor" for d in programs)


def test_scaled_programs_are_observationally_equal():
    model = tiny_cnn()
    caps, resolver = probe_captures(model)
    a = CompiledProgram(parse("relu(sum_c(mean_hw(G) * A))"), resolver)(caps)
    b = CompiledProgram(parse("relu(sum_c(2 * mean_hw(G) * A))"), resolver)(caps)
    assert map_key(a) == map_key(b)
    c = CompiledProgram(parse("relu(sum_c(mean_hw(G) * relu(A)))"), resolver)(caps)  # A is post-conv, not post-ReLU
    assert map_key(a) != map_key(c)


def test_value_key_ignores_float_noise_but_not_differences():
    x = torch.randn(4, 5)
    assert value_key(x) == value_key(x * (1 + 1e-7))
    assert value_key(x) != value_key(x * 2)
    assert value_key(torch.tensor([float("nan")])) is None
    assert value_key(torch.tensor([1.0, float("inf")])) is None
    # one quantum (1e-5 of the largest magnitude) anywhere in a large value changes the key
    big = torch.randn(16, 64, 7, 7)
    keys = {value_key(big)}
    for i in (0, 1234, big.numel() - 1):
        moved = big.clone()
        moved.view(-1)[i] += 3e-5 * float(big.abs().max())
        keys.add(value_key(moved))
    assert len(keys) == 4
    assert value_key(big.clone()) == value_key(big)  # reproducible: fixed hash weights


def test_enumerated_values_match_the_compiler():
    # the enumerator evaluates sub-expressions on the probe (through compile.eval_op); they must agree
    # with the compiled program (which computes sum_c(w * T) as one matrix product)
    model = tiny_cnn()
    caps, resolver = probe_captures(model)
    enum = Enumerator(caps, resolver, max_size=6, lifted=0)
    enum.run()
    checked = 0
    for size, entries in enum.banks["M"].items():
        for entry in entries[:10]:
            raw = CompiledProgram(A.Program(entry.expr), resolver).raw(caps)
            torch.testing.assert_close(raw, entry.value)
            checked += 1
    assert checked > 10


def test_hall_of_fame_shows_the_simplified_form_only_where_it_is_shorter():
    from sycam.search.select import simplified_form as _simplified

    assert _simplified("sum_c(A + A)") == "sum_c(A)"
    assert _simplified("norm(2 * relu(sum_c(A)))") == "relu(sum_c(A))"
    assert _simplified("sq(sq(sum_c(sq(A))))") == "sum_c(sq(A))^4"  # sympy's form, in sycam's syntax
    assert _simplified("relu(sum_c(mean_hw(G) * A))") == ""  # only the operands' order would change
    assert _simplified("sum_c(mean_hw(G) / mean_hw(G) * A)") == "sum_c(sign(abs(mean_hw(G))) * A)"
    # multi-layer programs too, in sycam's own syntax
    assert _simplified("fuse(each(convs, norm(relu(sum_c(A)) + relu(sum_c(A)))), mean)") == \
        "fuse(each(convs, norm(relu(sum_c(A)))), mean)"
    assert _simplified("not a program (") == ""