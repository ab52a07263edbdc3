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

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from heritagelens.config import Config, preset
from heritagelens.models import build_model
from heritagelens.optim import orthogonalize_flops
from heritagelens.train import epoch_side


def step_flops(cfg: Config, side: int = 64, batch: int = 8, classes: int = 10) -> float:
    """FLOPs per image of one training step of `cfg`'s model at `side` px (the attack's pass included)."""
    torch.manual_seed(0)
    model = build_model(cfg.model, classes)
    x = torch.rand(batch, 3, side, side) * 255
    y = torch.randint(0, classes, (batch,))
    passes = 2 if cfg.train.adv_eps > 0 else 1  # fast FGSM: one more forward and backward per step
    with FlopCounterMode(display=False) as fc:
        for _ in range(passes):
            nn.functional.cross_entropy(model(x.requires_grad_(passes == 2)), y).backward()
    return fc.get_total_flops() / batch


def optimizer_flops(cfg: Config, classes: int = 10) -> float:
    """FLOPs of one optimizer step beyond the elementwise: Muon's Newton-Schulz iterations on each conv filter bank."""
    if cfg.train.optimizer != "muon":
        return 0.0
    model = build_model(cfg.model, classes)
    return float(sum(orthogonalize_flops(p.shape) for p in model.parameters() if p.ndim == 4))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--train-images", type=int, default=8683)
    p.add_argument("--peak", type=float, nargs="+", default=[106.0, 189.0, 419.0])
    a = p.parse_args()
    cfg = preset(a.preset).override(a.set)
    tc = cfg.train
    sides = [epoch_side(e, tc.epochs, tc) for e in range(tc.epochs)]
    per_side = {side: step_flops(cfg, side) for side in set(sides)}
    per_image = per_side[64] if 64 in per_side else step_flops(cfg)
    total = sum(per_side[side] for side in sides) * a.train_images
    steps = tc.epochs * -(-a.train_images // tc.batch_size)
    total += optimizer_flops(cfg) * steps
    print(f"recipe: --preset {a.preset} {' '.join('--set ' + s for s in a.set)}")
    print(f"model widths {cfg.model.widths} depths {cfg.model.depths} kernel {cfg.model.kernel_size}")
    print(f"per training image: {per_image / 1e9:.3f} GFLOP (forward + backward)")
    if any(side < 64 for side in sides):
        print("epochs at each side: " + ", ".join(f"{sides.count(s)} at {s} px" for s in sorted(per_side)))
        print(f"  {sum(per_side[s] for s in sides) / per_image:.2f} epochs' worth at 64 px")
    if optimizer_flops(cfg):
        print(f"Muon's orthogonalization: {optimizer_flops(cfg) / 1e9:.2f} GFLOP per step, {steps:,} steps")
    print(f"{tc.epochs} epochs x {a.train_images:,} images: {total / 1e12:.1f} TFLOP of training")
    for peak in a.peak:
        print(f"  at {peak:g} GFLOP/s sustained: {total / peak / 1e9 / 60:.1f} minutes")


if __name__ == "__main__":
    main()
