"""Validation accuracy the time budget reaches: `heritagelens train --minutes M` for several M, on this machine.

    AHE_DATA=../shared/data/ahe64 python bench/budget.py --minutes 5 10 20 [--preset default] [--seed 0]

Trains one run per budget (one at a time: the machine has 2 cores), each fitting the recipe's epochs to the speed
measured at its start, then evaluates the final weights on the group-aware validation split with and without TTA.
Prints a Markdown table: the budget, the epochs it chose, the training wall time, both accuracies, and the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from heritagelens.config import preset
from heritagelens.jobs.evaluation import evaluate_checkpoint
from heritagelens.model.precision import cache_key, resolve
from heritagelens.train.runs import train_run


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[5.0, 10.0, 20.0])
    p.add_argument("--preset", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", default="runs/bench-budget")
    a = p.parse_args()
    rows = []
    for minutes in a.minutes:
        cfg = preset(a.preset).override([*a.set, f"train.minutes={minutes}", f"train.seed={a.seed}"])
        cfg.data.root = os.environ.get("AHE_DATA", "data/ahe64")
        run = Path(a.out) / f"{a.preset}-{minutes:g}min-seed{a.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        t = time.perf_counter()
        train_run(cfg, run, progress=False)
        wall = (time.perf_counter() - t) / 60
        epochs = json.loads((run / "config.json").read_text())["train"]["epochs"]
        plain = evaluate_checkpoint(run / "last.pt", "val", tta=False).accuracy
        tta = evaluate_checkpoint(run / "last.pt", "val", tta=True, out_dir=run).accuracy
        rows.append(dict(minutes=minutes, epochs=epochs, wall=wall, tta=tta, plain=plain, run=str(run)))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{cache_key(torch.device('cpu'))}; {resolve('auto', torch.device('cpu')).line}")
    print(f"preset {a.preset} {' '.join(a.set)}, seed {a.seed}")
    print("| budget (min) | epochs chosen | wall minutes (timing, data, training) | val acc TTA | val acc one view |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['minutes']:g} | {r['epochs']} | {r['wall']:.1f} | {r['tta']:.4f} | {r['plain']:.4f} |")


if __name__ == "__main__":
    main()
