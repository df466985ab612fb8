"""The output folder of ``sycam evaluate``: where it is, whose it is, and resuming from it.

Per-image values go to ``OUT/partial/`` after every batch (one ``.npz`` per batch, written
atomically, tagged with a fingerprint of the configuration), so an interrupted run resumes where
it stopped and loses at most the batch in flight. ``OUT/config.json`` holds the fingerprint: a
folder holding results of another configuration is refused, never mixed in.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sycam.errors import SycamError
from sycam.evaluation.methods import Method
from sycam.files import atomic_write, check_writable
from sycam.lang.pretty import pretty
from sycam.metrics import Metric

__all__ = ["OUTPUTS", "default_out_dir", "fingerprint_key", "load_partials", "make_fingerprint", "prepare_out",
           "save_partial"]

PARTIAL = "partial"
CONFIG = "config.json"
#: every file the job writes in OUT (``--fresh`` removes these and nothing else)
OUTPUTS = ("results.csv", "results.json", "results.md", "per_image.csv", "overlays.png", "table.png")


def default_out_dir(data: str, model: str) -> Path:
    """``sycam-out/evaluate-<data>-<model>`` with paths shortened to their last component."""
    from sycam.data import path_form

    def short(text: str) -> str:
        found = path_form(text)
        if found is not None:
            text = f"{found[0]}-{Path(found[1].rstrip('/')).name}"
        elif ":" in text:  # an import path package.module:factory
            form, _, path = text.partition(":")
            text = path or form
        elif "/" in text or text.endswith((".pth", ".pt")):
            text = Path(text).stem
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"

    return Path("sycam-out") / f"evaluate-{short(data)}-{short(model)}"


def make_fingerprint(methods: Sequence[Method], metrics: Sequence[Metric], identity: Mapping[str, Any],
                     seed: int) -> dict[str, Any]:
    """What must be equal for saved per-image values to be reused.

    Methods by label and program text (so an edited ``.cam`` file is not mistaken for the old
    one) with their params; metrics by name and ``repr``; ``identity`` (model, weights digest,
    data, split, limit, size, targets, on_error, ...); the seed and sycam's version.
    """
    from sycam import __version__

    return {
        "methods": [
            {"name": m.name, "kind": m.kind, "program": pretty(m.program) if m.program is not None else None,
             "params": dict(sorted(m.params.items()))}
            for m in methods
        ],
        "metrics": [{"name": m.name, "repr": repr(m)} for m in metrics],
        **{k: identity[k] for k in sorted(identity)},
        "seed": int(seed),
        "sycam": __version__,
    }


def _normal(fingerprint: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))  # tuples -> lists, paths -> str


def fingerprint_key(fingerprint: Mapping[str, Any]) -> str:
    """The 16-hex-digit key that tags every partial file of one configuration."""
    return hashlib.sha256(json.dumps(_normal(fingerprint), sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_out(out: str | Path, fingerprint: Mapping[str, Any], fresh: bool = False) -> Path:
    """Check ``out`` is writable and belongs to this configuration; write its ``config.json``.

    With ``fresh`` the previous partial results and outputs of this job are removed first (other
    files in the folder are left alone). A folder holding results of a different configuration
    raises :class:`SycamError` naming what differs.
    """
    path = check_writable(out)
    cfg_path = path / CONFIG
    partial = path / PARTIAL
    if fresh:
        if partial.is_dir():
            for f in partial.iterdir():
                if f.suffix in (".npz", ".tmp") and f.is_file():
                    f.unlink()
        for name in (CONFIG,) + OUTPUTS:
            if (path / name).is_file():
                (path / name).unlink()
    fp = _normal(fingerprint)
    if cfg_path.is_file():
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise SycamError(f"{cfg_path} is unreadable ({err}); use another --out or --fresh") from None
        if old != fp:
            diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            raise SycamError(
                f"output folder {path} holds results of a different configuration (differs in: {', '.join(diff)}); "
                "use another --out, or --fresh to discard them"
            )
    elif partial.is_dir() and any(partial.glob("*.npz")):
        raise SycamError(f"output folder {path} holds partial results without {CONFIG}; use another --out or --fresh")
    partial.mkdir(exist_ok=True)
    atomic_write(cfg_path, (json.dumps(fp, indent=2, sort_keys=True) + "\n").encode())
    return path


def save_partial(out: Path, record: Mapping[str, Any]) -> None:
    """Write one batch's arrays atomically to ``out/partial/part-<first index>-<images>.npz``."""
    idx = record["indices"]
    buf = io.BytesIO()
    np.savez(buf, **record)
    atomic_write(out / PARTIAL / f"part-{int(idx[0]):08d}-{len(idx):05d}.npz", buf.getvalue())


def load_partials(partial: Path, key: str, n_images: int) -> dict[str, Any]:
    """Every saved batch of this configuration (``{"batches": [...]}``); unusable files are removed.

    Files are read with ``allow_pickle=False``: a planted object array is an unreadable file
    (dropped with a warning), never unpickled. A file of another configuration, or one naming an
    image beyond the dataset, raises :class:`SycamError`.
    """
    found: list[dict[str, Any]] = []
    for f in sorted(partial.glob("*.tmp")) + sorted(partial.glob(".*.tmp")):
        f.unlink(missing_ok=True)  # an interrupted write
    for f in sorted(partial.glob("*.npz")):
        try:
            with np.load(f, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except Exception as err:  # noqa: BLE001 - any damage: recompute that batch
            warnings.warn(f"sycam evaluate: ignoring unreadable partial file {f} ({err}); its batch is recomputed",
                          stacklevel=2)
            f.unlink(missing_ok=True)
            continue
        if str(d.get("fingerprint")) != key:
            raise SycamError(f"partial file {f} belongs to another configuration; use another --out or --fresh")
        if d["indices"].size and int(d["indices"].max()) >= n_images:
            raise SycamError(f"partial file {f} holds image index {int(d['indices'].max())} but the dataset has "
                             f"{n_images} images; use another --out or --fresh")
        found.append(d)
    return {"batches": found}
