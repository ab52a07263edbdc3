"""DDP on this machine: training throughput and accuracy of `torchrun --nproc-per-node N` against one process.

Each setting trains the default recipe for `--epochs` epochs on the whole training part of the group-aware split
(the same data, seed and global batch of 128) through the CLI, and reads the run's metrics.csv: images/s of every
epoch after the first (the first pays for start-up), and the validation accuracy at the end. One process uses
every core (torch's default); N processes get cores/N threads each (torchrun's OMP_NUM_THREADS would give 1).

usage: AHE_DATA=../shared/data/ahe64 .venv/bin/python bench/ddp.py [--epochs 3] [--procs 1 2] [--out runs/bench-ddp]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def train(procs: int, epochs: int, out: Path, data: str) -> dict:
    run = out / f"procs-{procs}"
    shutil.rmtree(run, ignore_errors=True)
    args = [
        "train",
        "--data",
        data,
        "--epochs",
        str(epochs),
        "--out",
        str(run),
        "--quiet",
        "--set",
        "train.snapshot_epochs=[]",
    ]
    threads = max(1, (os.cpu_count() or 1) // procs)
    if procs == 1:
        cmd = [sys.executable, "-m", "heritagelens", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
        cmd += ["-m", "heritagelens", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    steady = [float(r["images_per_s"]) for r in rows[1:]] or [float(rows[0]["images_per_s"])]
    return {
        "processes": procs,
        "threads_each": threads,
        "images_per_s": round(sum(steady) / len(steady), 1),
        "val_acc": round(float(rows[-1]["val_acc"]), 4),
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default="runs/bench-ddp")
    ap.add_argument("--data", default=os.environ.get("AHE_DATA", "../shared/data/ahe64"))
    a = ap.parse_args()
    out = Path(a.out)
    results = [train(p, a.epochs, out, a.data) for p in a.procs]
    base = results[0]["images_per_s"]
    for r in results:
        r["throughput_ratio"] = round(r["images_per_s"] / base, 3)
        print(json.dumps(r))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
