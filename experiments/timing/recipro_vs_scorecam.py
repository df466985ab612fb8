"""Time per image of Recipro-CAM against Score-CAM on MobileNetV2 (real ImageNet weights), CPU.

    OMP_NUM_THREADS=2 PYTHONPATH=. python experiments/timing/recipro_vs_scorecam.py [--images 4] [--repeats 3]

Both programs run through :class:`sycam.Explainer` at ``features.18`` (1280 channels, 7×7 at
224×224) on the first ``--images`` images of ``../shared/data/imagenet-val-dev``, one image per
call (as an explanation is asked for), explained for the image's label. Each image is timed
``--repeats`` times after one warm-up call; the table gives the median over all calls (min–max)
and writes ``experiments/timing/recipro_vs_scorecam.md``. Recipro-CAM runs one forward per image
(the head once on the image, the tail on its 49 mosaic maps); Score-CAM runs one masked forward
per non-constant channel (on the folded channels-last copy).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from sycam import Explainer

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SYCAM_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
DATA = SHARED / "data" / "imagenet-val-dev"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [line.split(",") for line in (DATA / "manifest.csv").read_text(encoding="utf-8").splitlines()[1:n + 1]]
    xs = []
    for row in rows:
        with Image.open(DATA / row[0]) as im:
            rgb = np.asarray(im.convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255.0
        xs.append((torch.from_numpy(rgb.copy()).permute(2, 0, 1) - MEAN) / STD)
    return torch.stack(xs), torch.tensor([int(r[1]) for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("recipro_vs_scorecam.md"))
    args = ap.parse_args()
    for path in (WEIGHTS, DATA):
        if not path.exists():
            raise SystemExit(f"not found: {path} (set SYCAM_SHARED)")
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    model.eval()
    x, labels = images(args.images)
    times: dict[str, list[float]] = {}
    for name in ("reciprocam", "scorecam"):
        explain = Explainer(model, name, layers="features.18")
        explain(x[:1], labels[:1])  # warm-up (builds the folded copy)
        times[name] = []
        for i in range(len(x)):
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                explain(x[i:i + 1], labels[i:i + 1])
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        "# Recipro-CAM vs Score-CAM, time per image (MobileNetV2, features.18, 224×224, CPU)",
        "",
        f"`python experiments/timing/recipro_vs_scorecam.py --images {args.images} --repeats {args.repeats}`: "
        f"{args.images} images of imagenet-val-dev, one per call, {args.repeats} timed calls each after a warm-up; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end (the machine is shared).",
        "",
        "| method | median s / image | min–max | ratio to Recipro-CAM |",
        "| --- | --- | --- | --- |",
    ]
    for name, label in (("reciprocam", "Recipro-CAM"), ("scorecam", "Score-CAM")):
        v = times[name]
        lines.append(f"| {label} | {med[name]:.3f} | {min(v):.3f}–{max(v):.3f} | {med[name] / med['reciprocam']:.1f}× |")
    lines += ["", f"Score-CAM / Recipro-CAM: **{med['scorecam'] / med['reciprocam']:.0f}×** (the paper reports ~148× "
              "on its own setup)."]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
