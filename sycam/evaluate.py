"""``sycam evaluate``: score several explainers with several metrics on one dataset, side by side.

The job streams the dataset batch by batch (peak memory is one batch, never the dataset). Each
batch is captured ONCE per explained score (programs with a different ``score`` directive, e.g.
Finer-CAM, form their own capture group) and every method's maps are computed from that shared
capture; every metric is then computed on every method's maps. Per-image values go to
``OUT/partial/`` after every batch (one ``.npz`` per batch, written atomically, tagged with a
fingerprint of the configuration), so an interrupted run resumes where it stopped and loses at
most the batch in flight.

Besides programs (reference names, ``.cam`` files) two baselines are always available:

- ``random``: a uniform random map per image, seeded by ``(seed, image index)`` — the floor every
  explainer must beat;
- ``center``: a centred isotropic Gaussian, ``exp(-d² / (2σ²))`` with ``d`` the distance to the image
  centre and ``σ = min(H, W) / 4`` — the photographer's-bias baseline.

Aggregation: per method and metric the mean of the non-NaN per-image values with a 95 %
percentile-bootstrap interval (:func:`sycam.metrics.stats.bootstrap_ci`) and the number of valid
images. A program that yields NaN/Inf on an image makes that image's values NaN for that
method; the run continues and the report counts those images.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sycam.workbench import Workbench, merge_requests
from sycam.capture import CaptureRequest, Captures, capture
from sycam.compile import CompiledProgram, LayerResolver
from sycam.data.base import Batch, Dataset
from sycam.errors import ProgramRuntimeError, SycamError
from sycam.lang import ast as A
from sycam.lang.pretty import pretty
from sycam.metrics import Metric, MetricInputs, get_metric, list_metrics
from sycam.metrics.stats import bootstrap_ci
from sycam.models.bundle import ModelBundle

__all__ = [
    "BASELINES",
    "EvalResult",
    "Method",
    "Summary",
    "available_methods",
    "baseline_maps",
    "check_writable",
    "default_out_dir",
    "evaluate",
    "file_digest",
    "format_table",
    "make_fingerprint",
    "parse_params",
    "prepare_out",
    "resolve_methods",
    "resolve_metrics",
]

#: methods that are not programs
BASELINES = ("random", "center")

#: how many images the overlay grid shows
OVERLAY_ROWS = 6

_RANDOM_DOMAIN = 0x5A11  # separates the random baseline's streams from other seeded draws
_PARTIAL = "partial"
_CONFIG = "config.json"
# every file this job writes in OUT (``--fresh`` removes these and nothing else)
_OUTPUTS = ("results.csv", "results.json", "results.md", "per_image.csv", "overlays.png", "table.png")


# ---------------------------------------------------------------------------------------- methods


@dataclass
class Method:
    """One explainer under evaluation: a program (``kind="program"``) or a baseline."""

    name: str  # the label in tables (reference name, file stem, or baseline name)
    kind: str  # "program" or "baseline"
    source: str  # what the user typed (name or path)
    program: A.Program | None = None
    params: dict[str, float] = field(default_factory=dict)  # user overrides of ?params

    @property
    def score(self) -> A.ScoreSpec | None:
        """The score the program explains (None for baselines)."""
        return self.program.score_spec if self.program is not None else None


def available_methods() -> list[str]:
    """Reference program names plus the baselines."""
    from sycam.programs import list_programs

    return list_programs() + list(BASELINES)


def resolve_methods(specs: Sequence[str], params: Mapping[str, Mapping[str, float]] | None = None) -> list[Method]:
    """Turn method specs into :class:`Method` s.

    A spec is a reference program name or alias (``gradcam``, ``grad-cam++``), a path to a
    ``.cam`` file (labelled by its stem, or by the path where the stem is already taken), or a
    baseline (``random``, ``center``). ``params`` maps a method label to ``?param`` overrides.
    Unknown names, missing files, duplicates, and params for unknown methods or baselines raise
    :class:`SycamError`.
    """
    from sycam.programs import ALIASES, list_programs, load

    if isinstance(specs, str):
        raise TypeError("resolve_methods: pass a list of method names, not one string (split on commas first)")
    specs = [s.strip() for s in specs if s and s.strip()]
    if not specs:
        raise SycamError(f"no methods given; available: {', '.join(available_methods())} or a .cam file")
    refs = list_programs()
    out: list[Method] = []
    for spec in specs:
        key = spec.lower()
        if key in BASELINES:
            m = Method(name=key, kind="baseline", source=key)
        elif key in refs or key in ALIASES:
            name = ALIASES.get(key, key)
            m = Method(name=name, kind="program", source=name, program=load(name))
        elif spec.endswith(".cam") or Path(spec).expanduser().is_file():
            path = Path(spec).expanduser()
            if not path.is_file():
                raise SycamError(f"method {spec!r}: program file not found: {path}")
            label = path.stem
            if label in refs or label in BASELINES or any(o.name == label for o in out):
                label = spec  # keep the label unique: the stem is already taken
            m = Method(name=label, kind="program", source=str(path.resolve()), program=load(path))
        else:
            raise SycamError(
                f"unknown method {spec!r}; available: {', '.join(available_methods())}, or a path to a .cam file"
            )
        if any(o.name == m.name for o in out):
            raise SycamError(f"method {m.name!r} is listed twice in --methods")
        out.append(m)
    for label, values in (params or {}).items():
        found = [m for m in out if m.name == label or m.source == label]
        if not found:
            raise SycamError(f"--params for {label!r}, which is not among the methods ({', '.join(m.name for m in out)})")
        if found[0].kind == "baseline":
            raise SycamError(f"--params for {label!r}: baselines have no parameters")
        found[0].params.update({k: float(v) for k, v in values.items()})
    return out


def parse_params(items: Sequence[str] | None) -> dict[str, dict[str, float]]:
    """Parse ``METHOD:NAME=VALUE[,NAME=VALUE...]`` items (``winsorcam:p=50``) into a dict.

    A leading ``?`` on the name is accepted (``winsorcam:?p=50``). Malformed items raise
    :class:`SycamError` naming the item.
    """
    out: dict[str, dict[str, float]] = {}
    for item in items or []:
        method, sep, rest = item.rpartition(":")
        if not sep or not method.strip() or not rest.strip():
            raise SycamError(f"--params {item!r}: expected METHOD:NAME=VALUE[,NAME=VALUE], e.g. winsorcam:p=50")
        for pair in rest.split(","):
            name, eq, value = pair.partition("=")
            name = name.strip().lstrip("?")
            if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise SycamError(f"--params {item!r}: {pair!r} is not NAME=VALUE")
            try:
                v = float(value)
            except ValueError:
                raise SycamError(f"--params {item!r}: {value.strip()!r} is not a number") from None
            if not math.isfinite(v):
                raise SycamError(f"--params {item!r}: the value of {name} must be finite")
            out.setdefault(method.strip(), {})[name] = v
    return out


def resolve_metrics(specs: Sequence[str | Metric]) -> list[Metric]:
    """Metric objects from CLI names (``iou``, ``iou@0.5``, ``deletion``...) or Metric instances."""
    if isinstance(specs, str):
        raise TypeError("resolve_metrics: pass a list of metric names, not one string (split on commas first)")
    out: list[Metric] = []
    for spec in specs:
        if isinstance(spec, Metric):
            metric = spec
        else:
            name = str(spec).strip()
            if not name:
                continue
            try:
                metric = get_metric(name)
            except KeyError:
                raise SycamError(f"unknown metric {name!r}; available: {', '.join(list_metrics())}") from None
        if any(m.name == metric.name for m in out):
            raise SycamError(f"metric {metric.name!r} is listed twice in --metrics")
        out.append(metric)
    if not out:
        raise SycamError(f"no metrics given; available: {', '.join(list_metrics())}")
    return out


# -------------------------------------------------------------------------------------- baselines


def baseline_maps(kind: str, n: int, size: tuple[int, int], device: torch.device, seed: int = 0,
                  keys: Sequence[Sequence[int]] | None = None) -> Tensor:
    """Baseline maps (n, H, W) in [0, 1] on ``device``.

    ``random``: i.i.d. uniform pixels drawn from ``numpy.random.default_rng([seed, 0x5A11, *key])``
    with ``key = keys[i]`` (the image's dataset index), min-max normalised; the same key gives the
    same map whatever the batch. ``center``: ``exp(-((y-cy)² + (x-cx)²) / (2σ²))`` with
    ``(cy, cx) = ((H-1)/2, (W-1)/2)`` and ``σ = min(H, W)/4``, min-max normalised.
    """
    h, w = int(size[0]), int(size[1])
    if kind == "random":
        if keys is None or len(keys) != n:
            raise ValueError(f"baseline_maps('random'): need one key per map ({n}), got {None if keys is None else len(keys)}")
        arr = np.stack([np.random.default_rng([int(seed), _RANDOM_DOMAIN, *map(int, k)]).random((h, w), dtype=np.float32)
                        for k in keys]) if n else np.zeros((0, h, w), np.float32)
        maps = torch.from_numpy(arr).to(device)
    elif kind == "center":
        y = torch.arange(h, dtype=torch.float32, device=device) - (h - 1) / 2
        x = torch.arange(w, dtype=torch.float32, device=device) - (w - 1) / 2
        sigma = min(h, w) / 4
        g = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
        maps = g.expand(n, h, w).clone()
    else:
        raise ValueError(f"unknown baseline {kind!r}; expected one of {', '.join(BASELINES)}")
    flat = maps.reshape(n, -1)
    if n == 0:
        return maps
    lo = flat.amin(1).view(-1, 1, 1)
    rng = (flat.amax(1) - flat.amin(1)).view(-1, 1, 1)
    return torch.where(rng > 0, (maps - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(maps))


# ------------------------------------------------------------------------ output folder and resume


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def _fingerprint_key(fp: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_writable(out: str | Path) -> Path:
    """Create ``out`` if needed and prove it writable with a probe file; :class:`SycamError` otherwise."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise SycamError(f"output folder {path} is an existing file, not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise SycamError(f"cannot write to output folder {path}: {err.strerror or err}; choose another --out") from None
    return path


def prepare_out(out: str | Path, fingerprint: Mapping[str, Any], fresh: bool = False) -> Path:
    """Check ``out`` is writable and belongs to this configuration; write its ``config.json``.

    With ``fresh`` the previous partial results and outputs of this job are removed first (other
    files in the folder are left alone). A folder holding results of a different configuration
    raises :class:`SycamError` naming what differs.
    """
    path = check_writable(out)
    cfg_path = path / _CONFIG
    partial = path / _PARTIAL
    if fresh:
        if partial.is_dir():
            for f in partial.iterdir():
                if f.suffix in (".npz", ".tmp") and f.is_file():
                    f.unlink()
        for name in (_CONFIG,) + _OUTPUTS:
            if (path / name).is_file():
                (path / name).unlink()
    fp = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))  # normalise (tuples -> lists)
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
        raise SycamError(f"output folder {path} holds partial results without {_CONFIG}; use another --out or --fresh")
    partial.mkdir(exist_ok=True)
    _atomic_write(cfg_path, (json.dumps(fp, indent=2, sort_keys=True) + "\n").encode())
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    # write beside the target, flush to disk, then rename: a crash leaves the old file or the new one
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_partials(partial: Path, key: str, n_images: int) -> dict[str, Any]:
    """Every saved batch of this configuration, keyed by file; unusable files are removed."""
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


# ---------------------------------------------------------------------------------------- results


@dataclass
class Summary:
    """One (method, metric) cell: mean, 95 % bootstrap interval, valid and NaN counts."""

    method: str
    metric: str
    mean: float
    lo: float
    hi: float
    n_valid: int
    n_nan: int
    higher_is_better: bool


@dataclass
class EvalResult:
    """Everything ``evaluate`` measured. ``values[method][metric]`` is (N,) float64, NaN where undefined."""

    methods: list[str]
    metrics: list[str]
    higher_is_better: dict[str, bool]
    values: dict[str, dict[str, np.ndarray]]
    indices: np.ndarray  # dataset index of each image
    ids: list[str]
    targets: np.ndarray
    summaries: list[Summary]
    invalid: dict[str, int]  # images where the program gave NaN/Inf
    metric_failures: dict[str, dict[str, int]]  # images where a metric's re-explanation failed
    method_seconds: dict[str, float]
    metric_seconds: dict[str, float]
    capture_seconds: float
    wall_seconds: float
    capture_groups: list[list[str]]
    skipped: list[tuple[str, str]]
    batches_computed: int
    images_resumed: int
    config: dict[str, Any]
    out: Path | None = None

    @property
    def n_images(self) -> int:
        """Number of images evaluated (N)."""
        return int(self.indices.size)

    def summary(self, method: str, metric: str) -> Summary:
        """The cell for ``method`` × ``metric``."""
        for s in self.summaries:
            if s.method == method and s.metric == metric:
                return s
        raise KeyError(f"no result for method {method!r} and metric {metric!r}")

    def means(self) -> np.ndarray:
        """(methods, metrics) array of means."""
        return np.array([[self.summary(m, k).mean for k in self.metrics] for m in self.methods], dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN written as null)."""
        return _nan_to_none({
            "n_images": self.n_images,
            "methods": self.methods,
            "metrics": [{"name": k, "higher_is_better": self.higher_is_better[k]} for k in self.metrics],
            "results": [s.__dict__ for s in self.summaries],
            "invalid_images": self.invalid,
            "metric_failures": self.metric_failures,
            "seconds": {
                "capture_shared": self.capture_seconds,
                "methods": self.method_seconds,
                "metrics": self.metric_seconds,
                "wall_this_run": self.wall_seconds,
            },
            "capture_groups": self.capture_groups,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "batches_computed_this_run": self.batches_computed,
            "images_resumed": self.images_resumed,
            "config": self.config,
        })


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.3f}"


def _cell(s: Summary, n: int) -> str:
    if s.n_valid == 0:
        return "– (n=0)"
    text = f"{_fmt(s.mean)} [{_fmt(s.lo)}, {_fmt(s.hi)}]"
    return text + (f" n={s.n_valid}" if s.n_valid != n else "")


def format_table(result: EvalResult) -> str:
    """The aligned method × metric table: ``mean [95% CI]`` (``n=k`` where only k of N images are
    valid), the seconds each method spent computing maps, then notes on timing, invalid programs
    and skipped images."""
    n = result.n_images
    heads = ["method"] + [f"{k} {'↑' if result.higher_is_better[k] else '↓'}" for k in result.metrics] + ["maps s"]
    rows = [[m] + [_cell(result.summary(m, k), n) for k in result.metrics] + [f"{result.method_seconds[m]:.2f}"]
            for m in result.methods]
    widths = [max(len(r[i]) for r in [heads] + rows) for i in range(len(heads))]
    lines = [f"{n} images · mean [95% bootstrap CI] · n=k where only k images have a value"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip())
    lines.append("")
    lines.extend(_notes(result))
    return "\n".join(lines)


def _notes(result: EvalResult) -> list[str]:
    groups = len(result.capture_groups)
    out = [f"capture (shared by all methods, {groups} score group{'s' if groups != 1 else ''}): "
           f"{result.capture_seconds:.2f} s",
           "metric time: " + ", ".join(f"{k} {result.metric_seconds[k]:.2f} s" for k in result.metrics)]
    if result.images_resumed:
        out.append(f"resumed: {result.images_resumed} images from earlier runs, {result.batches_computed} batches computed now")
    for m, k in result.invalid.items():
        if k:
            out.append(f"invalid: {m} yields NaN/Inf on {k} of {result.n_images} images (their values are NaN)")
    for m, per in result.metric_failures.items():
        for k, c in per.items():
            if c:
                out.append(f"failed: {k} for {m} on {c} images (the explainer failed on perturbed copies)")
    if result.skipped:
        out.append(f"skipped: {len(result.skipped)} bad images left out (listed in results.json), first: "
                   f"{result.skipped[0][0]}: {result.skipped[0][1]}")
    return out


def _markdown(result: EvalResult) -> str:
    n = result.n_images
    heads = ["method"] + [f"{k} {'↑' if result.higher_is_better[k] else '↓'}" for k in result.metrics] + ["maps s"]
    lines = [f"{n} images; mean [95% bootstrap CI]; `n=k` where only k images have a value.", "",
             "| " + " | ".join(heads) + " |", "|" + "|".join(["---"] + ["---:"] * (len(heads) - 1)) + "|"]
    for m in result.methods:
        cells = [_cell(result.summary(m, k), n) for k in result.metrics]
        lines.append("| " + " | ".join([m] + cells + [f"{result.method_seconds[m]:.2f}"]) + " |")
    lines.append("")
    lines.extend(f"- {line}" for line in _notes(result))
    return "\n".join(lines) + "\n"


def _write_outputs(result: EvalResult, out: Path, overlay: dict[str, Any] | None, figures: bool) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "metric", "mean", "ci_lo", "ci_hi", "n_valid", "n_nan", "higher_is_better",
                "method_seconds", "invalid_images"])
    for s in result.summaries:
        w.writerow([s.method, s.metric, f"{s.mean:.6g}", f"{s.lo:.6g}", f"{s.hi:.6g}", s.n_valid, s.n_nan,
                    int(s.higher_is_better), f"{result.method_seconds[s.method]:.3f}", result.invalid[s.method]])
    _atomic_write(out / "results.csv", buf.getvalue().encode())
    _atomic_write(out / "results.json", (json.dumps(result.to_json(), indent=2) + "\n").encode())
    _atomic_write(out / "results.md", _markdown(result).encode())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "id", "target", "method"] + result.metrics)
    for m in result.methods:
        for i in range(result.n_images):
            w.writerow([int(result.indices[i]), result.ids[i], int(result.targets[i]), m]
                       + [f"{result.values[m][k][i]:.6g}" for k in result.metrics])
    _atomic_write(out / "per_image.csv", buf.getvalue().encode())
    if not figures:
        return
    from sycam.viz import heatmap_table, overlay_grid

    heatmap_table(result.means(), result.methods, result.metrics, out / "table.png",
                  title=f"mean over {result.n_images} images",
                  higher_is_better=[result.higher_is_better[k] for k in result.metrics])
    if overlay is not None and overlay["images"] is not None:
        overlay_grid(overlay["images"], overlay["maps"], out / "overlays.png", row_labels=overlay["labels"],
                     masks=overlay["masks"])


# ------------------------------------------------------------------------------------- the job


class _View:
    """The dataset restricted to ``indices`` (the images still to do); other attributes pass through."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self._dataset = dataset
        self._indices = list(indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> Any:
        return self._dataset[self._indices[i]]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_dataset", "_indices"):
            raise AttributeError(name)  # no recursion before __init__ ran (copy, pickle)
        return getattr(self._dataset, name)


def _sync(device: torch.device) -> None:
    # GPU kernels run asynchronously: wait for them so that timings mean something
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _select(caps: Captures, idx: Tensor) -> Captures:
    """The captures of the images ``idx`` only (programs are per image, so this is exact)."""
    return Captures(A={k: v[idx] for k, v in caps.A.items()}, G={k: v[idx] for k, v in caps.G.items()},
                    S={k: v[idx] for k, v in caps.S.items()}, D={k: v[idx] for k, v in caps.D.items()},
                    Y=caps.Y[idx], logits=caps.logits[idx], input_size=caps.input_size)


def _program_maps(compiled: CompiledProgram, caps: Captures, params: Mapping[str, float]) -> tuple[Tensor | None, Tensor]:
    """(maps of the valid images, bool mask of valid images). A program that yields NaN/Inf on
    some images is re-run on the others, so one bad image does not void its batch."""
    b = int(caps.Y.shape[0])
    try:
        return compiled(caps, params), torch.ones(b, dtype=torch.bool, device=caps.Y.device)
    except ProgramRuntimeError:
        pass
    try:
        raw = compiled.raw(caps, params)
        good = torch.isfinite(raw).flatten(1).all(1)
    except ProgramRuntimeError:
        good = torch.zeros(b, dtype=torch.bool, device=caps.Y.device)
    if not bool(good.any()):
        return None, good
    try:
        return compiled(_select(caps, good.nonzero().flatten()), params), good
    except ProgramRuntimeError:
        return None, torch.zeros_like(good)


def _group_key(spec: A.ScoreSpec) -> str:
    return spec.kind if spec.kind != "finer" else f"finer(k={spec.k}, alpha={spec.alpha:g})"


def evaluate(
    bundle: ModelBundle,
    dataset: Dataset,
    methods: Sequence[str | Method],
    metrics: Sequence[str | Metric],
    out: str | Path | None = None,
    *,
    batch_size: int = 32,
    targets: str = "auto",
    params: Mapping[str, Mapping[str, float]] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    fresh: bool = False,
    progress: bool = True,
    figures: bool = True,
    identity: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> EvalResult:
    """Score ``methods`` with ``metrics`` on every image of ``dataset``.

    ``methods``: reference names, ``.cam`` paths, ``random``/``center`` or :class:`Method` s;
    ``metrics``: names for :func:`sycam.metrics.get_metric` or Metric instances. Batches of
    ``batch_size`` images are streamed through :meth:`Workbench.iter_batches` (one capture per
    batch for the merged request of every program that explains the same score; each further
    score, e.g. Finer-CAM's, adds one capture of its own). ``targets``: ``auto|label|pred|imagenet``
    (see :func:`sycam.workbench.target_mode`). ``params``: ``?param`` overrides per method label.

    With ``out`` the per-image values are saved after every batch under ``out/partial`` and the
    run resumes from them (``fresh`` discards them); at the end ``results.{csv,json,md}``,
    ``per_image.csv``, ``table.png`` and ``overlays.png`` (``figures``) are written. ``identity``
    (model, weights digest, data, split, limit, ...) enters the configuration fingerprint; by
    default it is the bundle's and dataset's names and the dataset length.
    """
    t_start = time.perf_counter()
    if not isinstance(bundle, ModelBundle):
        raise TypeError(f"evaluate: bundle must be a ModelBundle, got {type(bundle).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SycamError(f"batch size must be a positive integer, got {batch_size!r}")
    out_path = check_writable(out) if out is not None else None
    meths = [m for m in methods if isinstance(m, Method)]
    if len(meths) != len(methods):
        if meths:
            raise TypeError("evaluate: pass either method names or Method objects, not a mix")
        meths = resolve_methods([str(m) for m in methods], params)
    elif params:
        raise TypeError("evaluate: with Method objects give params on the Methods themselves")
    mets = resolve_metrics(metrics)
    n_total = len(dataset)
    if n_total == 0:
        raise SycamError(f"dataset {getattr(dataset, 'name', '?')} is empty")
    dev = torch.device(device) if device is not None else next(bundle.module.parameters()).device

    # compile every program now: layer errors and bad params surface before any work
    resolver = LayerResolver(bundle.module, bundle.default_layer, bundle.stage_layers)
    compiled: dict[str, CompiledProgram] = {}
    values_of_params: dict[str, dict[str, float]] = {}
    for m in meths:
        if m.kind != "program":
            continue
        assert m.program is not None
        compiled[m.name] = CompiledProgram(m.program, resolver)
        try:
            values_of_params[m.name] = compiled[m.name].param_values(m.params)
        except ValueError as err:
            raise SycamError(f"method {m.name!r}: {err}") from None
    groups: dict[str, list[str]] = {}
    for m in meths:
        if m.kind == "program":
            groups.setdefault(_group_key(m.score), []).append(m.name)  # type: ignore[arg-type]
    group_requests = {g: merge_requests(compiled[n].request for n in names) for g, names in groups.items()}
    group_names = list(group_requests)
    primary = group_requests[group_names[0]] if group_names else CaptureRequest(layers=())

    ident = dict(identity) if identity is not None else {
        "model": bundle.name, "data": getattr(dataset, "name", type(dataset).__name__), "n_images": n_total,
        "targets": targets}
    fp = make_fingerprint(meths, mets, ident, seed)
    key = _fingerprint_key(json.loads(json.dumps(fp, sort_keys=True, default=str)))
    saved: list[dict[str, Any]] = []
    if out_path is not None:
        prepare_out(out_path, fp, fresh)
        saved = _load_partials(out_path / _PARTIAL, key, n_total)["batches"]
    done = np.zeros(n_total, dtype=bool)
    for d in saved:
        done[d["indices"]] = True
    remaining = [int(i) for i in np.flatnonzero(~done)]
    images_resumed = int(done.sum())

    names = [m.name for m in meths]
    needs_mask = [k.name for k in mets if "mask" in k.needs]
    overlay_first = min(OVERLAY_ROWS, n_total)
    batches_computed = 0
    if remaining:
        wb = Workbench(bundle, _View(dataset, remaining), primary, batch_size=batch_size, targets=targets,
                       device=dev, progress=False)
        score_fn = wb.score_fn() if any("model" in k.needs for k in mets) else None
        n_batches = math.ceil(len(remaining) / batch_size)
        desc = "evaluate" + (f" (resuming: {images_resumed} images done)" if images_resumed else "")
        pbar = tqdm(total=n_batches, desc=desc, unit="batch", disable=not progress, leave=False)
        pos = 0
        cap_mark = 0.0  # wb.capture_seconds after the previous batch
        try:
            for batch, tgt, caps in wb.iter_batches():
                t0 = time.perf_counter()
                _sync(dev)  # the capture's GPU work belongs to the capture time
                wb.capture_seconds += time.perf_counter() - t0
                b = len(batch)
                idx = np.asarray(remaining[pos:pos + b], dtype=np.int64)
                pos += b
                if needs_mask and batch.masks is None:
                    raise SycamError(f"metric(s) {', '.join(needs_mask)} need ground-truth masks, but dataset "
                                     f"{getattr(dataset, 'name', '?')} has none (image {batch.ids[0] if batch.ids else idx[0]})")
                group_caps = {group_names[0]: caps} if group_names else {}
                for g in group_names[1:]:
                    _sync(dev)
                    t0 = time.perf_counter()
                    group_caps[g] = capture(bundle.module, wb.normalized(batch.images), tgt, group_requests[g])
                    _sync(dev)
                    wb.capture_seconds += time.perf_counter() - t0
                record = _run_batch(meths, mets, compiled, values_of_params, groups, group_caps, batch, tgt, idx,
                                    wb, score_fn, seed, dev, overlay_first)
                record["capture_seconds"] = np.float64(wb.capture_seconds - cap_mark)
                cap_mark = wb.capture_seconds
                record["fingerprint"] = np.asarray(key)
                saved.append(record)
                batches_computed += 1
                if out_path is not None:
                    buf = io.BytesIO()
                    np.savez(buf, **record)
                    _atomic_write(out_path / _PARTIAL / f"part-{int(idx[0]):08d}-{b:05d}.npz", buf.getvalue())
                pbar.update(1)
        finally:
            pbar.close()
    result = _assemble(saved, meths, mets, n_total, n_boot, seed)
    result.capture_groups = [groups[g] for g in group_names]
    result.skipped = [(str(f), str(r)) for f, r in getattr(dataset, "skipped", []) or []]
    result.batches_computed = batches_computed
    result.images_resumed = images_resumed
    result.config = fp
    result.wall_seconds = time.perf_counter() - t_start
    result.out = out_path
    if out_path is not None:
        overlay = _overlay_data(saved, dataset, names, overlay_first, bundle)
        _write_outputs(result, out_path, overlay, figures)
    return result


def _run_batch(meths: Sequence[Method], mets: Sequence[Metric], compiled: Mapping[str, CompiledProgram],
               pvalues: Mapping[str, Mapping[str, float]], groups: Mapping[str, list[str]],
               group_caps: Mapping[str, Captures], batch: Batch, tgt: Tensor, idx: np.ndarray, wb: Workbench,
               score_fn: Callable[[Tensor, Tensor], Tensor] | None, seed: int, dev: torch.device,
               overlay_first: int) -> dict[str, Any]:
    """Maps of every method and values of every metric for one batch, as arrays for an ``.npz``."""
    b = len(batch)
    size = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
    n_m, n_k = len(meths), len(mets)
    values = np.full((n_m, n_k, b), np.nan, dtype=np.float64)
    invalid = np.zeros((n_m, b), dtype=bool)
    failed = np.zeros((n_m, n_k, b), dtype=bool)
    method_s = np.zeros(n_m, dtype=np.float64)
    metric_s = np.zeros(n_k, dtype=np.float64)
    show = idx < overlay_first
    overlay_maps = np.full((n_m, int(show.sum()), *size), np.nan, dtype=np.float16)
    group_of = {name: g for g, names in groups.items() for name in names}
    for i, m in enumerate(meths):
        _sync(dev)
        t0 = time.perf_counter()
        if m.kind == "program":
            maps, good = _program_maps(compiled[m.name], group_caps[group_of[m.name]], pvalues[m.name])
            explain = wb.explain_fn(compiled[m.name], pvalues[m.name])
            explain_with = wb.explain_with(compiled[m.name], pvalues[m.name])
        else:
            maps = baseline_maps(m.name, b, size, batch.images.device, seed, [[int(j)] for j in idx])
            good = torch.ones(b, dtype=torch.bool, device=batch.images.device)
            explain = _baseline_explain(m.name, seed, int(idx[0]))
            explain_with = lambda _module, x, t, f=explain: f(x, t)  # noqa: E731 - a baseline ignores the model
        _sync(dev)
        method_s[i] = time.perf_counter() - t0
        good_np = good.cpu().numpy()
        invalid[i] = ~good_np
        if maps is None:
            continue
        sel = good.nonzero().flatten()
        if show.any():
            full = np.full((b, *size), np.nan, dtype=np.float16)
            full[good_np] = maps.detach().float().cpu().numpy().astype(np.float16)
            overlay_maps[i] = full[show]
        all_good = bool(good.all())
        images = batch.images if all_good else batch.images[sel]
        targets = tgt if all_good else tgt[sel]
        masks = batch.masks if (all_good or batch.masks is None) else batch.masks[sel]
        logits = None
        if any("logits" in k.needs for k in mets):  # the model's logits on the batch, from a capture
            caps_m = group_caps.get(group_of.get(m.name, ""), next(iter(group_caps.values()), None))
            logits = caps_m.logits if caps_m is not None else wb.logits(batch.images)
            logits = logits if all_good else logits[sel]
        for j, k in enumerate(mets):
            inputs = MetricInputs(
                maps=maps, images=images, targets=targets, masks=masks,
                score_fn=score_fn if "model" in k.needs else None,
                explain_fn=explain if "explainer" in k.needs else None,
                logits=logits if "logits" in k.needs else None,
                model=wb.bundle.module if "weights" in k.needs else None,
                explain_with=explain_with if "weights" in k.needs else None,
                stage_layers=wb.bundle.stage_layers or None,
            )
            _sync(dev)
            t0 = time.perf_counter()
            try:
                v = k(inputs).detach().double().cpu().numpy()
                values[i, j, good_np] = v
            except ProgramRuntimeError:
                failed[i, j, good_np] = True  # the explainer broke on perturbed copies: NaN, counted
            _sync(dev)
            metric_s[j] += time.perf_counter() - t0
    return {
        "indices": idx,
        "ids": np.asarray(list(batch.ids) if batch.ids else [str(j) for j in idx], dtype=str),
        "targets": tgt.detach().cpu().numpy().astype(np.int64),
        "values": values,
        "invalid": invalid,
        "failed": failed,
        "method_seconds": method_s,
        "metric_seconds": metric_s,
        "overlay_indices": idx[show],
        "overlay_maps": overlay_maps,
    }


def _baseline_explain(kind: str, seed: int, first: int) -> Callable[[Tensor, Tensor], Tensor]:
    """A baseline as an explainer of perturbed images (robustness): ``center`` is the same map
    again; ``random`` a fresh random map per call, seeded by the batch's first index and the call."""
    calls = [0]

    def fn(images01: Tensor, targets: Tensor) -> Tensor:
        n = int(images01.shape[0])
        calls[0] += 1
        keys = [[1, first, calls[0], j] for j in range(n)]
        return baseline_maps(kind, n, (int(images01.shape[-2]), int(images01.shape[-1])), images01.device, seed, keys)

    return fn


def _assemble(saved: Sequence[Mapping[str, Any]], meths: Sequence[Method], mets: Sequence[Metric], n_total: int,
              n_boot: int, seed: int) -> EvalResult:
    names = [m.name for m in meths]
    metric_names = [k.name for k in mets]
    n_m, n_k = len(names), len(metric_names)
    values = np.full((n_m, n_k, n_total), np.nan)
    invalid = np.zeros((n_m, n_total), dtype=bool)
    failed = np.zeros((n_m, n_k, n_total), dtype=bool)
    ids = [""] * n_total
    targets = np.full(n_total, -1, dtype=np.int64)
    have = np.zeros(n_total, dtype=bool)
    method_s = np.zeros(n_m)
    metric_s = np.zeros(n_k)
    capture_s = 0.0
    for d in saved:
        ix = d["indices"]
        values[:, :, ix] = d["values"]
        invalid[:, ix] = d["invalid"]
        failed[:, :, ix] = d["failed"]
        targets[ix] = d["targets"]
        for j, i in enumerate(ix.tolist()):
            ids[i] = str(d["ids"][j])
        have[ix] = True
        method_s += d["method_seconds"]
        metric_s += d["metric_seconds"]
        capture_s += float(d["capture_seconds"])
    if not have.all():  # cannot happen unless files vanished mid-run
        raise SycamError(f"{int((~have).sum())} images have no results; rerun the same command to compute them")
    summaries = []
    for i, m in enumerate(names):
        for j, k in enumerate(mets):
            mean, lo, hi, n_valid = bootstrap_ci(values[i, j], n_boot=n_boot, alpha=0.05, seed=seed)
            summaries.append(Summary(m, k.name, mean, lo, hi, n_valid, n_total - n_valid, bool(k.higher_is_better)))
    return EvalResult(
        methods=names, metrics=metric_names, higher_is_better={k.name: bool(k.higher_is_better) for k in mets},
        values={m: {k: values[i, j].copy() for j, k in enumerate(metric_names)} for i, m in enumerate(names)},
        indices=np.arange(n_total), ids=ids, targets=targets, summaries=summaries,
        invalid={m: int(invalid[i].sum()) for i, m in enumerate(names)},
        metric_failures={m: {k: int(failed[i, j].sum()) for j, k in enumerate(metric_names)} for i, m in enumerate(names)},
        method_seconds={m: float(method_s[i]) for i, m in enumerate(names)},
        metric_seconds={k: float(metric_s[j]) for j, k in enumerate(metric_names)},
        capture_seconds=capture_s, wall_seconds=0.0, capture_groups=[], skipped=[], batches_computed=0,
        images_resumed=0, config={},
    )


def _overlay_data(saved: Sequence[Mapping[str, Any]], dataset: Dataset, names: Sequence[str], first: int,
                  bundle: ModelBundle) -> dict[str, Any] | None:
    """Images, masks, maps and labels of the first ``first`` images, from the saved batches."""
    if first == 0:
        return None
    maps: dict[str, np.ndarray] = {}
    rows: dict[int, np.ndarray] = {}
    for d in saved:
        for r, gi in enumerate(d["overlay_indices"].tolist()):
            rows[int(gi)] = d["overlay_maps"][:, r]
    if sorted(rows) != list(range(first)):
        return None
    stack = np.stack([rows[i] for i in range(first)], axis=1).astype(np.float32)  # (methods, rows, H, W)
    stack = np.nan_to_num(stack, nan=0.0).clip(0.0, 1.0)  # invalid images: shown as an empty map
    maps = {n: stack[i] for i, n in enumerate(names)}
    samples = [dataset[i] for i in range(first)]
    images = torch.stack([s.image for s in samples]).float().cpu()
    masks = torch.stack([s.mask for s in samples]).cpu() if all(s.mask is not None for s in samples) else None
    targets = {}
    for d in saved:
        for j, gi in enumerate(d["indices"].tolist()):
            if gi < first:
                targets[gi] = int(d["targets"][j])
    names_of = bundle.class_names or getattr(dataset, "class_names", None)
    labels = []
    for i, s in enumerate(samples):
        t = targets.get(i, -1)
        cls = names_of[t] if names_of and 0 <= t < len(names_of) else f"class {t}"
        ident = s.id or str(i)
        # two short lines: the explained class, then the image id's tail (ids can be long paths)
        labels.append(f"{cls[:22]}\n{ident if len(ident) <= 22 else '…' + ident[-21:]}")
    return {"images": images, "masks": masks, "maps": maps, "labels": labels}


def default_out_dir(data: str, model: str) -> Path:
    """``sycam-out/evaluate-<data>-<model>`` with paths shortened to their last component."""
    def short(text: str) -> str:
        form, sep, path = text.partition(":")
        if sep and form in ("folder", "coco", "voc"):
            text = f"{form}-{Path(path.rstrip('/')).name}"
        elif sep:  # an import path package.module:factory
            text = path or form
        elif "/" in text or text.endswith((".pth", ".pt")):
            text = Path(text).stem
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"

    return Path("sycam-out") / f"evaluate-{short(data)}-{short(model)}"

