"""Training and inference throughput of the model family on this machine, and the fraction of matmul peak reached.

    python bench/throughput.py [--widths 32,64,128,256 --depths 1,2,2,2] [--modes fp32,fp32-cl,bf16-cl,fp32-cl-compile]

Prints one line per mode (the names of `train.precision`, '-compile' added for torch.compile): training images/s,
inference images/s, GFLOP/s achieved and fraction of the measured peak; then the mode `train.precision=auto` chose
on this machine and its training speed as a fraction of the fastest mode measured here.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from heritagelens.config import ModelConfig
from heritagelens.model.network import build_model
from heritagelens.model.precision import Precision, candidates, cpu_has_native_bf16, resolve


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
    amp = Precision.named(mode.removesuffix("-compile"))
    model = model.to(memory_format=amp.memory_format)
    run = torch.compile(model) if mode.endswith("-compile") else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = amp.input(torch.rand(batch, 3, 64, 64) * 255)
    y = torch.randint(0, 10, (batch,))

    def step():
        with amp.autocast():
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
    with torch.no_grad(), amp.autocast():
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
    p.add_argument("--modes", help="comma-separated (default: the modes this hardware is offered, as 'auto' times)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args()
    cfg = ModelConfig(
        widths=tuple(int(w) for w in a.widths.split(",")), depths=tuple(int(d) for d in a.depths.split(","))
    )
    torch.manual_seed(0)
    model = build_model(cfg, 10)
    flops = train_flops(model, a.batch) / a.batch
    native = cpu_has_native_bf16()  # an emulated bf16 matmul takes minutes and says nothing: skipped
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16) if native else 0.0
    print(
        f"threads={torch.get_num_threads()} model widths={cfg.widths} depths={cfg.depths} "
        f"params={sum(p.numel() for p in model.parameters()):,} train GFLOP/img={flops / 1e9:.3f}"
    )
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s (native bf16: {native})")
    speeds = {}
    for mode in a.modes.split(",") if a.modes else candidates(torch.device("cpu"))[0]:
        tr, inf = time_mode(build_model(cfg, 10), mode, a.batch, a.steps)
        speeds[mode] = tr
        peak = (peak16 if "bf16" in mode else peak32) or float("nan")
        rate = tr * flops / 1e9
        print(
            f"{mode:18s} train {tr:7.1f} img/s  infer {inf:7.1f} img/s  {rate:6.1f} GFLOP/s = {rate / peak:.0%} of peak"
        )
    choice = resolve("auto", torch.device("cpu"))
    fastest = max(speeds, key=speeds.get)
    mine = speeds.get(choice.precision.name)
    ratio = f"{mine / speeds[fastest]:.2f}x the fastest ({fastest})" if mine else "not among the modes timed"
    print(f"auto: {choice.line}\nauto's mode trains at {ratio}")


if __name__ == "__main__":
    main()
