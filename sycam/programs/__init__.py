"""The library of reference programs, shipped as ``.cam`` files beside this module."""
from __future__ import annotations

from pathlib import Path

from sycam.errors import SycamError
from sycam.lang import ast as A
from sycam.lang.parse import parse

PROGRAM_DIR = Path(__file__).resolve().parent

# short aliases users type
ALIASES = {"grad-cam": "gradcam", "gradcam++": "gradcampp", "grad-cam++": "gradcampp", "xgrad-cam": "xgradcam",
           "layer-cam": "layercam", "score-cam": "scorecam", "ablation-cam": "ablationcam",
           "eigen-cam": "eigencam", "finer-cam": "finercam", "winsor-cam": "winsorcam"}


def list_programs() -> list[str]:
    """Names of the reference programs (file stems), sorted."""
    return sorted(p.stem for p in PROGRAM_DIR.glob("*.cam"))


def program_path(name: str) -> Path:
    key = ALIASES.get(name.lower(), name.lower())
    path = PROGRAM_DIR / f"{key}.cam"
    if not path.is_file():
        raise SycamError(f"no reference program named '{name}'; available: {', '.join(list_programs())}")
    return path


def describe(name: str) -> str:
    """The header comment of a reference program (its formula and source paper)."""
    lines = program_path(name).read_text(encoding="utf-8").splitlines()
    return "\n".join(line[1:].strip() for line in lines if line.startswith("#"))


def load(path_or_name: str | Path) -> A.Program:
    """Parse a reference program by name (``gradcam``) or a ``.cam`` file by path."""
    p = Path(path_or_name)
    if p.suffix == ".cam" or p.exists():
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as err:
            raise SycamError(f"cannot read program file {p}: {err.strerror or err}") from None
        return parse(text)
    return parse(program_path(str(path_or_name)).read_text(encoding="utf-8"))
