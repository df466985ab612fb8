"""Files sycam writes: atomic replacement, writable-folder checks, content digests.

One owner for the three things every job that writes an output folder needs
(``sycam evaluate``, ``sycam synthesize``, the built-in model's weight cache).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from sycam.errors import SycamError

__all__ = ["atomic_write", "check_writable", "file_digest"]


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one.

    The bytes go to a temporary file beside the target (``.NAME.PID.tmp``, same folder, so the
    rename stays on one file system), are flushed to disk, then renamed over the target. A failed
    write removes the temporary file and re-raises.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def check_writable(out: str | Path) -> Path:
    """Create the folder ``out`` if needed and prove it writable with a 4 KiB probe file.

    Returns the folder's path; raises :class:`SycamError` (naming the folder and the reason)
    where it is an existing file or cannot be created or written. Called before any work, so a
    long job does not fail at its end.
    """
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise SycamError(f"output folder {path} is an existing file, not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as err:
        raise SycamError(f"cannot write to output folder {path}: {err.strerror or err}; choose another --out") from None
    return path


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
