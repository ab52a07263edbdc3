"""Optimizers: SGD with Nesterov momentum, and Muon for the conv filters (Jordan et al. 2024, as in airbench94_muon).

Muon moves each conv filter bank, seen as a matrix (output channels x inputs), along the semi-orthogonal matrix
nearest its Nesterov momentum, found by a few Newton-Schulz iterations: every direction of the bank then learns at
the same rate, which is what lets short schedules train far. `torch.optim.Muon` takes 2-D parameters only (and works
in bfloat16, emulated on CPUs without it), hence this one: 4-D filters, float32. Batch norm after a conv makes the
network blind to that filter bank's scale (every conv of the plain CNN; in the ResNet, all but the 1x1 shortcuts);
Muon fixes that scale (the bank's norm is held at sqrt(output channels)) so that the learning rate alone sets how
far a step turns it. The other parameters (batch norm, the linear head) take SGD steps in the same optimizer.
"""

from __future__ import annotations

import torch
from torch import nn

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Quintic Newton-Schulz coefficients (a, b, c): chosen for the largest slope at zero, so that 5 iterations bring
every singular value into about [0.7, 1.2] (Jordan et al. 2024)."""


def orthogonalize(g: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """About U V^T of the 2-D matrix `g` = U S V^T: its singular values all moved near 1 by `steps` iterations."""
    a, b, c = NS_COEFFICIENTS
    x = g / (g.norm() + 1e-7)  # singular values now at most 1: inside the iteration's basin
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


def orthogonalize_flops(shape: torch.Size, steps: int = 3) -> int:
    """Multiply-adds x 2 of one `orthogonalize` of a filter bank of `shape` (for the FLOP count of a recipe)."""
    m, n = sorted((shape[0], shape[1:].numel()))
    return steps * (4 * m * m * n + 2 * m**3)


class Muon(torch.optim.Optimizer):
    """Muon on the groups marked `orthogonal` (4-D conv filters), SGD with Nesterov momentum on the others.

    Group keys: `lr`, `momentum`, `weight_decay` (SGD groups only: a Muon group's scale is held fixed) and
    `orthogonal`; `lr_scale` (kept by the schedule, see `heritagelens.train.loop.fit`) lets a Muon group run at its own
    learning rate."""

    def __init__(self, params, lr: float, momentum: float = 0.9, ns_steps: int = 3):
        super().__init__(
            params, {"lr": lr, "momentum": momentum, "weight_decay": 0.0, "orthogonal": False, "ns_steps": ns_steps}
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if group["orthogonal"] else p.grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"].mul_(mu).add_(g)
                g = g.add(buf, alpha=mu)  # Nesterov
                if group["orthogonal"]:
                    g = orthogonalize(g.reshape(len(g), -1).float(), group["ns_steps"]).view(p.shape)
                p.add_(g.to(p.dtype), alpha=-group["lr"])
                if group["orthogonal"]:
                    p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))
        return loss


def make_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    muon_lr: float = 0.0,
    muon_momentum: float = 0.0,
    ns_steps: int = 3,
) -> torch.optim.Optimizer:
    """'sgd': Nesterov SGD, weight decay on weights (not on biases or batch norm). 'muon': Muon at `muon_lr` on the
    conv filters, the rest as with 'sgd'."""
    params = list(model.named_parameters())
    filters = [p for _, p in params if p.ndim == 4] if name == "muon" else []
    taken = {id(p) for p in filters}
    decay = [p for _, p in params if p.ndim > 1 and id(p) not in taken]
    no_decay = [p for _, p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    orthogonal = {
        "params": filters,
        "orthogonal": True,
        "momentum": muon_momentum,
        "lr": muon_lr,
        "lr_scale": muon_lr / lr,
    }
    return Muon([orthogonal, *groups], lr=lr, momentum=momentum, ns_steps=ns_steps)
