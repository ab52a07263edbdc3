"""Training compute of a recipe, counted with `torch.utils.flop_counter`: what the speed targets are stated in.

One training step's FLOPs per image (forward and backward; fast FGSM's extra pass when the recipe is adversarial) at
each side the recipe trains at (progressive resizing), summed over the epochs and the training images, plus the
optimizer's matrix work (Muon's Newton-Schulz iterations). Counted on a few random images, so no data is needed.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import IMAGE_SIZE, Config
from ..model.network import build_model
from .loop import epoch_side
from .optim import orthogonalize_flops


def step_flops(cfg: Config, side: int = IMAGE_SIZE, classes: int = 10, batch: int = 8) -> float:
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
    return float(sum(orthogonalize_flops(p.shape, cfg.train.muon_ns_steps) for p in model.parameters() if p.ndim == 4))


def training_flops(cfg: Config, images: int, classes: int = 10) -> dict:
    """The training compute of `cfg` over `images` training images: `tflop` in all, `gflop_per_image` at full size,
    `epochs_per_side` (side -> epochs), `optimizer_gflop_per_step` and `steps`."""
    tc = cfg.train
    sides = [epoch_side(e, tc.epochs, tc) for e in range(tc.epochs)]
    per_side = {side: step_flops(cfg, side, classes) for side in sorted(set(sides) | {IMAGE_SIZE})}
    steps, per_step = tc.epochs * math.ceil(images / tc.batch_size), optimizer_flops(cfg, classes)
    total = sum(per_side[side] for side in sides) * images + per_step * steps
    return {
        "tflop": _significant(total / 1e12),
        "gflop_per_image": _significant(per_side[IMAGE_SIZE] / 1e9),
        "epochs_per_side": {side: sides.count(side) for side in sorted(set(sides))},
        "optimizer_gflop_per_step": _significant(per_step / 1e9),
        "steps": steps,
        "counted_with": "torch.utils.flop_counter",
    }


def _significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")
