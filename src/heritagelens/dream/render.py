"""The render loop: optimize a parameterization so that the model's response to its transformed image maximizes an
objective; class images and channel images as one batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import DreamConfig
from ..data.images import gaussian_blur
from ..model.precision import for_model
from .objectives import Objective, Recording, class_logit, recording, regularized
from .param import ImageStats, Parameterization, make_param
from .recipes import DreamError
from .transforms import Transform, compose, jitter, random_affine


@dataclass
class RenderResult:
    images: torch.Tensor
    """(B, 3, H, W) uint8."""
    scores: list[float]
    """The objective's mean over the batch at every step."""


def render(
    model: nn.Module,
    objective: Objective,
    param: Parameterization,
    transform: Transform | None = None,
    steps: int = 200,
    lr: float = 0.05,
    blur_every: int = 0,
    blur_sigma: float = 0.0,
    seed: int = 0,
    precision: str = "auto",
) -> RenderResult:
    """Maximize `objective` over `param`'s images by Adam, each step through a random `transform`.

    The model is used in eval mode with its weights frozen for the duration and left as it was. Stops with
    `DreamError` if the objective becomes NaN or infinite. The model runs in the mode `precision` resolves to
    (`heritagelens.model.precision`: bfloat16 autocast only where that is fastest; the parameters and the optimizer stay
    in float32).
    """
    if steps < 1 or not lr > 0:
        raise DreamError(f"steps must be at least 1 and lr positive (got steps={steps}, lr={lr})")
    g = torch.Generator().manual_seed(seed)
    amp = for_model(model, precision)
    opt = torch.optim.Adam(param.params, lr=lr)
    transform = transform or (lambda x, g: x)
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    scores = []
    try:
        with recording(model, objective.layers) as acts:
            for step in range(steps):
                images = param.image()
                with amp.autocast():
                    logits = model(amp.input(transform(images, g))).float()
                score = objective(Recording(images, logits, acts))
                if not torch.isfinite(score).all():
                    raise DreamError(f"the optimization diverged at step {step} (objective {objective.name} is NaN)")
                opt.zero_grad(set_to_none=True)
                (-score.sum()).backward()
                opt.step()
                scores.append(score.mean().item())
                if blur_every and (step + 1) % blur_every == 0:
                    _blur_in_place(param, blur_sigma)
    finally:
        model.train(was_training)
        for p, r in zip(model.parameters(), grads):
            p.requires_grad_(r)
    with torch.no_grad():
        return RenderResult(param.image().round().clamp(0, 255).to(torch.uint8), scores)


def _blur_in_place(param: Parameterization, sigma: float) -> None:
    """Yosinski et al.'s periodic Gaussian blur, applied to pixel parameters (other parameterizations are smooth)."""
    with torch.no_grad():
        for p in param.params:
            if p.ndim == 4:
                p.copy_(gaussian_blur(p, sigma))


def dream(
    model: nn.Module,
    objective: Objective,
    groups: Sequence[int],
    samples: int,
    cfg: DreamConfig,
    stats: ImageStats,
    seed: int = 0,
    init: torch.Tensor | None = None,
) -> RenderResult:
    """len(groups) x `samples` images maximizing `objective` (plus the recipe's penalties, and its diversity term
    within each group) in one batch, through the recipe's jitter, scale and rotation; from `init` (pixels, one per
    image) when given. Each image's seed depends on its group id and sample number only, so a group's images do not
    depend on which other groups share the batch."""
    seeds = [seed * 100_003 + int(g) * 1000 + i for g in groups for i in range(samples)]
    param = make_param(cfg, seeds, stats, init)
    transform = compose([jitter(cfg.jitter), random_affine(cfg.scales, cfg.degrees)])
    objective = regularized(objective, cfg, model, len(groups), samples)
    return render(model, objective, param, transform, cfg.steps, cfg.lr, cfg.blur_every, cfg.blur_sigma, seed)


def class_images(
    model: nn.Module,
    classes: list[int],
    samples: int,
    cfg: DreamConfig,
    stats: ImageStats,
    seed: int = 0,
    init: torch.Tensor | None = None,
) -> RenderResult:
    """`samples` images of each class in `classes`, all optimized in one batch; rows class-major."""
    targets = torch.tensor(classes).repeat_interleave(samples)
    return dream(model, class_logit(targets), classes, samples, cfg, stats, seed, init)
