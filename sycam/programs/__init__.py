"""The library of reference programs, shipped as ``.cam`` files beside this module, and the one
reader of programs given by name, path or text (:func:`resolve_program`)."""
from __future__ import annotations

import difflib
import re
from pathlib import Path

from sycam.errors import SycamError
from sycam.lang import ast as A
from sycam.lang.ops import TERMINALS
from sycam.lang.parse import parse

PROGRAM_DIR = Path(__file__).resolve().parent

# short aliases users type
ALIASES = {"grad-cam": "gradcam", "gradcam++": "gradcampp", "grad-cam++": "gradcampp", "xgrad-cam": "xgradcam",
           "layer-cam": "layercam", "score-cam": "scorecam", "ablation-cam": "ablationcam",
           "eigen-cam": "eigencam", "finer-cam": "finercam", "winsor-cam": "winsorcam",
           "recipro-cam": "reciprocam", "recipro_cam": "reciprocam", "union-cam": "unioncam"}


def list_programs() -> list[str]:
    """Names of the reference programs (file stems), sorted."""
    return sorted(p.stem for p in PROGRAM_DIR.glob("*.cam"))


def program_path(name: str) -> Path:
    """The ``.cam`` file of a reference program, by name or alias."""
    key = ALIASES.get(name.lower(), name.lower())
    path = PROGRAM_DIR / f"{key}.cam"
    if not path.is_file():
        raise SycamError(f"no reference program named '{name}'; available: {', '.join(list_programs())}")
    return path


def describe(name: str) -> str:
    """The header comment of a reference program (its formula and source paper)."""
    lines = program_path(name).read_text(encoding="utf-8").splitlines()
    return "\n".join(line[1:].strip() for line in lines if line.startswith("#"))


def locate(spec: str | Path) -> tuple[str, str | Path] | None:
    """Where a program spec points, without reading it.

    ``("reference", name)`` for a reference name or alias (any case, ``grad-cam++`` →
    ``gradcampp``); ``("file", path)`` for a :class:`~pathlib.Path`, a string ending in ``.cam``
    (found or not) or a one-line string naming an existing file; ``None`` for anything else
    (program text, or an unknown name). Reference names win over files of the same name.
    """
    if isinstance(spec, Path):
        return "file", spec.expanduser()
    key = spec.strip().lower()
    if key in ALIASES or key in list_programs():
        return "reference", ALIASES.get(key, key)
    if spec.endswith(".cam") or (len(spec) < 4096 and "\n" not in spec and Path(spec).expanduser().is_file()):
        return "file", Path(spec).expanduser()
    return None


def resolve_program(spec: A.Program | str | Path, text: bool = True) -> A.Program:
    """The one reader of programs: a Program as given, a reference name or alias (``gradcam``),
    a ``.cam`` file by path (see :func:`locate`), or, with ``text``, program text (parsed, never
    evaluated). A bare word that is no reference name is an unknown name (with close matches),
    not program text; missing or unreadable files raise :class:`SycamError` naming the path.
    """
    if isinstance(spec, A.Program):
        return spec
    where = locate(spec)
    if where is not None and where[0] == "reference":
        return parse(program_path(str(where[1])).read_text(encoding="utf-8"), name=str(where[1]))
    if where is not None:
        path = Path(where[1])
        if not path.exists():
            raise SycamError(f"program file not found: {path}")
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as err:
            raise SycamError(f"cannot read program file {path}: {err.strerror or err}") from None
        return parse(source)
    word = str(spec).strip()
    if not text or (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_+-]*", word) and word not in TERMINALS):
        close = difflib.get_close_matches(word.lower(), list_programs() + list(ALIASES), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise SycamError(f"unknown program '{word}'{hint} (reference programs: {', '.join(list_programs())}; "
                         + ("or give program text or a .cam file)" if text else "or give a .cam file)"))
    return parse(str(spec))


def load(path_or_name: str | Path) -> A.Program:
    """Parse a reference program by name (``gradcam``) or a ``.cam`` file by path (never text)."""
    return resolve_program(path_or_name, text=False)
