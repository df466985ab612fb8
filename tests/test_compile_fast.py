"""The compiler's shortcuts must not change values: the fused channel-weighted sum and the
sharing of equal sub-expressions."""
from __future__ import annotations

import torch

from sycam import kernels as K
from sycam.capture import Captures
from sycam.compile import CompiledProgram, LayerResolver
from tests.test_capture import Tiny, seeded


def test_weighted_sum_c_is_the_sum_of_products() -> None:
    torch.manual_seed(0)
    w, x = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, 4, 6, dtype=torch.float64)
    assert torch.allclose(K.weighted_sum_c(w, x), (w[:, :, None, None] * x).sum(1), atol=1e-12)
    assert torch.allclose(K.weighted_sum_c(w, x, mean=True), (w[:, :, None, None] * x).mean(1), atol=1e-12)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.allclose(K.weighted_sum_c(w, cl), (w[:, :, None, None] * x).sum(1), atol=1e-12)


def test_max_over_channels_by_halving_equals_amax() -> None:
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 1, 4, 4), (2, 5, 3, 3), (2, 1280, 7, 7), (2, 7), (2, 1), (3, 33, 2, 2)]:
        x = torch.randn(*shape, generator=g)
        assert torch.equal(K.max_dim1(x), x.amax(1)), shape
    x = torch.randn(2, 9, 3, 3, generator=g)
    x[0, 4, 1, 1], x[1, 8, 0, 0] = float("nan"), float("inf")  # NaN propagates, inf wins, as in amax
    assert torch.equal(K.max_dim1(x).isnan(), x.amax(1).isnan())
    assert torch.allclose(K.max_dim1(x), x.amax(1), equal_nan=True)


def _caps() -> tuple[Captures, LayerResolver]:
    torch.manual_seed(1)
    A = {"relu1": torch.randn(2, 5, 8, 8, dtype=torch.float64), "relu2": torch.randn(2, 4, 4, 4, dtype=torch.float64)}
    G = {k: torch.randn_like(v) for k, v in A.items()}
    caps = Captures(A=A, G=G, S={}, D={}, Y=torch.zeros(2, dtype=torch.float64), logits=torch.zeros(2, 6),
                    input_size=(8, 8))
    return caps, LayerResolver(seeded(Tiny), "relu2")


def test_fused_and_unfused_forms_agree_on_one_layer_and_across_layers() -> None:
    caps, res = _caps()
    pairs = [
        ("sum_c(mean_hw(G) * A)", "sum_c(A * mean_hw(G) + 0 * A)"),  # the second cannot take the shortcut
        ("mean_c(A * mean_hw(relu(G)))", "mean_c(A * mean_hw(relu(G)) + 0 * A)"),
        ("fuse(each([relu1, relu2], relu(sum_c(mean_hw(G) * A))), mean)",
         "fuse(each([relu1, relu2], relu(sum_c(mean_hw(G) * A + 0 * A))), mean)"),
    ]
    for fast, slow in pairs:
        a = CompiledProgram(fast, res).raw(caps)
        b = CompiledProgram(slow, res).raw(caps)
        assert torch.allclose(a, b, atol=1e-10), fast


def test_equal_sub_expressions_are_computed_once(monkeypatch) -> None:
    caps, res = _caps()
    calls: list[int] = []
    real = K.reduce_hw

    def counting(kind, x):
        calls.append(1)
        return real(kind, x)

    monkeypatch.setattr(K, "reduce_hw", counting)
    prog = CompiledProgram("let w = mean_hw(G); relu(sum_c(w * A)) * mean_c(w)", res)
    prog.raw(caps)
    assert len(calls) == 1


def test_float_noise_around_a_constant_normalises_to_a_constant_map() -> None:
    """A spatially constant map computed through a channel reduction comes out with a relative range
    of ~1e-6 (MobileNetV2's ``mean_c(G)``: up to 1.5e-6): that is noise, and min-max normalising it
    to [0, 1] would give a map that ranks at random and passes the sanity checks. It is constant."""
    g = torch.Generator().manual_seed(0)
    noisy = 0.02 * (1 + 5e-6 * torch.rand(3, 7, 7, generator=g))
    assert torch.equal(K.norm(noisy), torch.zeros_like(noisy))
    assert torch.equal(K.zscore(noisy), torch.zeros_like(noisy))
    signal = 0.02 * (1 + 1e-3 * torch.rand(3, 7, 7, generator=g))  # a weak but real contrast stays
    out = K.norm(signal)
    assert torch.allclose(out.flatten(1).amax(1), torch.ones(3)) and torch.allclose(out.flatten(1).amin(1), torch.zeros(3))


def test_maps_equal_on_their_own_grid_are_equal_at_the_input_size() -> None:
    """The race confirms twins on CompiledProgram.native (no upsampling): scale and offset vanish
    there as they do after upsampling, and a program that yields Inf is refused there too."""
    caps, res = _caps()
    a = CompiledProgram("relu(sum_c(mean_hw(G) * A))", res)
    b = CompiledProgram("3 * relu(sum_c(mean_hw(G) * A)) + 2", res)
    assert a.native(caps).shape == (2, 4, 4)
    assert torch.allclose(a.native(caps), b.native(caps), atol=1e-6)
    assert torch.allclose(a(caps), b(caps), atol=1e-6)
    import pytest

    from sycam.errors import ProgramRuntimeError

    with pytest.raises(ProgramRuntimeError, match="NaN or Inf"):
        CompiledProgram("sq(sq(sq(sq(sq(mean_c(A) * 100000000000000000000)))))", res).native(caps)
