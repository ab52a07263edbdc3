"""Accuracy and wall time of a recipe over several seeds, on the group-aware and source-held-out validations and
the outside photos.

    AHE_DATA=../shared/data/ahe64 python bench/accuracy.py --preset default --seeds 0 1 2 [--set k=v ...] [--record]
    AHE_DATA=../shared/data/ahe64 python bench/accuracy.py --preset default --add-outside RUN0 RUN1 RUN2
    AHE_DATA=../shared/data/ahe64 python bench/accuracy.py --preset default --seeds 0 1 2 --runs RUN0 RUN1 RUN2

Trains one run per seed (one at a time: the machine has 2 cores), evaluates each run's final weights on both
validation splits (group-aware 'val', and 'source' when the recipe holds a source out) and on the outside photos
(`<AHE_DATA>-outside`, photos from other sources, when present) with the recipe's TTA setting, and prints a Markdown
table plus mean and spread of each. `--record` writes the figures of a named preset
(no `--set`) into the package's `jobs/preset-figures.json`, which every report sets its run beside. `--runs` measures
finished runs instead of training (each checked to be the recipe with its seed; its minutes are the sum of its
epochs' seconds in `metrics.csv`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from heritagelens.config import preset
from heritagelens.files import atomic_write_json
from heritagelens.jobs.evaluation import evaluate, evaluation_splits
from heritagelens.jobs.report import PRESET_FIGURES, split_key
from heritagelens.model.precision import cache_key
from heritagelens.model.trained import Trained
from heritagelens.train.flops import training_flops
from heritagelens.train.runs import train_run


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", default="runs/bench-accuracy")
    p.add_argument(
        "--record", action="store_true", help="write the figures into the package's jobs/preset-figures.json"
    )
    p.add_argument(
        "--add-outside",
        nargs="+",
        metavar="RUN",
        help="no training: add the outside figures of these finished runs of the recorded seeds (run or model "
        "folders, in the recorded seeds' order) to the preset's record, once their validation figures are found "
        "to be the recorded ones",
    )
    p.add_argument("--runs", nargs="+", metavar="RUN", help="no training: measure these runs of --seeds, in order")
    a = p.parse_args()
    if a.record and a.set:
        p.error("--record is for a named preset as it is: no --set")
    if a.add_outside:
        add_outside(a.preset, a.add_outside)
        return
    if a.runs and len(a.runs) != len(a.seeds):
        p.error(f"--runs: {len(a.runs)} runs for {len(a.seeds)} seeds")
    rows = []
    for i, seed in enumerate(a.seeds):
        cfg = preset(a.preset).override(a.set)
        cfg.data.root = os.environ.get("AHE_DATA", "data/ahe64")
        cfg.train.seed = seed
        if a.runs:
            run = Path(a.runs[i])
            minutes = trained_minutes(run, cfg)
        else:
            run = Path(a.out) / f"{a.preset}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
            t = time.perf_counter()
            train_run(cfg, run, progress=False)
            minutes = (time.perf_counter() - t) / 60
        model = Trained.load(run / "last.pt")
        plain = evaluate(model, "val", tta=False)
        r = evaluate(model, "val", out_dir=run)
        splits = evaluation_splits(model)
        src = evaluate(model, "source", out_dir=run) if "source" in splits else None
        out = evaluate(model, "outside", out_dir=run) if "outside" in splits else None
        with (run / "metrics.csv").open(newline="") as f:
            ips = [float(row["images_per_s"]) for row in csv.DictReader(f)]
        split = json.loads((run / "split.json").read_text())
        rows.append(
            dict(
                seed=seed,
                val_acc=r.accuracy,
                val_acc_no_tta=plain.accuracy,
                macro_f1=r.macro["f1"],
                source_acc=src.accuracy if src else None,
                source_macro_f1=src.macro["f1"] if src else None,
                outside_acc=out.accuracy if out else None,
                outside_macro_f1=out.macro["f1"] if out else None,
                minutes=minutes,
                train_img_s=statistics.median(ips),
                run=str(run),
                split_key=split_key(split),
                tflop=training_flops(cfg, split["train_images"], len(split["per_class"]))["tflop"],
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; preset {a.preset} {' '.join(a.set)}"
    )
    print(
        "| seed | val acc (TTA) | val acc (no TTA) | macro F1 | source acc (TTA) | outside acc (TTA) "
        "| outside macro F1 | train minutes | train img/s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    figure = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rows:
        print(
            f"| {r['seed']} | {r['val_acc']:.4f} | {r['val_acc_no_tta']:.4f} | {r['macro_f1']:.4f} | "
            f"{figure(r['source_acc'])} | {figure(r['outside_acc'])} | {figure(r['outside_macro_f1'])} | "
            f"{r['minutes']:.1f} | {r['train_img_s']:.0f} |"
        )
    for key, name in (("val_acc", "group-aware val"), ("source_acc", "source-held-out"), ("outside_acc", "outside")):
        accs = [r[key] for r in rows if r[key] is not None]
        if accs:
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(
                f"mean {name} accuracy {statistics.mean(accs):.4f} +- {spread:.4f} (sample std over {len(accs)} "
                f"seeds), min {min(accs):.4f}, max {max(accs):.4f}"
            )
    if a.record:
        record(a.preset, rows)


def trained_minutes(run: Path, cfg) -> float:
    """The training minutes of a finished run of `cfg` (its epochs' seconds); refuses a run of another recipe."""
    used = json.loads((run / "config.json").read_text())
    want = json.loads(json.dumps(cfg.to_dict()))  # tuples as the saved config has them: lists
    for section in ("model", "train"):
        differs = {k for k in want[section] if want[section][k] != used[section].get(k)} - {"device", "threads"}
        if differs:
            raise SystemExit(f"{run}: not this recipe with seed {cfg.train.seed} ({section}: {sorted(differs)})")
    with (run / "metrics.csv").open(newline="") as f:
        return sum(float(row["seconds"]) for row in csv.DictReader(f)) / 60


def add_outside(name: str, runs: list[str]) -> None:
    """The outside figures of `runs` into the preset's record, each run checked to give the recorded validation
    figures (the same recipe and seed, reproduced): nothing is recorded otherwise."""
    from heritagelens.model.checkpoint import checkpoint_file

    root = os.environ.get("AHE_DATA", "data/ahe64")
    ref = json.loads(PRESET_FIGURES.read_text())
    p = ref["presets"][name]
    if len(runs) != len(p["seeds"]):
        raise SystemExit(f"{name}: {len(p['seeds'])} recorded seeds ({p['seeds']}), {len(runs)} runs given")
    outside, f1 = [], []
    for seed, val, source, run in zip(p["seeds"], p["val"], p["source"], runs):
        model = Trained.load(checkpoint_file(run), root)
        got = {s: evaluate(model, s) for s in ("val", "source", "outside")}
        if abs(got["val"].accuracy - val) > 1e-4 or abs(got["source"].accuracy - source) > 1e-4:
            raise SystemExit(
                f"{run}: val {got['val'].accuracy:.4f}, source {got['source'].accuracy:.4f}; seed {seed} of {name} "
                f"recorded {val}, {source}: not that run"
            )
        outside.append(round(got["outside"].accuracy, 4))
        f1.append(round(got["outside"].macro["f1"], 4))
        print(f"seed {seed}: {run}: val {val}, source {source} as recorded; outside {outside[-1]}", flush=True)
    photos = f"{got['outside'].n} photos of {Path(got['outside'].held_out).name}"
    p |= {"outside": outside, "outside_macro_f1": f1, "outside_photos": photos}
    atomic_write_json(ref, PRESET_FIGURES)
    print(f"recorded the outside figures of {name} in {PRESET_FIGURES}")


def record(name: str, rows: list[dict]) -> None:
    """The preset's figures into `jobs/preset-figures.json`; every preset there must have been measured on the same
    split."""
    keys = {r["split_key"] for r in rows}
    ref = json.loads(PRESET_FIGURES.read_text()) if PRESET_FIGURES.exists() else {}
    if len(keys) != 1 or ref.get("split_key", *keys) not in keys or any(r["source_acc"] is None for r in rows):
        raise SystemExit(
            f"{PRESET_FIGURES}: not recorded: the runs' split differs from the recorded one or holds no source"
        )
    ref |= {
        "data": "AHE64 train split, its default group-aware and source-held-out validations",
        "split_key": keys.pop(),
    }
    ref.setdefault("presets", {})[name] = {
        "command": f"AHE_DATA=<AHE64 root> python bench/accuracy.py --preset {name} --seeds "
        + " ".join(str(r["seed"]) for r in rows)
        + " --record",
        "machine": cache_key(torch.device("cpu")),
        "seeds": [r["seed"] for r in rows],
        **{
            k: [round(r[v], 4) for r in rows]
            for k, v in (
                ("val", "val_acc"),
                ("val_one_view", "val_acc_no_tta"),
                ("val_macro_f1", "macro_f1"),
                ("source", "source_acc"),
                ("source_macro_f1", "source_macro_f1"),
            )
        },
        **(
            {
                k: [round(r[v], 4) for r in rows]
                for k, v in (("outside", "outside_acc"), ("outside_macro_f1", "outside_macro_f1"))
            }
            if all(r["outside_acc"] is not None for r in rows)
            else {}
        ),
        "train_minutes": [round(r["minutes"], 1) for r in rows],
        "tflop": rows[0]["tflop"],
    }
    atomic_write_json(ref, PRESET_FIGURES)
    print(f"recorded {name} in {PRESET_FIGURES}")


if __name__ == "__main__":
    main()
