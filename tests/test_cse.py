"""Common sub-expressions across a batch of programs (sycam.cse): computed once, each program's
maps bit for bit what it computes alone, freed after their last user, within the byte budget."""
from __future__ import annotations

import pytest
import torch

from sycam import kernels as K
from sycam.compile import CompiledProgram, LayerResolver
from sycam.cse import SharedValues
from sycam.errors import ProgramRuntimeError
from tests.test_capture import Tiny, seeded
from tests.test_compile_fast import _caps

BATCH = [
    "relu(sum_c(mean_hw(G) * A))",
    "relu(sum_c(mean_hw(G) * A)) + sq(mean_c(A))",
    "fuse(each([relu1, relu2], relu(sum_c(mean_hw(G) * A))), max)",
    "fuse(each([relu1, relu2], norm(relu(sum_c(mean_hw(G) * A)))), mean)",
    "winsorize(relu(sum_c(mean_hw(G) * A)), ?p:[0,100]=50)",
    "winsorize(relu(sum_c(mean_hw(G) * A)), ?p:[0,100]=50) + sq(mean_c(A))",
    "sq(sq(sq(sq(sq(mean_c(A) * 100000000000000000000)))))",  # -> Inf: fails inside the batch, the others go on
]


def _counting(monkeypatch, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(K, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(K, name, counted)
    return calls


def _run(programs, caps, params=None, shared=True):
    items = [(p, params) for p in programs]
    store = SharedValues(items) if shared else None
    out = []
    for j, (p, pa) in enumerate(items):
        try:
            out.append(p(caps, pa, shared=store.user(j) if store is not None else None))
        except ProgramRuntimeError:
            out.append(None)
        finally:
            if store is not None:
                store.done(j)
    return out, store


def test_a_batch_gives_each_program_exactly_its_own_maps_and_computes_shared_parts_once(monkeypatch) -> None:
    caps, res = _caps()
    programs = [CompiledProgram(t, res) for t in BATCH]
    alone, _ = _run(programs, caps, shared=False)
    assert alone[-1] is None and all(m is not None for m in alone[:-1])
    calls = _counting(monkeypatch, "reduce_hw")  # mean_hw(G): once per layer for the whole batch
    together, store = _run(programs, caps)
    for a, b, text in zip(alone, together, BATCH):
        assert (a is None and b is None) or torch.equal(a, b), text
    # mean_hw(G) at relu2 (default layer) and at relu1 (inside each): two computations in all
    assert len(calls) == 2
    assert store.hits > 0
    assert store._values == {} and store._bytes == 0  # everything freed after its last user


def test_params_are_part_of_the_key() -> None:
    caps, res = _caps()
    p = CompiledProgram("winsorize(relu(sum_c(mean_hw(G) * A)), ?p:[0,100]=50)", res)
    alone = [p(caps, {"p": 10.0}), p(caps, {"p": 90.0})]
    store = SharedValues([(p, {"p": 10.0}), (p, {"p": 90.0})])
    together = []
    for j, params in enumerate(({"p": 10.0}, {"p": 90.0})):
        together.append(p(caps, params, shared=store.user(j)))
        store.done(j)
    assert not torch.equal(alone[0], alone[1])
    assert torch.equal(alone[0], together[0]) and torch.equal(alone[1], together[1])


def test_the_byte_budget_bounds_what_is_kept() -> None:
    caps, res = _caps()
    programs = [CompiledProgram(t, res) for t in BATCH[:2]]
    store = SharedValues([(p, None) for p in programs], max_bytes=0)
    maps = programs[0](caps, shared=store.user(0))
    assert store._values == {} and store.hits == 0  # nothing fits: each program computes its own
    assert torch.equal(maps, programs[0](caps))


def test_programs_bound_to_other_layers_share_nothing() -> None:
    caps, res = _caps()
    other = LayerResolver(seeded(Tiny), "relu1")  # the same text reads another default layer
    a, b = CompiledProgram("relu(mean_c(A))", res), CompiledProgram("relu(mean_c(A))", other)
    store = SharedValues([(a, None), (b, None)])
    out = []
    for j, p in enumerate((a, b)):
        out.append(p(caps, shared=store.user(j)))
        store.done(j)
    assert store.hits == 0
    assert torch.equal(out[0], a(caps)) and torch.equal(out[1], b(caps))
    same = CompiledProgram("relu(mean_c(A))", LayerResolver(res.module, "relu2"))  # another resolver, same layers
    store = SharedValues([(a, None), (same, None)])
    a(caps, shared=store.user(0))
    store.done(0)
    assert torch.equal(same(caps, shared=store.user(1)), a(caps)) and store.hits == 1


def test_the_allocator_is_tuned_once_where_the_c_library_is_glibc() -> None:
    import platform

    from sycam._malloc import tune_allocator

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip(f"mallopt is glibc's: this is {platform.system()} {platform.libc_ver()}")
    assert tune_allocator() is True
    assert tune_allocator() is True  # once per process, the same answer
