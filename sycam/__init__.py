"""sycam — synthesize class-activation-map explainers.

A CAM method is a small typed program over activations ``A`` and gradients ``G``::

    import sycam
    explain = sycam.Explainer(model, "gradcam")          # or program text, or a .cam file
    maps = explain(images, targets)                       # (B, H, W) in [0, 1]
    program = sycam.parse("relu(sum_c(mean_hw(G) * A))")
"""
from __future__ import annotations

import os

# OpenMP threads that spin while waiting make torch 10-30x slower whenever the cores are shared
# (measured: 2.0 s vs 0.034 s to score one program on 256 images, on 2 loaded cores). Passive
# waiting costs little when the machine is idle. Must be set before torch loads; a user's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from sycam.errors import ProgramError, ProgramRuntimeError, ProgramSyntaxError, ProgramTypeError, SycamError
from sycam.lang import Program, check, parse, pretty

__version__ = "0.1.0"


def load(path_or_name):
    """A program from a reference name (``"winsorcam"``) or a ``.cam`` file."""
    from sycam.programs import load as _load

    return _load(path_or_name)


def list_programs() -> list[str]:
    """Names of the reference programs shipped with sycam."""
    from sycam.programs import list_programs as _list

    return _list()


def __getattr__(name: str):
    # torch-heavy pieces load on first use, so `sycam check` stays fast
    if name == "Explainer":
        from sycam.explainer import Explainer

        return Explainer
    if name == "compile_program":
        from sycam.compile import compile_program

        return compile_program
    raise AttributeError(f"module 'sycam' has no attribute {name!r}")


__all__ = ["Program", "Explainer", "parse", "pretty", "check", "load", "list_programs", "compile_program",
           "SycamError", "ProgramError", "ProgramSyntaxError", "ProgramTypeError", "ProgramRuntimeError", "__version__"]
