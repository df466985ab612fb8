"""The built-in CNN: a small four-stage network trained by sycam on the built-in benchmark.

Architecture (input 3×64×64, ~0.29 M parameters, ~14 M multiply-adds per image)::

    stage1: conv1 3→16 /2, bn1, relu1, conv2 16→16, bn2, relu2      → 16×32×32
    stage2: conv1 16→32 /2, bn1, relu1, conv2 32→32, bn2, relu2     → 32×16×16
    stage3: conv1 32→64 /2, ...                                      → 64×8×8
    stage4: conv1 64→128 /2, ...                                     → 128×4×4   (default CAM layer)
    pool (global average) → head (linear 128→8)

Every conv is 3×3 without bias (BatchNorm follows). ReLUs are *not* in-place, so that a hook on
any module sees the value that module produced (in-place ReLUs would overwrite BatchNorm outputs
after capture). The global-average-pool + linear head makes the original CAM well defined.

Weights are not shipped: :func:`load_builtin_model` trains the network on first use (about a
minute on two idle CPU cores; 8000 train-split images with indices from 1,000,000, disjoint from
the benchmark's own train/val/test samples) and caches the weights under ``$SYCAM_HOME`` (default
``$XDG_CACHE_HOME/sycam`` or ``~/.cache/sycam``) in a file named by a hash of the recipe
(architecture, data generator version and parameters, hyper-parameters, seed), so any change
of recipe retrains instead of loading stale weights.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from sycam.data.builtin import GENERATOR_VERSION, SHAPES, make_batch
from sycam.files import atomic_write
from sycam.models.bundle import ModelBundle, Normalize

__all__ = [
    "ARCH_VERSION",
    "BuiltinCNN",
    "BuiltinRecipe",
    "DEFAULT_RECIPE",
    "NORMALIZE",
    "builtin_cache_path",
    "evaluate_builtin",
    "load_builtin_model",
    "recipe_key",
    "sycam_home",
    "train_builtin",
]

#: Bump when ``BuiltinCNN.forward`` changes in a way its ``repr`` does not show.
ARCH_VERSION = 1


class _Stage(nn.Sequential):
    """One resolution stage: a stride-2 conv that halves the grid, then a stride-1 conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                bn1=nn.BatchNorm2d(c_out),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False),
                bn2=nn.BatchNorm2d(c_out),
                relu2=nn.ReLU(),
            )
        )


class BuiltinCNN(nn.Module):
    """Four (or ``len(channels)``) resolution stages, global average pooling and a linear head.

    Module names: ``stage{k}.conv1``, ``stage{k}.bn1``, ``stage{k}.relu1``, ``stage{k}.conv2``,
    ``stage{k}.bn2``, ``stage{k}.relu2`` (k = 1..n), ``pool``, ``head``. Stage k's output grid is
    input / 2^k (64 → 32 → 16 → 8 → 4).
    """

    def __init__(self, num_classes: int = len(SHAPES), channels: tuple[int, ...] = (16, 32, 64, 128), in_channels: int = 3) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"BuiltinCNN: num_classes must be ≥ 2 (got {num_classes})")
        if not channels or any(int(c) < 1 for c in channels):
            raise ValueError(f"BuiltinCNN: channels must be a non-empty tuple of positive ints (got {channels!r})")
        self.channels = tuple(int(c) for c in channels)
        self.in_channels = in_channels
        c_in = in_channels
        for k, c in enumerate(self.channels, start=1):
            self.add_module(f"stage{k}", _Stage(c_in, c))
            c_in = c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    @property
    def stage_names(self) -> list[str]:
        """Module names of the stages, shallow to deep (each is its stage's last output)."""
        return [f"stage{k}" for k in range(1, len(self.channels) + 1)]

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes) of normalised images x (B, in_channels, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"BuiltinCNN: expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.head(torch.flatten(self.pool(x), 1))


@dataclass(frozen=True)
class BuiltinRecipe:
    """Everything that determines the trained weights (the cache key hashes all of it).

    Training: ``epochs`` passes over ``train_n`` images of the train split, indices
    ``train_offset …`` (far beyond ``BuiltinBenchmark("train")``'s 6000, so the images sycam
    searches programs on are unseen by the network, as for any model explained on new data);
    generated once and kept in memory as float16; no augmentation (flips would show poses the
    benchmark never has);
    AdamW with a one-cycle learning-rate schedule peaking at ``lr``, cross-entropy with
    ``label_smoothing``.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    size: int = 64
    data_seed: int = 0
    train_offset: int = 1_000_000
    train_n: int = 8000
    test_n: int = 512
    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "size": self.size >= 32,
            "train_n": self.train_n >= self.batch_size,
            "train_offset": self.train_offset >= 0,
            "test_n": self.test_n >= 1,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 2,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"BuiltinRecipe: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")


DEFAULT_RECIPE = BuiltinRecipe()
#: the benchmark's measured statistics (mean ≈ 0.50, std ≈ 0.25 per channel)
NORMALIZE = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def recipe_key(recipe: BuiltinRecipe = DEFAULT_RECIPE) -> str:
    """A short hash of the recipe, the architecture (its ``repr``) and the code versions."""
    arch = BuiltinCNN(num_classes=len(SHAPES), channels=recipe.channels)
    payload = {
        "recipe": asdict(recipe),
        "arch": repr(arch),
        "arch_version": ARCH_VERSION,
        "generator_version": GENERATOR_VERSION,
        "classes": list(SHAPES),
        "normalize": {"mean": NORMALIZE.mean, "std": NORMALIZE.std},
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sycam_home() -> Path:
    """sycam's cache folder: ``$SYCAM_HOME``, else ``$XDG_CACHE_HOME/sycam``, else ``~/.cache/sycam``."""
    env = os.environ.get("SYCAM_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sycam"


def builtin_cache_path(recipe: BuiltinRecipe = DEFAULT_RECIPE) -> Path:
    """Where the weights trained with ``recipe`` are cached (the file may not exist yet)."""
    return sycam_home() / "models" / f"builtin_cnn-{recipe_key(recipe)}.pt"


_MAX_THREADS = 8  # this network is too small to gain from more intra-op threads


def _available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one), capped."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, _MAX_THREADS))


@contextlib.contextmanager
def _num_threads(n: int) -> Iterator[None]:
    """Temporarily use n intra-op threads (restored afterwards, so callers keep their setting)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def evaluate_builtin(
    model: nn.Module, split: str = "test", n: int = 512, size: int = 64, seed: int = 0, batch_size: int = 256
) -> float:
    """Top-1 accuracy of ``model`` (expects normalised input) on the first n images of a split."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for lo in range(0, n, batch_size):
        b = make_batch(split, range(lo, min(n, lo + batch_size)), size=size, seed=seed)
        logits = model(NORMALIZE(b.images.to(device)))
        correct += int((logits.argmax(1).cpu() == b.labels).sum())
    model.train(was_training)
    return correct / n


def train_builtin(
    recipe: BuiltinRecipe = DEFAULT_RECIPE,
    *,
    progress: bool = True,
    device: torch.device | str | None = None,
    threads: int | None = None,
) -> tuple[BuiltinCNN, dict[str, float]]:
    """Train a :class:`BuiltinCNN` from scratch with ``recipe``; return it (eval mode) and metrics.

    Deterministic for a given recipe, device and thread count (seeded init and shuffling; the
    caller's global RNG state and thread setting are restored). ``threads`` defaults to the CPUs
    this process may use, capped at 8. Metrics: ``test_accuracy`` (first ``test_n`` test images),
    ``seconds`` (wall, total), ``cpu_seconds``, ``data_seconds``, ``train_seconds``, ``final_loss``,
    ``threads``.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    n_threads = threads if threads is not None else _available_cpus()
    if n_threads < 1:
        raise ValueError(f"train_builtin: threads must be ≥ 1 (got {threads})")
    from tqdm.auto import tqdm  # local: only training needs it

    t0, c0 = time.perf_counter(), time.process_time()
    with _num_threads(n_threads), torch.random.fork_rng(devices=[]):
        # ---- data: generated once; float16 halves the memory (8000 images ≈ 200 MB)
        chunk = 500
        xs, ys = [], []
        bar = tqdm(total=recipe.train_n, desc="sycam builtin: generating data", unit="img", disable=not progress, leave=False)
        for lo in range(0, recipe.train_n, chunk):
            idx = range(recipe.train_offset + lo, recipe.train_offset + min(recipe.train_n, lo + chunk))
            b = make_batch("train", idx, size=recipe.size, seed=recipe.data_seed)
            xs.append(NORMALIZE(b.images).half())
            ys.append(b.labels)
            bar.update(len(b))
        bar.close()
        x_train, y_train = torch.cat(xs), torch.cat(ys)
        del xs, ys
        t_data = time.perf_counter() - t0

        # ---- model and optimiser
        torch.random.default_generator.manual_seed(recipe.seed)  # CPU init; CUDA RNGs untouched
        model = BuiltinCNN(num_classes=len(SHAPES), channels=recipe.channels).to(dev)
        decay = [p for n, p in model.named_parameters() if p.dim() > 1]
        no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]  # BN and biases
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=recipe.lr,
        )
        steps_per_epoch = recipe.train_n // recipe.batch_size  # drop the last partial batch
        total = steps_per_epoch * recipe.epochs
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total, pct_start=0.25)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        g = torch.Generator().manual_seed(recipe.seed)

        model.train()
        bar = tqdm(total=total, desc="sycam builtin: training CNN (first run only)", unit="step", disable=not progress)
        ema = math.nan
        for _epoch in range(recipe.epochs):
            perm = torch.randperm(recipe.train_n, generator=g)
            for s in range(steps_per_epoch):
                idx = perm[s * recipe.batch_size : (s + 1) * recipe.batch_size]
                xb = x_train[idx].to(dev).float()
                yb = y_train[idx].to(dev)
                loss = loss_fn(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                lv = loss.item()
                ema = lv if math.isnan(ema) else 0.95 * ema + 0.05 * lv
                bar.set_postfix(loss=f"{ema:.3f}", refresh=False)
                bar.update(1)
        bar.close()
        t_train = time.perf_counter() - t0 - t_data
        del x_train, y_train
        model.eval()
        acc = evaluate_builtin(model, "test", recipe.test_n, recipe.size, recipe.data_seed)
    metrics = {
        "test_accuracy": acc,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,  # all threads; ≈ seconds × threads when idle
        "data_seconds": t_data,
        "train_seconds": t_train,
        "final_loss": ema,
        "threads": float(n_threads),
    }
    return model, metrics


def _atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically: readers never see a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX), so that concurrent first runs train only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: atomic writes still keep the cache intact
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _load_cached(path: Path, key: str, recipe: BuiltinRecipe, warn: bool = True) -> BuiltinCNN | None:
    """The cached model, or None (with a warning) where the file is missing, foreign or damaged."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("key") != key:
            raise ValueError(f"cache key mismatch (expected {key})")
        model = BuiltinCNN(num_classes=len(SHAPES), channels=recipe.channels)
        model.load_state_dict(blob["state_dict"])
    except Exception as e:  # noqa: BLE001 - any damage means: retrain
        if warn:
            warnings.warn(f"sycam: ignoring unusable cached weights {path}: {e}; retraining", stacklevel=3)
        return None
    return model


def load_builtin_model(
    device: torch.device | str | None = None,
    progress: bool = True,
    recipe: BuiltinRecipe = DEFAULT_RECIPE,
) -> ModelBundle:
    """The trained built-in CNN as a :class:`ModelBundle` (eval mode, on ``device``).

    Loads the cached weights for ``recipe`` (see :func:`builtin_cache_path`), training and
    caching them first where absent (about a minute on two CPU cores, with a progress bar).
    Bundle: ``normalize`` = :data:`NORMALIZE` (mean 0.5, std 0.25), ``input_size`` (64, 64),
    ``default_layer`` = ``"stage4"`` (last stage, 4×4), ``stage_layers`` = ``stage1..stage4``.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    path = builtin_cache_path(recipe)
    key = recipe_key(recipe)
    model = _load_cached(path, key, recipe)
    if model is None:
        with _file_lock(path.with_name(path.name + ".lock")):
            # another process may have trained while we waited for the lock
            model = _load_cached(path, key, recipe, warn=False)
            if model is None:
                model, metrics = train_builtin(recipe, progress=progress)
                state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
                _atomic_save({"key": key, "recipe": asdict(recipe), "metrics": metrics, "state_dict": state}, path)
                if progress:
                    print(
                        f"sycam: built-in CNN trained in {metrics['seconds']:.0f} s, test accuracy "
                        f"{metrics['test_accuracy']:.1%}; cached at {path}",
                        file=sys.stderr,
                        flush=True,
                    )
                if metrics["test_accuracy"] < 0.95 and recipe == DEFAULT_RECIPE:
                    warnings.warn(
                        f"sycam: the built-in CNN reached only {metrics['test_accuracy']:.1%} test accuracy "
                        "(expected ≥ 95 %); explanations of it will be less meaningful",
                        stacklevel=2,
                    )
    model = model.to(dev).eval()
    return ModelBundle(
        module=model,
        normalize=NORMALIZE,
        input_size=(recipe.size, recipe.size),
        num_classes=len(SHAPES),
        default_layer=model.stage_names[-1],
        name="builtin",
        class_names=list(SHAPES),
        stage_layers=model.stage_names,
    )

