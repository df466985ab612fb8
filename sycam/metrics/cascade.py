"""Cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
NeurIPS; Quantus' Model Parameter Randomisation Test, Hedström et al. 2023, JMLR).

The cascade re-initialises a trained network top-down, from the logits towards the input: step 1
re-initialises the top, step k re-initialises steps 1..k (cumulative). An explanation that still
looks the same after the weights it claims to explain are gone explains nothing about them.

:func:`randomisation_steps` lists the steps (which modules each re-initialises);
:func:`cascading_randomisation` yields the randomised copies. The user's model, its RNG and the
global RNG are never touched: every step works on one deep copy, under a forked RNG seeded from
``(seed, step index)``.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from sycam.errors import SycamError

__all__ = ["GRANULARITIES", "RandomisationStep", "cascading_randomisation", "randomisation_steps", "resettable"]

#: the two cascades: stage blocks (Adebayo et al.'s "blocks") or single layers (Quantus' order)
GRANULARITIES = ("blocks", "layers")


@dataclass(frozen=True)
class RandomisationStep:
    """One step of the cascade: ``name`` and the module names it re-initialises, top-down."""

    name: str
    modules: tuple[str, ...]


def resettable(model: nn.Module) -> list[str]:
    """Names of the submodules that have ``reset_parameters`` (root excluded), in ``named_modules()``
    order: what the cascade can re-initialise (Conv, BatchNorm, Linear, LayerNorm, ...)."""
    return [n for n, m in model.named_modules() if n and callable(getattr(m, "reset_parameters", None))]


def _unresettable_params(model: nn.Module) -> list[str]:
    """Parameters owned directly by a module without ``reset_parameters`` (never randomised)."""
    out = []
    for n, m in model.named_modules():
        if not callable(getattr(m, "reset_parameters", None)) or not n:
            out += [f"{n}.{p}" if n else p for p, _ in m.named_parameters(recurse=False)]
    return out


def randomisation_steps(
    model: nn.Module,
    granularity: str = "blocks",
    stages: Sequence[str] | None = None,
    input_size: tuple[int, int] = (224, 224),
) -> list[RandomisationStep]:
    """The cascade's steps, top-down from the logits.

    Let ``R`` be the modules with ``reset_parameters`` (:func:`resettable`) in ``named_modules()``
    order and ``pos(s)`` the position of stage layer ``s``'s last submodule in that order.

    - ``"layers"``: one step per module of ``R``, in reverse order (Quantus' ``top_down`` order);
      the step is named by the module.
    - ``"blocks"``: with the stage layers ``s_1 < … < s_n`` (the last layer of each resolution stage,
      :attr:`ModelBundle.stage_layers`; by default found by :func:`sycam.models.stage_layers` at
      ``input_size``), step ``head`` holds the modules after ``s_n`` (MobileNetV2: ``features.18.1``
      and ``classifier.1``), then step ``s_k`` (k = n … 1) holds those after ``s_{k-1}`` up to and
      including ``s_k`` (step ``s_1`` reaches down to the input). Adebayo et al. randomise Inception
      v3 by such blocks ("up to that block inclusive"). Blocks without a resettable module are left
      out (they would randomise nothing and report a spurious similarity of 1).

    Within a step modules are listed top-down (reverse ``named_modules()`` order), which is the order
    :func:`cascading_randomisation` re-initialises them in. Parameters held directly by a module
    without ``reset_parameters`` (e.g. ConvNeXt's ``layer_scale``) are never randomised; a warning
    names them. Unknown stage names, an unknown granularity, or a model without resettable modules
    or stages raise :class:`SycamError`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"randomisation_steps: model must be an nn.Module, got {type(model).__name__}")
    if granularity not in GRANULARITIES:
        raise SycamError(f"randomisation_steps: unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}")
    names = resettable(model)
    if not names:
        raise SycamError(f"randomisation_steps: {type(model).__name__} has no module with reset_parameters to randomise")
    missed = _unresettable_params(model)
    if missed:
        warnings.warn(f"model randomisation: {len(missed)} parameter(s) belong to modules without reset_parameters "
                      f"and keep their trained values: {', '.join(missed[:5])}{' ...' if len(missed) > 5 else ''}",
                      stacklevel=2)
    if granularity == "layers":
        return [RandomisationStep(n, (n,)) for n in reversed(names)]

    if stages is None:
        from sycam.models._layers import stage_layers  # lazy: metrics do not depend on models at import

        stages = stage_layers(model, input_size)
    stages = list(stages)
    if not stages:
        raise SycamError("randomisation_steps: the model has no stage layers; pass stages=... or use granularity='layers'")
    all_names = [n for n, _ in model.named_modules()]
    index = {n: i for i, n in enumerate(all_names)}
    unknown = [s for s in stages if s not in index or not s]
    if unknown:
        raise SycamError(f"randomisation_steps: stage layer(s) {unknown} are not modules of {type(model).__name__}")

    def last_pos(stage: str) -> int:
        # the stage's last submodule in named_modules() order (a container ends after its children)
        prefix = stage + "."
        return max(i for i, n in enumerate(all_names) if n == stage or n.startswith(prefix))

    ends = sorted(set((last_pos(s), s) for s in stages))
    bounds = [(-1, "")] + ends
    pos = {n: index[n] for n in names}
    steps = [RandomisationStep("head", tuple(n for n in reversed(names) if pos[n] > ends[-1][0]))]
    for (lo, _), (hi, stage) in reversed(list(zip(bounds[:-1], bounds[1:]))):
        steps.append(RandomisationStep(stage, tuple(n for n in reversed(names) if lo < pos[n] <= hi)))
    return [s for s in steps if s.modules]


def _step_seed(seed: int, k: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * (k + 1)) % (2**63)


def cascading_randomisation(
    model: nn.Module, steps: Sequence[RandomisationStep] | None = None, seed: int = 0
) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(step name, randomised copy)`` for each step of the cascade, cumulatively.

    One deep copy of ``model`` is made; at step k the modules of step k are re-initialised with
    their own ``reset_parameters()`` (PyTorch's default initialisation: Kaiming-uniform weights for
    Conv/Linear; weight 1, bias 0, running mean 0 and variance 1 for BatchNorm), on top of steps
    1..k−1, under ``torch.random.fork_rng`` seeded with a function of ``(seed, k)``. So the copy at
    step k has steps 1..k randomised, the same for a given seed whatever is done between steps, and
    neither the user's model nor the global (CPU and CUDA) RNG state changes.

    The SAME copy object is yielded at every step and mutated by the next one (a copy per step
    would cost the model's size times the number of steps: ~105 for MobileNetV2 by layers); deep
    copy it to keep a step. ``steps`` defaults to ``randomisation_steps(model, "blocks")``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"cascading_randomisation: model must be an nn.Module, got {type(model).__name__}")
    steps = list(randomisation_steps(model) if steps is None else steps)
    try:
        work = copy.deepcopy(model)
    except Exception as err:  # noqa: BLE001 - any failure to copy is the model's, say so
        raise SycamError(f"model randomisation needs a deep copy of the model, and copy.deepcopy failed: {err}") from err
    modules = dict(work.named_modules())
    for s in steps:
        missing = [n for n in s.modules if n not in modules]
        if missing:
            raise SycamError(f"randomisation step {s.name!r} names modules the model lacks: {missing[:5]}")
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    for k, s in enumerate(steps):
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            # seed the generators directly: torch.manual_seed would also queue a seed for CUDA
            # devices not initialised yet, which would change their RNG state later
            torch.random.default_generator.manual_seed(_step_seed(seed, k))
            for i in cuda:
                torch.cuda.default_generators[i].manual_seed(_step_seed(seed, k))
            for n in s.modules:
                modules[n].reset_parameters()  # type: ignore[operator]
        yield s.name, work
