"""Accuracy and wall time of a recipe over several seeds, on the group-aware and source-held-out validations.

    AHE_DATA=../shared/data/ahe64 python bench/accuracy.py --preset default --seeds 0 1 2 [--set k=v ...]

Trains one run per seed (one at a time: the machine has 2 cores), evaluates each run's final weights on both
validation splits (group-aware 'val', and 'source' when the recipe holds a source out) with the recipe's TTA
setting, and prints a Markdown table plus mean and spread of each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from heritagelens.config import preset
from heritagelens.run import evaluate_checkpoint, train_run, validation_splits


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", default="runs/bench-accuracy")
    a = p.parse_args()
    rows = []
    for seed in a.seeds:
        cfg = preset(a.preset).override(a.set)
        cfg.data.root = os.environ.get("AHE_DATA", "data/ahe64")
        cfg.train.seed = seed
        run = Path(a.out) / f"{a.preset}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        t = time.perf_counter()
        train_run(cfg, run, progress=False)
        minutes = (time.perf_counter() - t) / 60
        plain = evaluate_checkpoint(run / "last.pt", "val", tta=False)
        r = evaluate_checkpoint(run / "last.pt", "val", out_dir=run)
        held = "source" in validation_splits(run / "last.pt")
        src = evaluate_checkpoint(run / "last.pt", "source", out_dir=run) if held else None
        ips = [float(line.split(",")[-1]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
        rows.append(
            dict(
                seed=seed,
                val_acc=r.accuracy,
                val_acc_no_tta=plain.accuracy,
                macro_f1=r.macro["f1"],
                source_acc=src.accuracy if src else None,
                source_macro_f1=src.macro["f1"] if src else None,
                minutes=minutes,
                train_img_s=statistics.median(ips),
                run=str(run),
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; preset {a.preset} {' '.join(a.set)}"
    )
    print("| seed | val acc (TTA) | val acc (no TTA) | macro F1 | source acc (TTA) | train minutes | train img/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        source = "-" if r["source_acc"] is None else f"{r['source_acc']:.4f}"
        print(
            f"| {r['seed']} | {r['val_acc']:.4f} | {r['val_acc_no_tta']:.4f} | {r['macro_f1']:.4f} | {source} | "
            f"{r['minutes']:.1f} | {r['train_img_s']:.0f} |"
        )
    for key, name in (("val_acc", "group-aware val"), ("source_acc", "source-held-out")):
        accs = [r[key] for r in rows if r[key] is not None]
        if accs:
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(
                f"mean {name} accuracy {statistics.mean(accs):.4f} +- {spread:.4f} (sample std over {len(accs)} "
                f"seeds), min {min(accs):.4f}, max {max(accs):.4f}"
            )


if __name__ == "__main__":
    main()
