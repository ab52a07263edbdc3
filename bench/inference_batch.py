"""Inference speed of the bundled model by batch size, as `predict_logits` runs it (eval mode, the layout chosen for
this machine, float32): the figure behind `inference.CPU_BATCH`.

    python bench/inference_batch.py [--n 1024] [--sizes 16,32,64,128,256] [--repeats 5]

Prints images/s for each batch size, the median of the repeats, and the ratio to batches of 256.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from heritagelens.model.card import BUNDLED
from heritagelens.model.checkpoint import load_model
from heritagelens.model.inference import predict_logits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--sizes", default="16,32,64,128,256")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    model = load_model(BUNDLED)[0]
    images = torch.randint(0, 256, (a.n, 3, 64, 64), dtype=torch.uint8)
    predict_logits(model, images[:64])  # warm: the layout chosen, the kernels loaded
    speed = {}
    for size in map(int, a.sizes.split(",")):
        runs = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            predict_logits(model, images, batch_size=size)
            runs.append(a.n / (time.perf_counter() - t))
        speed[size] = statistics.median(runs)
    print(f"threads={torch.get_num_threads()} images={a.n} repeats={a.repeats}")
    for size, ips in speed.items():
        ratio = f"  {ips / speed[256]:.2f}x batches of 256" if 256 in speed else ""
        print(f"batch {size:4d}: {ips:6.0f} images/s{ratio}")


if __name__ == "__main__":
    main()
