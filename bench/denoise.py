"""Denoising benchmark: DnCNN on Gaussian noise (sigma 25/255), PSNR on held-out images.

Images are scikit-image's bundled samples (nothing downloads), converted to grayscale in [0, 1]:
training patches come from one set of images, PSNR is measured on whole held-out images with a
fixed noise draw. Rows, all with the same total epochs (an epoch = one pass over the patch set):
  unpruned          DnCNN trained from scratch;
  scratch:METHOD    METHOD's plan on the untrained model (scratch:uniform = uniform width at the
                    budget), the slim model trained from scratch;
  METHOD            a training METHOD (dhp): search from scratch until its plan is ready, then
                    train the slim model for the remaining epochs.

    .venv/bin/python bench/denoise.py                    # CPU spec: DnCNN-17 at 32 channels (the paper: 64), 32x32 patches
    .venv/bin/python bench/denoise.py --channels 64 --epochs 50 --patches 20000   # closer to the paper: a GPU run
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import graphprune
from graphprune import models

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                "grass", "gravel", "brick", "page", "clock"]
TEST_IMAGES = ["camera", "coins", "moon"]
SIGMA = 25 / 255

# Options of the training methods for the short CPU schedule (see bench/cifar.py).
METHOD_OPTIONS: dict[str, dict] = {
    "dhp": dict(reg=5.0),
}


def grayscale(name: str) -> np.ndarray:
    from skimage import color, data, util

    image = getattr(data, name)()
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
    return util.img_as_float32(image)


def patches(images: list[np.ndarray], size: int, count: int, seed: int) -> torch.Tensor:
    """``count`` random ``size`` x ``size`` crops, random flips, spread evenly over ``images``."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, 1, size, size), dtype=np.float32)
    for i in range(count):
        image = images[i % len(images)]
        y, x = rng.integers(0, image.shape[0] - size + 1), rng.integers(0, image.shape[1] - size + 1)
        crop = image[y:y + size, x:x + size]
        out[i, 0] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return torch.from_numpy(out)


class NoisyBatches:
    """(noisy, clean) batches with fresh noise each epoch, drawn from a seeded generator."""

    def __init__(self, clean: torch.Tensor, batch_size: int, seed: int):
        self.loader = DataLoader(TensorDataset(clean), batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
        self.noise = torch.Generator().manual_seed(seed + 1)

    def __iter__(self):
        for (clean,) in self.loader:
            yield clean + SIGMA * torch.randn(clean.shape, generator=self.noise), clean

    def __len__(self) -> int:
        return len(self.loader)


def psnr(model: torch.nn.Module, images: list[np.ndarray], seed: int = 1234) -> float:
    """Mean PSNR (dB) over whole images, one fixed noise draw each, output clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    values = []
    with torch.no_grad():
        for image in images:
            clean = torch.from_numpy(image)[None, None]
            noisy = clean + SIGMA * torch.randn(clean.shape, generator=g)
            mse = float(F.mse_loss(model(noisy).clamp(0, 1), clean))
            values.append(10 * math.log10(1 / mse))
    return statistics.mean(values)


def run_row(row: str, spec: argparse.Namespace, seed: int, train_patches: torch.Tensor, test: list[np.ndarray]) -> dict:
    torch.manual_seed(seed)
    model = models.DnCNN(depth=spec.depth, channels=spec.channels)
    example = torch.randn(2, 1, spec.patch, spec.patch)
    full = graphprune.analyze(model, example)
    data = NoisyBatches(train_patches, spec.batch, seed)
    start = time.perf_counter()
    plan, extra = None, {}
    if row == "unpruned" or row.startswith("scratch:"):
        final = model
        if row.startswith("scratch:"):
            result = graphprune.apply(model, row.split(":", 1)[1], spec.budget, example, analysis=full)
            final, plan = result.model, result.plan
        optimizer = torch.optim.Adam(final.parameters(), lr=spec.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, spec.epochs)
        graphprune.fit(final, data, F.mse_loss, spec.epochs, optimizer=optimizer, scheduler=scheduler, seed=seed,
                       description=f"{row} seed {seed}")
    else:
        result = graphprune.apply(model, row, spec.budget, example, train_data=data, loss_fn=F.mse_loss,
                                  epochs=spec.epochs, lr=spec.lr, optimizer=torch.optim.Adam, analysis=full,
                                  **METHOD_OPTIONS.get(row, {}))
        final, plan = result.model, result.plan
        extra = {"budget_trajectory": list(getattr(result.method, "trajectory", []))}
    counts = plan.counts() if plan else None
    return {
        "row": row, "seed": seed, "psnr": psnr(final.cpu(), test),
        "macs_ratio": full.cost.macs(counts) / full.cost.macs(), "params_ratio": full.cost.params(counts) / full.cost.params(),
        "seconds": time.perf_counter() - start, **extra,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="unpruned,scratch:uniform,dhp")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--depth", type=int, default=17)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--patches", type=int, default=1600, help="training patches (one epoch)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "denoise"))
    spec = p.parse_args()
    rows, seeds = spec.rows.split(","), [int(s) for s in spec.seeds.split(",")]
    train_patches = patches([grayscale(n) for n in TRAIN_IMAGES], spec.patch, spec.patches, seed=0)
    test = [grayscale(n) for n in TEST_IMAGES]
    results = []
    start = time.perf_counter()
    for seed in seeds:
        for row in rows:
            results.append(run_row(row, spec, seed, train_patches, test))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "budget_trajectory"}), flush=True)
    device = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    command = (f"python bench/denoise.py --rows {spec.rows} --budget {spec.budget} --epochs {spec.epochs} --seeds {spec.seeds} "
               f"--depth {spec.depth} --channels {spec.channels} --patch {spec.patch} --patches {spec.patches} --batch {spec.batch}")
    lines = [f"# Denoising: DnCNN-{spec.depth} ({spec.channels} channels), sigma 25, MACs budget {spec.budget}", "",
             f"Command: `{command}`; device: {device}; train images: {', '.join(TRAIN_IMAGES)}; "
             f"PSNR on whole held-out images: {', '.join(TEST_IMAGES)}.", "",
             "| row | PSNR dB (mean ± std) | MACs ratio | params ratio | minutes |", "|---|---|---|---|---|"]
    for row in rows:
        rs = [r for r in results if r["row"] == row]
        values = [r["psnr"] for r in rs]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {row} | {statistics.mean(values):.2f} ± {std:.2f} | {statistics.mean(r['macs_ratio'] for r in rs):.3f} | "
                     f"{statistics.mean(r['params_ratio'] for r in rs):.3f} | {statistics.mean(r['seconds'] for r in rs) / 60:.1f} |")
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"command": command, "device": device, "results": results,
                                                  "minutes": (time.perf_counter() - start) / 60}, indent=2))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
