"""Keep glibc from returning freed tensor memory to the system between the passes of a search.

A CAM at 224×224 for a batch of 32 images is 6.4 MB: above glibc's threshold for serving an
allocation with a fresh ``mmap``, so every temporary of a full-resolution pass (the upsampled
map, its normalisation, the metric's bin indices...) page-faults its memory in again — measured
at 3.3 ms for one ``(maps * 256).to(int32)`` over 32×224×224 maps, against 0.15 ms once the heap
keeps the memory (20×; the Otsu IoU of a candidate 4.7 → ~1 ms). PyTorch's CPU tuning guide
recommends jemalloc or tcmalloc for the same reason; :func:`tune_allocator` gets most of it
from glibc itself (``mallopt``): allocations up to 32 MiB come from the heap, which is trimmed
only when 128 MiB or more lie free at its top. The process's resident memory then falls back
less eagerly after a peak (by at most those 128 MiB plus fragmentation), so this is for
long-running jobs (the ``sycam`` commands call it), not done on import.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20

_done: bool | None = None


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds (once per process); False where the C library is
    not glibc (macOS, musl, Windows: nothing changes)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not _done:
        logging.getLogger(__name__).info("mallopt refused the thresholds: the allocator is left as it was")
    return _done
