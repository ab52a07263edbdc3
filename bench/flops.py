"""Training compute of a recipe, counted with `torch.utils.flop_counter` (no data or training needed).

    python bench/flops.py [--preset default] [--set section.key=value ...] [--train-images 8683] [--peak 106]

Counts the FLOPs of one training step (forward and backward; fast-FGSM's extra pass when the recipe is adversarial)
per image at each side the recipe trains at (progressive resizing), sums them over the epochs, multiplies by the
training images, adds the optimizer's matrix work (Muon's Newton-Schulz iterations), and prints the total in TFLOP
beside the time it would take at a given sustained rate (`--peak`, GFLOP/s: 106 is the fp32 matmul peak of a
2-core AVX2 machine, 189 of a 2-core AVX-512 BF16 machine in fp32, 419 in bf16). 8,683 is the training part of
the AHE64 train split (seed 0).
"""

from __future__ import annotations

import argparse

from heritagelens.config import preset
from heritagelens.train.flops import training_flops


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--train-images", type=int, default=8683)
    p.add_argument("--peak", type=float, nargs="+", default=[106.0, 189.0, 419.0])
    a = p.parse_args()
    cfg = preset(a.preset).override(a.set)
    f = training_flops(cfg, a.train_images)
    total, sides = f["tflop"] * 1e12, f["epochs_per_side"]
    print(f"recipe: --preset {a.preset} {' '.join('--set ' + s for s in a.set)}")
    print(f"model widths {cfg.model.widths} depths {cfg.model.depths} kernel {cfg.model.kernel_size}")
    print(f"per training image: {f['gflop_per_image']:.3f} GFLOP at 64 px (forward + backward)")
    if list(sides) != [64]:
        print("epochs at each side: " + ", ".join(f"{n} at {side} px" for side, n in sides.items()))
    if f["optimizer_gflop_per_step"]:
        print(f"Muon's orthogonalization: {f['optimizer_gflop_per_step']:.2f} GFLOP per step, {f['steps']:,} steps")
    print(f"{cfg.train.epochs} epochs x {a.train_images:,} images: {f['tflop']:.1f} TFLOP of training")
    for peak in a.peak:
        print(f"  at {peak:g} GFLOP/s sustained: {total / peak / 1e9 / 60:.1f} minutes")


if __name__ == "__main__":
    main()
