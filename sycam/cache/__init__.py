"""Captures cached on disk: a second run on the same model and data skips its forward/backward passes.

A :class:`~sycam.workbench.Workbench` asks :meth:`CaptureCache.capture` for each batch. The batch's
**entry** is keyed by (sha256 throughout)

- the model: every tensor of its state dict (name, dtype, shape, bytes) and every module's name,
  class and ``extra_repr()`` (strides, paddings, ... that the weights do not show) — the weights'
  content, not a file name, so retraining or editing a weight in place is a new entry;
- the model inputs: the bytes of the normalised batch. This covers the data (a changed pixel of an
  image file is a new entry; touching a file without changing it is not), its order, the resize
  and the bundle's ``normalize``;
- the targets: the target mode (``label``/``pred``/``imagenet``), the labels, the dataset's label
  space and the model's class count (``pred`` targets are stored, so a hit needs no extra forward);
- the device type, the cache format and torch's version.

Inside an entry every value is its own file (a **piece**): ``A`` of a layer, ``G``/``S``/``D`` and
Recipro-CAM's ``R``/``R1`` of a layer under a score (logit, prob, finer(k, alpha)), ``Y`` and the
logits. The image terminal ``X`` is no piece (it is the inputs' mean over colours, computed on
reading), nor is the re-scorer of ``confidence``/``gain`` (it runs the model: it is attached to the
captures on reading, as :func:`~sycam.capture.capture` attaches it). A request is served from
whatever pieces exist; only the missing ones are captured (with a request restricted to them), so a
later program on other layers, or Score-CAM's ``S`` on top of ``A``/``G``, adds pieces to the entry.
``widen`` (what a synthesis searches over) is captured with the first miss, so that a later run
whose hall of fame uses other layers still hits.

The pieces of one capture are written as one pack: raw array bytes and a JSON index (dtype,
shape, offset), nothing a reader could execute. Data then index are renamed into place, so
concurrent workers and a kill mid-write leave no torn piece; a hit maps the data copy-on-write
(pages come from the page cache as the programs read them, no copy). ``SYCAM_CACHE_DTYPE=float16`` stores ``A`` and ``G`` as float16 with a power-of-two scale per
piece (the largest magnitude maps into [2^13, 2^14]): relative rounding error at most 2^-11 ≈ 4.9e-4
per value, values below 2^-38 of the piece's largest become zero. The values returned on a miss are
the stored (rounded) ones, so a cold and a warm run give identical results either way; the default
is float32 (exact, see README "Cache" for the measured effect of float16 on scores).

Environment: ``SYCAM_CACHE`` (``on``/``off``, default on), ``SYCAM_CACHE_DIR`` (default
``$SYCAM_HOME/captures``), ``SYCAM_CACHE_MAX_GB`` (default 10; least recently used entries are
deleted beyond it, an entry's use time is its folder's mtime, set on every hit),
``SYCAM_CACHE_DTYPE`` (``float32``/``float16``). Failing writes (disk full, read-only folder) turn
the cache off for the process with one warning; a run never fails because of its cache.
"""
from sycam.cache.store import STATS, CacheStats, CaptureCache, cache_dir, default_cache, model_key, tensor_bytes

__all__ = ["CacheStats", "CaptureCache", "STATS", "cache_dir", "default_cache", "model_key", "tensor_bytes"]
