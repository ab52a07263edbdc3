"""How the outside photos differ from the train split: brightness, contrast, saturation, sharpness, grey images.

    AHE_DATA=../shared/data/ahe64 python bench/outside_stats.py

Means over the images (pixel values 0..1): `bright` the mean, `contrast` the standard deviation of the grey image,
`sat` (max - min) / max per pixel, `sharp` the mean absolute Laplacian, `gray` the share of grey images; overall, then
per class (train / outside).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from heritagelens.data import dataset


def stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image (N,) of uint8 images (N, 3, H, W)."""
    x = x.float() / 255
    mx, mn = x.max(1).values, x.min(1).values
    sat = ((mx - mn) / (mx + 1e-6)).mean((1, 2))
    lap = x[:, :, 1:-1, 1:-1] * 4 - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1] - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:]
    return {
        "bright": x.mean((1, 2, 3)),
        "contrast": x.mean(1).std((1, 2)),
        "sat": sat,
        "sharp": lap.abs().mean((1, 2, 3)),
        "gray": (sat < 0.02).float(),
    }


def main() -> None:
    root = Path(os.environ.get("AHE_DATA", "data/ahe64"))
    train = dataset.load_split(root, "train")
    outside = dataset.load_folder(root.parent / f"{root.name}-outside", train.classes)
    a, b = stats(train.images), stats(outside.images)
    for k in a:
        print(f"{k:9s} train {a[k].mean():.4f} ±{a[k].std():.4f}   outside {b[k].mean():.4f} ±{b[k].std():.4f}")
    for c, name in enumerate(train.classes):
        ia, ib = train.labels == c, outside.labels == c
        print(name, " ".join(f"{k}:{a[k][ia].mean():.3f}/{b[k][ib].mean():.3f}" for k in ("bright", "sat", "contrast")))


if __name__ == "__main__":
    main()
