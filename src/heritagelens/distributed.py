"""Where training runs: the device (CUDA when there is one), mixed precision, and PyTorch DDP under torchrun.

`torchrun --nproc-per-node N -m heritagelens train ...` starts N processes; each calls `init_world`, which joins them
in one process group (gloo on CPU, NCCL on GPUs). `train.batch_size` stays the *global* batch: every process draws
the same permutation and augments the same batch, then trains on its 1/N share; the loss is scaled so that DDP's
gradient average equals the gradient of the mean loss over the whole batch. The learning rate therefore needs no
rescaling and N processes follow the one-process recipe. The one difference is batch norm: each process normalises
its share with its own statistics (ghost batch norm over N sub-batches; SyncBatchNorm exists only for GPUs).
Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError, launched_size


@dataclass(frozen=True)
class World:
    """This process's place among the training processes, and its device."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0


_WORLD = World()


def world() -> World:
    """The world `init_world` set up (one CPU process until then)."""
    return _WORLD


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' is the GPU of this process when CUDA is available, else the CPU; 'cpu', 'cuda' or 'cuda:K' as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name}: no CUDA GPU is visible to PyTorch here")
        if ":" in name and launched_size() > 1:
            raise ConfigError(f"train.device={name}: under torchrun each process takes its own GPU; use 'cuda'")
        return torch.device(name if ":" in name else f"cuda:{local_rank % torch.cuda.device_count()}")
    if name != "cpu":
        raise ConfigError(f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:K', not '{name}'")
    return torch.device("cpu")


def init_world(device: str = "auto") -> World:
    """Join the torchrun process group when there is one, and pick this process's device."""
    global _WORLD
    size = launched_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    _WORLD = World(int(os.environ.get("RANK", "0")), size, dev)
    return _WORLD


def close_world(ok: bool = True) -> None:
    """Leave the process group: after every process has finished when `ok`; at once after a failure, so that this
    process exits and torchrun stops the others instead of all of them waiting for the collective timeout."""
    global _WORLD
    if dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()
    _WORLD = World()


def share(n: int, w: World) -> slice:
    """This process's part of a global batch of `n` (contiguous; the first `n % size` parts one longer)."""
    base, extra = divmod(n, w.size)
    start = w.rank * base + min(w.rank, extra)
    return slice(start, start + base + (w.rank < extra))


def all_sum(values: list[float], w: World) -> list[float]:
    """The sums of `values` over all processes (the values themselves in one process)."""
    if w.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=w.device)  # NCCL reduces only GPU tensors
    dist.all_reduce(t)
    return t.tolist()


def from_main(value, w: World):
    """`value` as the main process has it, in every process (the value itself in one process)."""
    if w.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=w.device if w.device.type == "cuda" else None)
    return box[0]
