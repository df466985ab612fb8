"""The on-disk form of a cache entry: packs of pieces (raw arrays and a JSON index; no pickle)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

FORMAT = 1


class Unusable(Exception):
    """A piece vanished (evicted by another process) or is damaged: capture instead."""


def ldexp(t: Tensor, e: int) -> Tensor:
    """``t * 2**e``, exact (a power of two only moves the exponent)."""
    return torch.ldexp(t.float(), torch.tensor(e, dtype=torch.int32))


class Entry:
    """One batch's folder: packs of pieces, each a raw ``<id>.bin`` (arrays back to back, 64-byte
    aligned) and its ``<id>.json`` index (dtype, shape, offset, float16 exponent per piece). A pack
    exists once its index is renamed into place, after its data; reads map the data copy-on-write,
    so pages come from the page cache when first touched and a program's writes stay private."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index: dict[str, tuple[str, dict]] = {}  # stem -> (pack id, piece metadata)
        self._maps: dict[str, np.ndarray] = {}
        self.bytes_read = 0
        try:
            names = [n for n in os.listdir(path) if n.endswith(".json") and n.startswith("p-")]
        except OSError:
            return
        for name in sorted(names):
            try:
                meta = json.loads((path / name).read_text())
                pieces = meta["pieces"] if meta.get("format") == FORMAT else {}
            except (OSError, ValueError, KeyError, TypeError):  # a damaged index: its pieces are recaptured
                continue
            for stem, piece in pieces.items():
                self.index.setdefault(stem, (name[:-5], piece))

    def read(self, stem: str) -> Tensor:
        if stem not in self.index:
            raise Unusable(stem)
        pack, piece = self.index[stem]
        try:
            if pack not in self._maps:
                self._maps[pack] = np.memmap(self.path / f"{pack}.bin", dtype=np.uint8, mode="c")
            data = self._maps[pack]
            dtype = np.dtype(piece["dtype"])
            shape = tuple(int(d) for d in piece["shape"])
            offset = int(piece["offset"])
            count = int(np.prod(shape, dtype=np.int64))
            if dtype.hasobject or dtype.kind not in "fiub" or offset < 0 or offset + count * dtype.itemsize > data.size:
                raise ValueError(f"piece {stem} of {pack} does not fit its data")
            arr = data[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape)
        except (OSError, ValueError, KeyError, TypeError) as err:  # evicted meanwhile, or damaged
            raise Unusable(str(err)) from None
        self.bytes_read += arr.nbytes
        t = torch.from_numpy(arr)
        return t if piece.get("exp") is None else ldexp(t, int(piece["exp"]))

    def write(self, pieces: dict[str, tuple[np.ndarray, int | None]], describe: dict | None) -> int:
        """Write one pack; returns its bytes."""
        self.path.mkdir(parents=True, exist_ok=True)
        if describe is not None and not (self.path / "meta.json").exists():
            atomic(self.path, "meta.json", json.dumps(describe, default=str).encode())
        pack = f"p-{os.getpid()}-{os.urandom(6).hex()}"
        index: dict[str, dict] = {}
        tmp = self.path / f".tmp-{pack}.bin"
        offset = 0
        with open(tmp, "wb") as f:
            for stem, (arr, e) in pieces.items():
                pad = -offset % 64
                f.write(b"\0" * pad)
                offset += pad
                index[stem] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset, "exp": e}
                data = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
                f.write(memoryview(data))
                offset += data.size
        os.replace(tmp, self.path / f"{pack}.bin")
        atomic(self.path, f"{pack}.json", json.dumps({"format": FORMAT, "pieces": index}).encode())
        for stem, piece in index.items():
            self.index.setdefault(stem, (pack, piece))
        return offset


def touch(entry: Path) -> None:
    try:
        os.utime(entry)
    except OSError:
        pass


def atomic(folder: Path, name: str, data: bytes) -> None:
    tmp = folder / f".tmp-{os.getpid()}-{name}"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)



__all__ = ["Entry", "FORMAT", "Unusable", "atomic", "ldexp", "touch"]
