"""Training and inference throughput of the model family on this machine, and the fraction of matmul peak reached.

    python bench/throughput.py [--widths 32,64,128,256 --depths 1,2,2,2] [--modes fp32,cl,cl-bf16,cl-bf16-compile]

Prints one line per mode: training images/s, inference images/s, GFLOP/s achieved and fraction of the measured peak.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from heritagelens.config import ModelConfig
from heritagelens.models import build_model


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of a square matmul in `dtype`: the machine's practical arithmetic peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def train_flops(model: nn.Module, batch: int) -> int:
    x = torch.rand(batch, 3, 64, 64) * 255
    y = torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as fc:
        nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def time_mode(model: nn.Module, mode: str, batch: int, steps: int) -> tuple[float, float]:
    cl, bf16, comp = "cl" in mode, "bf16" in mode, "compile" in mode
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = model.to(memory_format=fmt)
    run = torch.compile(model) if comp else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = (torch.rand(batch, 3, 64, 64) * 255).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(run(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    train_ips = batch * steps / (time.perf_counter() - t)
    run.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        run(x)
        t = time.perf_counter()
        for _ in range(steps):
            run(x)
        infer_ips = batch * steps / (time.perf_counter() - t)
    run.train()
    return train_ips, infer_ips


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="32,64,128,256")
    p.add_argument("--depths", default="1,2,2,2")
    p.add_argument("--modes", default="fp32,cl,cl-bf16")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args()
    cfg = ModelConfig(
        widths=tuple(int(w) for w in a.widths.split(",")), depths=tuple(int(d) for d in a.depths.split(","))
    )
    torch.manual_seed(0)
    model = build_model(cfg, 10)
    flops = train_flops(model, a.batch) / a.batch
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(
        f"threads={torch.get_num_threads()} model widths={cfg.widths} depths={cfg.depths} "
        f"params={sum(p.numel() for p in model.parameters()):,} train GFLOP/img={flops / 1e9:.3f}"
    )
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    for mode in a.modes.split(","):
        tr, inf = time_mode(build_model(cfg, 10), mode, a.batch, a.steps)
        peak = peak16 if "bf16" in mode else peak32
        rate = tr * flops / 1e9
        print(
            f"{mode:18s} train {tr:7.1f} img/s  infer {inf:7.1f} img/s  {rate:6.1f} GFLOP/s = {rate / peak:.0%} of peak"
        )


if __name__ == "__main__":
    main()
