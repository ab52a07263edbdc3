"""Objectives: what to maximize (a class logit, a channel, a unit), callables that add and scale, recorded from the
model's rectified layer outputs; penalties and the diversity term."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DreamConfig
from ..model.network import conv_layer_names, rectified_name
from .recipes import DreamError


class Objective:
    """A per-image score to maximize, (B,), from the model's outputs and recorded activations; objectives add,
    subtract and scale, so `class_logit(3) - 0.5 * class_logit(5)` is an objective."""

    def __init__(self, fn: Callable[[Recording], torch.Tensor], name: str, layers: frozenset[str] = frozenset()):
        self.fn, self.name, self.layers = fn, name, layers

    def __call__(self, rec: Recording) -> torch.Tensor:
        return self.fn(rec)

    def __add__(self, other: Objective) -> Objective:
        return Objective(lambda r: self(r) + other(r), f"{self.name} + {other.name}", self.layers | other.layers)

    def __sub__(self, other: Objective) -> Objective:
        return self + (-1.0) * other

    def __rmul__(self, k: float) -> Objective:
        return Objective(lambda r: k * self(r), f"{k:g} * {self.name}", self.layers)

    __mul__ = __rmul__


@dataclass
class Recording:
    """What one forward pass exposes to objectives."""

    images: torch.Tensor
    logits: torch.Tensor
    activations: dict[str, torch.Tensor]


def class_logit(k: int | torch.Tensor) -> Objective:
    """The unnormalized score of class `k` (one class, or one per image), as Simonyan et al. recommend."""
    return Objective(
        lambda r: r.logits.gather(1, torch.as_tensor(k).expand(len(r.logits))[:, None].long())[:, 0], f"logit[{k}]"
    )


def channel(layer: str, c: int) -> Objective:
    """Mean activation of channel `c` of feature layer `layer` (a name from `heritagelens layers`)."""
    return Objective(lambda r: r.activations[layer][:, c].mean((1, 2)), f"{layer}:{c}", frozenset([layer]))


def unit(layer: str, c: int) -> Objective:
    """Activation of channel `c` of `layer` at the centre of its map: one neuron, with one receptive field."""

    def fn(r: Recording) -> torch.Tensor:
        a = r.activations[layer]
        return a[:, c, a.shape[2] // 2, a.shape[3] // 2]

    return Objective(fn, f"{layer}:{c}@centre", frozenset([layer]))


def one_each(objectives: list[Objective], which: torch.Tensor) -> Objective:
    """Image b gets objective `objectives[which[b]]`: several channels, or several classes, in one batch."""

    def fn(r: Recording) -> torch.Tensor:
        return torch.stack([o(r) for o in objectives], 1).gather(1, which[:, None])[:, 0]

    layers = frozenset().union(*(o.layers for o in objectives))
    return Objective(fn, "one each of " + ", ".join(o.name for o in objectives), layers)


def diversity(layer: str) -> Objective:
    """Olah et al.'s diversity term: minus the mean cosine similarity of each image's Gram matrix at `layer` to the
    others' (images of one batch pushed apart in style)."""

    def fn(r: Recording) -> torch.Tensor:
        a = r.activations[layer]
        B, C = a.shape[:2]
        flat = a.reshape(B, C, -1)
        gram = F.normalize((flat @ flat.transpose(1, 2)).reshape(B, -1), dim=1)
        sim = gram @ gram.T
        return -(sim.sum(1) - sim.diagonal()) / max(B - 1, 1)

    return Objective(fn, f"diversity({layer})", frozenset([layer]))


def total_variation(r: Recording) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per image, in 0..1 units (Mahendran & Vedaldi)."""
    x = r.images / 255.0
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))


def l2(r: Recording) -> torch.Tensor:
    """Mean squared distance of pixels from mid-grey, per image, in 0..1 units (Simonyan et al.'s L2 penalty)."""
    return ((r.images / 255.0 - 0.5) ** 2).mean((1, 2, 3))


def penalty(fn: Callable[[Recording], torch.Tensor], name: str) -> Objective:
    """A regularizer as an objective to maximize: minus the penalty."""
    return Objective(lambda r: -fn(r), name)


@contextmanager
def recording(model: nn.Module, layers: frozenset[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks on the rectified outputs of `layers` (conv names), always removed on exit."""
    acts: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for layer in layers:
            name = rectified_name(model, layer) if hasattr(model, "features") else None
            if name is None:
                raise DreamError(f"unknown layer '{layer}'")
            relu = getattr(model.features, name)
            handles.append(relu.register_forward_hook(lambda m, i, o, name=layer: acts.__setitem__(name, o.float())))
        yield acts
    finally:
        for h in handles:
            h.remove()


def regularized(objective: Objective, cfg: DreamConfig, model: nn.Module, groups: int, samples: int) -> Objective:
    """`objective` plus the recipe's penalties, and its diversity term within each group of `samples` images."""
    if cfg.tv:
        objective = objective + cfg.tv * penalty(total_variation, "tv")
    if cfg.l2:
        objective = objective + cfg.l2 * penalty(l2, "l2")
    if cfg.diversity and samples > 1:
        layer = cfg.diversity_layer or conv_layer_names(model)[-2]
        objective = objective + cfg.diversity * per_class(diversity(layer), groups, samples)
    return objective


def per_class(objective: Objective, n_classes: int, samples: int) -> Objective:
    """Apply a batch-coupled objective (diversity) within each class's samples only."""

    def fn(r: Recording) -> torch.Tensor:
        parts = []
        for k in range(n_classes):
            sl = slice(k * samples, (k + 1) * samples)
            sub = Recording(r.images[sl], r.logits[sl], {n: a[sl] for n, a in r.activations.items()})
            parts.append(objective(sub))
        return torch.cat(parts)

    return Objective(fn, objective.name, objective.layers)
