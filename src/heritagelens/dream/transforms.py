"""Transforms an image must survive while it is optimized: random jitter, scale and rotation, blur."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def jitter(d: int) -> Transform:
    """Shift by up to `d` px in x and y (wrapping round), the same shift for the whole batch."""

    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        dy, dx = (int(v) for v in torch.randint(-d, d + 1, (2,), generator=g))
        return torch.roll(x, (dy, dx), (2, 3))

    return t


def random_affine(scales: Sequence[float] = (1.0,), degrees: Sequence[float] = (0.0,)) -> Transform:
    """Scale by one of `scales` and rotate by one of `degrees` about the centre (bilinear, reflection at the edges)."""

    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = scales[int(torch.randint(len(scales), (1,), generator=g))]
        a = math.radians(degrees[int(torch.randint(len(degrees), (1,), generator=g))])
        theta = torch.tensor([[math.cos(a) / s, -math.sin(a) / s, 0.0], [math.sin(a) / s, math.cos(a) / s, 0.0]])
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3).to(x), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    return t


def compose(transforms: Sequence[Transform]) -> Transform:
    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for f in transforms:
            x = f(x, g)
        return x

    return t
