"""The capture cache itself: keys, the one entry point, eviction (see :mod:`sycam.cache`)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from sycam.cache.pack import FORMAT, Entry, Unusable, ldexp, touch
from sycam.capture import CaptureRequest, Captures, capture, merge_requests, with_rescorer
from sycam.errors import SycamError
from sycam.lang.ast import ScoreSpec

DEFAULT_MAX_GB = 10.0
_ENTRY = re.compile(r"[0-9a-f]{64}")
_F16_TOP = 14  # float16 pieces: the largest magnitude is scaled into (2^13, 2^14]


@dataclass
class CacheStats:
    """Process-wide counters of Workbench captures (also counted with the cache off)."""

    seconds: float = 0.0  # time in captures, computed or loaded
    batches: int = 0
    hits: int = 0  # batches served entirely from the cache
    partial: int = 0  # batches whose missing pieces were captured and added
    misses: int = 0  # batches captured from scratch (cache on, no entry yet)
    bytes_read: int = 0
    bytes_written: int = 0

    def since(self, mark: "CacheStats") -> dict[str, float]:
        now, then = asdict(self), asdict(mark)
        return {k: (round(now[k] - then[k], 3) if isinstance(now[k], float) else now[k] - then[k]) for k in now}

    def copy(self) -> "CacheStats":
        return CacheStats(**asdict(self))


STATS = CacheStats()


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of ``t`` (any dtype, any device), prefixed by dtype and shape."""
    flat = t.detach().reshape(-1).contiguous().cpu()
    return f"{flat.dtype}{tuple(t.shape)}".encode() + flat.view(torch.uint8).numpy().tobytes()


def model_key(module: nn.Module) -> str:
    """Content hash of a model: its state dict's tensors and its modules' classes and settings."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor_bytes(t) if isinstance(t, Tensor) else repr(t).encode())
    for name, m in module.named_modules():
        h.update(f"{name}|{type(m).__module__}.{type(m).__qualname__}|{m.extra_repr()}".encode())
    return h.hexdigest()


def _score_key(score: ScoreSpec) -> str:
    return f"{score.kind}:{score.k}:{score.alpha!r}" if score.kind == "finer" else score.kind


def _piece(kind: str, layer: str = "", score: ScoreSpec | None = None) -> str:
    """A piece's file stem: its kind and a hash of its layer and score (any characters allowed in both)."""
    if kind in ("targets", "logits"):
        return kind
    return f"{kind}-{_sha(kind, layer, _score_key(score) if score else '')[:24]}"


def _pieces(req: CaptureRequest) -> dict[str, tuple[str, str]]:
    """stem -> (kind, layer) of every piece ``req`` needs."""
    s = req.score
    out = {_piece("A", n): ("A", n) for n in req.all_layers}
    out.update({_piece("G", n, s): ("G", n) for n in req.grad_layers})
    out.update({_piece("S", n, s): ("S", n) for n in req.score_cam_layers})
    out.update({_piece("D", n, s): ("D", n) for n in req.ablation_layers})
    out.update({_piece("R", n, s): ("R", n) for n in req.reciprocal_layers})
    out.update({_piece("R1", n, s): ("R1", n) for n in req.reciprocal_onehot_layers})
    out[_piece("Y", score=s)] = ("Y", "")
    out["logits"] = ("logits", "")
    return out


def _missing_request(req: CaptureRequest, present: set[str]) -> CaptureRequest:
    """The part of ``req`` whose pieces are not in ``present`` (layers=() still gives Y and logits)."""
    s = req.score
    grad = {n for n in req.grad_layers if _piece("G", n, s) not in present}
    sc = {n for n in req.score_cam_layers if _piece("S", n, s) not in present}
    ab = {n for n in req.ablation_layers if _piece("D", n, s) not in present}
    rg = {n for n in req.reciprocal_layers if _piece("R", n, s) not in present}
    r1 = {n for n in req.reciprocal_onehot_layers if _piece("R1", n, s) not in present}
    layers = [n for n in req.all_layers if _piece("A", n) not in present or n in grad | sc | ab | rg | r1]
    return CaptureRequest(layers=tuple(layers), grad_layers=frozenset(grad), score_cam_layers=frozenset(sc),
                          ablation_layers=frozenset(ab), reciprocal_layers=frozenset(rg),
                          reciprocal_onehot_layers=frozenset(r1), score=s)


class CaptureCache:
    """A folder of capture entries with a size limit (see the module docstring)."""

    def __init__(self, root: str | Path, max_gb: float = DEFAULT_MAX_GB, dtype: str = "float32") -> None:
        if dtype not in ("float32", "float16"):
            raise SycamError(f"capture cache dtype must be float32 or float16, got {dtype!r} (SYCAM_CACHE_DTYPE)")
        if not (isinstance(max_gb, (int, float)) and max_gb >= 0 and math.isfinite(max_gb)):
            raise SycamError(f"capture cache size limit must be a non-negative number of GB, got {max_gb!r} (SYCAM_CACHE_MAX_GB)")
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_gb * 1e9)
        self.dtype = dtype
        self.disabled = False
        self._total: int | None = None  # bytes in the folder at the last scan, plus what this process wrote since
        self._scanned = 0.0

    @classmethod
    def from_env(cls) -> "CaptureCache | None":
        """The cache the environment describes, or ``None`` with ``SYCAM_CACHE=off``."""
        if os.environ.get("SYCAM_CACHE", "on").strip().lower() in ("0", "off", "false", "no"):
            return None
        return cls(cache_dir(), max_gb=_env_gb(), dtype=os.environ.get("SYCAM_CACHE_DTYPE", "float32").strip().lower())

    # ------------------------------------------------------------------ keys
    def batch_key(self, model: str, inputs: Tensor, targets: str) -> str:
        return _sha(f"sycam-captures-{FORMAT}", self.dtype, torch.__version__, inputs.device.type, model, targets,
                    tensor_bytes(inputs))

    # ------------------------------------------------------------------ the one entry point
    def capture(self, module: nn.Module, model: str, inputs: Tensor, target_key: str,
                targets_fn: Callable[[], Tensor], request: CaptureRequest, widen: CaptureRequest | None = None,
                describe: dict | None = None) -> tuple[Tensor, Captures]:
        """``(targets, captures)`` of one batch for ``request``, from the cache where possible."""
        entry = Entry(self.root / self.batch_key(model, inputs, target_key))
        want = _pieces(request)
        targets = None
        if "targets" in entry.index and all(stem in entry.index for stem in want):
            try:
                targets = entry.read("targets").to(inputs.device)
                caps = self._assemble(entry, request, {}, inputs)
                STATS.hits += 1
                STATS.bytes_read += entry.bytes_read
                touch(entry.path)
                return targets, self._rescorer(module, inputs, targets, caps, request)
            except Unusable:
                entry.index = {}
        if "targets" in entry.index:
            try:
                targets = entry.read("targets").to(inputs.device)
            except Unusable:
                entry.index = {}
        if targets is None:
            targets = targets_fn()
        full = request
        if widen is not None and widen.score == request.score:
            full = merge_requests([request, widen])
        todo = _missing_request(full, set(entry.index))
        fresh = capture(module, inputs, targets, todo)
        STATS.misses += not entry.index
        STATS.partial += bool(entry.index)
        new = self._store(entry, targets, fresh, todo, describe)
        try:
            caps = self._assemble(entry, request, new, inputs)
            STATS.bytes_read += entry.bytes_read
            return targets, self._rescorer(module, inputs, targets, caps, request)
        except Unusable:  # what was there before vanished meanwhile: capture all of it
            return targets, capture(module, inputs, targets, request)

    # ------------------------------------------------------------------ pieces
    def _encode(self, kind: str, t: Tensor) -> tuple[np.ndarray, int | None]:
        """(array, exponent): float16 pieces are stored as ``t * 2**-exponent``."""
        arr = t.detach().cpu()
        if self.dtype == "float16" and kind in ("A", "G") and arr.dtype == torch.float32 and arr.numel():
            top = float(arr.abs().max())
            if math.isfinite(top) and top > 0:
                e = math.ceil(math.log2(top)) - _F16_TOP
                return ldexp(arr, -e).to(torch.float16).numpy(), e
        return arr.contiguous().numpy(), None

    def _store(self, entry: Entry, targets: Tensor, caps: Captures, req: CaptureRequest,
               describe: dict | None) -> dict[str, Tensor]:
        """Write the new pieces of ``caps`` as one pack; return them as a later read would (rounded if float16)."""
        s = req.score
        values: dict[str, tuple[str, Tensor]] = {"logits": ("logits", caps.logits), _piece("Y", score=s): ("Y", caps.Y)}
        for kind, d in (("A", caps.A), ("G", caps.G), ("S", caps.S), ("D", caps.D), ("R", caps.R), ("R1", caps.R1)):
            for n, t in d.items():
                values[_piece(kind, n, None if kind == "A" else s)] = (kind, t)
        values["targets"] = ("targets", targets)
        out: dict[str, Tensor] = {}
        pack: dict[str, tuple[np.ndarray, int | None]] = {}
        for stem, (kind, t) in values.items():
            arr, e = self._encode(kind, t)
            out[stem] = t if e is None else ldexp(torch.from_numpy(arr), e).to(t.device)
            if stem not in entry.index:
                pack[stem] = (arr, e)
        if pack and not self.disabled:
            try:
                written = entry.write(pack, describe)
            except FileNotFoundError:  # another process evicted the entry meanwhile: not kept
                written = 0
            except OSError as err:
                self.disabled = True
                warnings.warn(f"sycam: capture cache {self.root} disabled for this run: {err.strerror or err}", stacklevel=4)
                written = 0
            STATS.bytes_written += written
            if written:
                self._account(written, entry.path)
        return out

    def _account(self, written: int, entry: Path) -> None:
        """Evict when over the limit. The folder is scanned at most every 30 s (other processes may
        write too) or when this process's own writes would cross the limit."""
        self._total = (self._total or 0) + written
        if self._total > self.max_bytes or time.monotonic() - self._scanned > 30:
            self.evict(keep=entry)

    def _assemble(self, entry: Entry, req: CaptureRequest, new: dict[str, Tensor], inputs: Tensor) -> Captures:
        def get(stem: str) -> Tensor:
            if stem in new:
                return new[stem].to(inputs.device)
            return entry.read(stem).to(inputs.device)

        s = req.score
        Y = get(_piece("Y", score=s))
        return Captures(A={n: get(_piece("A", n)) for n in req.all_layers},
                        G={n: get(_piece("G", n, s)) for n in sorted(req.grad_layers)},
                        S={n: get(_piece("S", n, s)) for n in sorted(req.score_cam_layers)},
                        D={n: get(_piece("D", n, s)) for n in sorted(req.ablation_layers)},
                        R={n: get(_piece("R", n, s)) for n in sorted(req.reciprocal_layers)},
                        R1={n: get(_piece("R1", n, s)) for n in sorted(req.reciprocal_onehot_layers)},
                        Y=Y, logits=get("logits"), input_size=(int(inputs.shape[2]), int(inputs.shape[3])),
                        X=inputs.detach().mean(1).to(Y.dtype))  # the image terminal, as capture() computes it

    @staticmethod
    def _rescorer(module: nn.Module, inputs: Tensor, targets: Tensor, caps: Captures, req: CaptureRequest) -> Captures:
        """Cached captures with the re-scorer ``confidence``/``gain`` need (it runs the model: never stored)."""
        return with_rescorer(module, inputs, targets, caps) if req.rescore else caps

    # ------------------------------------------------------------------ housekeeping
    def entries(self) -> list[tuple[Path, float, int]]:
        """(folder, last use, bytes) of every entry, least recently used first."""
        out = []
        try:
            # only folders named like an entry: a cache folder set by mistake to $HOME loses nothing
            dirs = [d for d in os.scandir(self.root) if d.is_dir(follow_symlinks=False) and _ENTRY.fullmatch(d.name)]
        except OSError:
            return []
        for d in dirs:
            try:
                size = sum(f.stat().st_size for f in os.scandir(d.path) if f.is_file(follow_symlinks=False))
                out.append((Path(d.path), d.stat().st_mtime, size))
            except OSError:  # removed meanwhile
                continue
        return sorted(out, key=lambda e: e[1])

    def evict(self, keep: Path | None = None) -> int:
        """Delete least recently used entries until the cache fits its limit; returns how many."""
        entries = self.entries()
        total = sum(e[2] for e in entries)
        self._scanned = time.monotonic()
        removed = 0
        for path, _, size in [e for e in entries if e[0] != keep] + [e for e in entries if e[0] == keep]:
            if total <= self.max_bytes:
                break
            if path == keep:
                warnings.warn(f"sycam: one batch's captures ({size / 1e9:.2f} GB) exceed the capture cache limit "
                              f"({self.max_bytes / 1e9:.2f} GB, SYCAM_CACHE_MAX_GB); not kept", stacklevel=5)
            shutil.rmtree(path, ignore_errors=True)
            total -= size
            removed += 1
        self._total = total
        return removed

    def info(self) -> dict:
        entries = self.entries()
        metas = []
        for path, _, _ in entries:
            try:
                metas.append(json.loads((path / "meta.json").read_text()))
            except (OSError, ValueError):
                metas.append({})
        groups: dict[str, dict] = {}
        for (_, _, size), meta in zip(entries, metas, strict=True):
            g = groups.setdefault(f"{meta.get('model', '?')} on {meta.get('data', '?')}", {"entries": 0, "bytes": 0, "images": 0})
            g["entries"] += 1
            g["bytes"] += size
            g["images"] += int(meta.get("images", 0))
        return {"dir": str(self.root), "entries": len(entries), "bytes": sum(e[2] for e in entries),
                "max_bytes": self.max_bytes, "dtype": self.dtype,
                "oldest_use": entries[0][1] if entries else None, "newest_use": entries[-1][1] if entries else None,
                "by_model_and_data": groups}

    def clear(self) -> int:
        entries = self.entries()
        for path, _, _ in entries:
            shutil.rmtree(path, ignore_errors=True)
        return len(entries)


_DEFAULTS: dict[tuple[str | None, ...], "CaptureCache | None"] = {}
_ENV = ("SYCAM_CACHE", "SYCAM_CACHE_DIR", "SYCAM_HOME", "XDG_CACHE_HOME", "SYCAM_CACHE_MAX_GB", "SYCAM_CACHE_DTYPE")


def default_cache() -> CaptureCache | None:
    """The process's cache for the current environment (one instance per setting, so that a
    disabled cache stays disabled and size accounting is shared by every Workbench)."""
    cfg = tuple(os.environ.get(k) for k in _ENV)
    if cfg not in _DEFAULTS:
        _DEFAULTS[cfg] = CaptureCache.from_env()
    return _DEFAULTS[cfg]


def _env_gb() -> float:
    raw = os.environ.get("SYCAM_CACHE_MAX_GB", str(DEFAULT_MAX_GB))
    try:
        return float(raw)
    except ValueError:
        raise SycamError(f"SYCAM_CACHE_MAX_GB must be a number of GB, got {raw!r}") from None


def cache_dir() -> Path:
    """``$SYCAM_CACHE_DIR``, else ``$SYCAM_HOME/captures`` (``~/.cache/sycam/captures`` by default)."""
    env = os.environ.get("SYCAM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from sycam.models.builtin import sycam_home

    return sycam_home() / "captures"


__all__ = ["CacheStats", "CaptureCache", "STATS", "cache_dir", "default_cache", "model_key", "tensor_bytes"]
