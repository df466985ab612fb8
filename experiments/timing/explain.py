"""Sections 1 and 2: explain throughput against the peers and the floor; multi-layer Winsor-CAM
against pytorch-grad-cam with the same layers (passes, time, peak RSS)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import Tensor, nn

from experiments.timing.counting import count_passes
from experiments.timing.peers import agreement, as_maps, has_method, is_variant, make_runner
from experiments.timing.timing import interleaved, ratio, summarize

PEERS = ("pytorch-grad-cam", "torchcam", "captum")


def counted(model: nn.Module, name: str, run: Callable[[], Any], passes: dict[str, dict[str, int]]) -> Callable[[], Any]:
    """``run`` whose first call is counted with :func:`count_passes` into ``passes[name]`` (the
    hooks cost one Python call per forward, nothing next to a CNN forward; later calls run bare)."""

    def wrapped() -> Any:
        if name in passes:
            return run()
        with count_passes(model) as count:
            out = run()
        passes[name] = count.as_dict()
        return out

    return wrapped


def explain_throughput(
    model: nn.Module,
    layer: str,
    x: Tensor,
    targets: Tensor,
    methods: Sequence[str],
    rounds: int,
    peers: Sequence[str] = PEERS,
    floor: bool = True,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time every (implementation, method) on one model, layer and batch, interleaved.

    Returns ``times`` (``"method/impl"`` → summary; ``"floor"``), ``speedup`` (``method`` →
    ``impl`` → ``ratio(peer seconds, sycam seconds)``: > 1 means sycam is faster), ``overhead``
    (``method`` → ``ratio(sycam seconds, floor seconds)``), ``agreement`` (``"method/impl"`` →
    Pearson correlation of its maps with sycam's, from the first call) and ``passes``
    (``"method/impl"`` → :class:`PassCount` of its first call).
    """
    runners: dict[str, Callable[[], Any]] = {}
    if floor:
        runners["floor"] = make_runner("floor", model, "gradcam", layer, x, targets)
    for method in methods:
        for impl in ("sycam", *peers):
            if has_method(impl, method):
                runners[f"{method}/{impl}"] = make_runner(impl, model, method, layer, x, targets)
    firsts: dict[str, Tensor | None] = {}

    def keep(name: str, out: Any) -> None:
        firsts[name] = as_maps(out)

    passes: dict[str, dict[str, int]] = {}
    runners = {name: counted(model, name, run, passes) for name, run in runners.items()}
    times = interleaved(runners, rounds, x.device, warmup=warmup, on_first=keep, log=log)
    result: dict[str, Any] = {"times": {k: summarize(v) for k, v in times.items()}, "speedup": {}, "overhead": {},
                              "agreement": {}, "passes": passes}
    for method in methods:
        mine = times.get(f"{method}/sycam")
        if mine is None:
            continue
        if floor and method == "gradcam":
            result["overhead"][method] = ratio(mine, times["floor"])
        result["speedup"][method] = {impl: ratio(times[f"{method}/{impl}"], mine) for impl in peers
                                     if f"{method}/{impl}" in times}
        # a sycam variant (a suggested change) against the real peers
        for variant in [i for i in peers if is_variant(i) and f"{method}/{i}" in times]:
            result.setdefault("variant_speedup", {})[f"{method}/{variant}"] = {
                impl: ratio(times[f"{method}/{impl}"], times[f"{method}/{variant}"]) for impl in peers
                if not is_variant(impl) and f"{method}/{impl}" in times}
        ref = firsts.get(f"{method}/sycam")
        for impl in peers:
            other = firsts.get(f"{method}/{impl}")
            if ref is not None and other is not None:
                result["agreement"][f"{method}/{impl}"] = round(agreement(ref, other), 4)
    return result


def multilayer(
    model: nn.Module,
    layers: list[str],
    x: Tensor,
    targets: Tensor,
    rounds: int,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Winsor-CAM (sycam, every conv layer) vs pytorch-grad-cam's GradCAM given the same layers,
    and the floor (one forward + one ``autograd.grad`` w.r.t. all those layers' outputs).

    Returns ``times``, ``speedup`` (pgc / sycam), ``overhead`` (sycam / floor) and ``passes``.
    """
    runners = {
        "winsorcam/sycam": make_runner("sycam", model, "winsorcam", None, x, targets),
        "gradcam/pytorch-grad-cam": make_runner("pytorch-grad-cam", model, "gradcam", layers, x, targets),
        "floor": make_runner("floor", model, "gradcam", layers, x, targets),
    }
    passes: dict[str, dict[str, int]] = {}
    runners = {name: counted(model, name, run, passes) for name, run in runners.items()}
    times = interleaved(runners, rounds, x.device, warmup=warmup, log=log)
    return {
        "layers": len(layers),
        "times": {k: summarize(v) for k, v in times.items()},
        "speedup": {"pytorch-grad-cam": ratio(times["gradcam/pytorch-grad-cam"], times["winsorcam/sycam"])},
        "overhead": ratio(times["winsorcam/sycam"], times["floor"]),
        "passes": passes,
    }


def sycam_layers(model: nn.Module, program: str = "winsorcam") -> list[str]:
    """The layers a sycam program captures on ``model`` (from its compiled capture request)."""
    from sycam import Explainer

    return list(Explainer(model, program).request.layers)
