"""Started by test_distributed.py under torchrun: trains one seeded model on fixed synthetic images and saves the
weights and last gradients each process ends with, so the test can compare the replicas with each other and with
one process. Usage: ddp_worker.py OUT_DIR"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from heritagelens.config import Config
from heritagelens.distributed import close_world, init_world
from heritagelens.model.network import build_model
from heritagelens.train.loop import fit, new_state

OVERRIDES = [
    "model.widths=[8,16]",
    "model.depths=[1,1]",
    "model.dropout=0",
    "train.precision=fp32",
    "train.batch_size=16",
    "train.epochs=1",
    "train.ema_decay=0",
]
"""float32 and no dropout, so one process's gradients can be recomputed exactly; augmentation stays on."""


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (64, 3, 64, 64), dtype=torch.uint8, generator=g), torch.randint(
        0, 3, (64,), generator=g
    )


def model(cfg: Config) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg.model, 3)


def trained(cfg: Config, n: int) -> dict[str, torch.Tensor]:
    """Weights and last gradients after one epoch on the first `n` images."""
    images, labels = data()
    state = new_state(model(cfg), cfg.train)
    fit(cfg, state, images[:n], labels[:n], images[:4], labels[:4], progress=False)
    out = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
    return out | {f"grad.{k}": p.grad.clone() for k, p in state.model.named_parameters()}


if __name__ == "__main__":
    w = init_world("cpu")
    cfg = Config().override(OVERRIDES)
    robust = cfg.override(["train.adv_eps=4", "train.ema_decay=0.9"])  # FGSM's random start and EMA under DDP
    result = {
        "size": w.size,
        "one_step": trained(cfg, 15),  # shares of 8 and 7 images: the loss weighting matters
        "four_steps": trained(cfg, 61),  # a short last batch
        "robust": trained(robust, 61),
    }
    torch.save(result, Path(sys.argv[1]) / f"rank{w.rank}.pt")
    close_world()
