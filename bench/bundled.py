"""Rebuild the bundled model from its recorded recipe and check the figures on its card; `--write` ships it.

    AHE_DATA=../shared/data/ahe64 python bench/bundled.py [--write] [--out runs/bench-bundled]
    python bench/bundled.py --risk-coverage      # only print the shipped card's risk-coverage figures
    AHE_DATA=../shared/data/ahe64 python bench/bundled.py --graph   # only (re)write the shipped model's ONNX graph
    AHE_DATA=../shared/data/ahe64 python bench/bundled.py --outside # only add the outside figures to its card

Trains the default recipe with the card's seed on the AHE64 train split (as `heritagelens train --seed 0`), fits its
temperatures (`heritagelens calibrate`), evaluates both validations and the outside photos (`<AHE_DATA>-outside`) with
and without TTA, and prints each figure beside
the one on the shipped card, with whether the weights came out as the same bytes. Exit status 1 when a figure moved by
more than --tolerance. `--write` replaces the package's bundled model folder with the new one, its ONNX graph (which
`predict` runs without loading PyTorch) checked against PyTorch on real training images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from accuracy import trained_minutes  # bench/, beside this script

from heritagelens.config import preset
from heritagelens.data import dataset
from heritagelens.files import atomic_write_json, file_sha256
from heritagelens.jobs.evaluation import THRESHOLDS, calibrate_checkpoint, evaluate_checkpoint, outside_predictions
from heritagelens.jobs.report import split_key
from heritagelens.model.calibration import filed_at, threshold_for
from heritagelens.model.card import BUNDLED, MODEL_CARD, MODEL_WEIGHTS, model_card
from heritagelens.model.checkpoint import load_model, write_model_folder
from heritagelens.model.export import write_folder_graph
from heritagelens.model.inference import predict_logits
from heritagelens.model.precision import cache_key
from heritagelens.train.runs import train_run

RECIPE, SEED = "default", 0


def figures(checkpoint: Path, calibration: dict) -> dict:
    """What the card says of the model: accuracy (TTA and one view), macro F1 and calibration, per validation."""
    out = {}
    for split in ("val", "source"):
        tta, one = (evaluate_checkpoint(checkpoint, split, tta=t) for t in (True, False))
        out[split] = {
            "n": tta.n,
            "held_out": tta.held_out,
            "accuracy": round(tta.accuracy, 4),
            "accuracy_one_view": round(one.accuracy, 4),
            "macro_f1": round(tta.macro["f1"], 4),
            "macro_f1_one_view": round(one.macro["f1"], 4),
            "ece": round(tta.calibration["ece_after"], 4),
            "ece_before_calibration": round(tta.calibration["ece_before"], 4),
        }
    out["val"]["ece_held_out"] = round(calibration["tta"].ece_held_out, 4)  # fitted on one half, measured on the other
    return out


def outside_figures(checkpoint: Path) -> tuple[dict, dict]:
    """The card's figures on the outside photos (accuracy with its 95% interval, macro F1, calibration error), and
    each photo's one-view calibrated prediction, from which `sort` says what a threshold means on such photos."""
    root = os.environ.get("AHE_DATA", "data/ahe64")
    tta, one = (evaluate_checkpoint(checkpoint, "outside", root=root, tta=t) for t in (True, False))
    folder = Path(tta.held_out)
    figs = {
        "n": tta.n,
        "photos": f"{folder.name}: {OUTSIDE_PHOTOS}",
        "accuracy": round(tta.accuracy, 4),
        "interval": [round(v, 4) for v in tta.interval],
        "accuracy_one_view": round(one.accuracy, 4),
        "interval_one_view": [round(v, 4) for v in one.interval],
        "macro_f1": round(tta.macro["f1"], 4),
        "macro_f1_one_view": round(one.macro["f1"], 4),
        "ece": round(tta.calibration["ece_after"], 4),
        "ece_before_calibration": round(tta.calibration["ece_before"], 4),
    }
    model, classes, ckpt = load_model(checkpoint)
    sp = dataset.load_folder(folder, classes)
    held = outside_predictions(predict_logits(model, sp.images), sp.labels, ckpt)
    return figs, {"photos": figs["photos"], "view": "one view, the temperature fitted on validation", **held}


OUTSIDE_PHOTOS = (
    "half of the official AHE64 test split (photos from other sources than the train split), never trained, stopped, "
    "calibrated or thresholded on"
)


def add_outside(folder: Path) -> dict:
    """The model folder's card with its outside figures and outside risk-coverage added (its weights untouched)."""
    card = model_card(folder)
    card["figures"]["outside"], card["outside_predictions"] = outside_figures(folder)
    atomic_write_json(card, folder / MODEL_CARD)
    return card


def print_risk_coverage(card: dict) -> None:
    """What `sort --min-confidence` and `--target-accuracy` do on the card's held-out validation photos and, when
    measured, its outside photos (which `sort` quotes), one view."""
    measured = {"held-out validation photos": card["calibration"]["plain"]["held_out"]}
    if card.get("outside_predictions"):
        measured["outside photos (what sort quotes)"] = card["outside_predictions"]
    for photos, held in measured.items():
        print(f"risk-coverage on {len(held['label'])} {photos}, one view:")
        for t in THRESHOLDS:
            print("  " + filed_at(held, t).line())
        for target in (0.97, 0.98, 0.99):
            pick = threshold_for(held, target)
            print(f"  --target-accuracy {target}: " + (pick.line() if pick else "not reached"))
        print("  per predicted class at 0.50 (share filed, accuracy of those filed):")
        for k, c in enumerate(card["classes"]):
            f = filed_at(held, 0.5, predicted=k)
            print(f"    {c:<16}{f.n:>5}  {f.coverage:.1%}  {'-' if f.accuracy is None else f'{f.accuracy:.1%}'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="replace the package's bundled model with the rebuilt one")
    p.add_argument("--out", default="runs/bench-bundled")
    p.add_argument("--tolerance", type=float, default=0.005, help="largest change of a figure accepted (fraction)")
    p.add_argument(
        "--run", help="a finished run of the recipe to use instead of training one (its minutes: its epochs' seconds)"
    )
    p.add_argument("--risk-coverage", action="store_true", help="only print the shipped card's risk-coverage")
    p.add_argument(
        "--graph", action="store_true", help="only (re)write the shipped model's ONNX graph from its weights"
    )
    p.add_argument("--outside", action="store_true", help="only add the outside figures to the shipped model's card")
    a = p.parse_args()
    if a.outside:
        print(json.dumps(add_outside(BUNDLED)["figures"]["outside"], indent=2))
        return 0
    if a.risk_coverage:
        print_risk_coverage(model_card(BUNDLED))
        return 0
    if a.graph:
        print(json.dumps(write_folder_graph(BUNDLED, os.environ.get("AHE_DATA")), indent=2))
        return 0
    minutes = None
    if a.run:
        run = Path(a.run)
        minutes = round(trained_minutes(run, preset(RECIPE).override([f"train.seed={SEED}"])), 1)
    else:
        cfg = preset(RECIPE).override([f"data.root={Path(os.environ.get('AHE_DATA', 'data/ahe64')).resolve()}"])
        cfg.train.seed = SEED
        run = Path(a.out) / time.strftime("%Y%m%d-%H%M%S")
        t = time.perf_counter()
        train_run(cfg, run, progress=False)
        minutes = round((time.perf_counter() - t) / 60, 1)
    calibration = calibrate_checkpoint(run / "last.pt")
    made = {
        "recipe": RECIPE,
        "seed": SEED,
        "command": f"heritagelens train --preset {RECIPE} --seed {SEED} --out RUN; heritagelens calibrate RUN",
        "rebuild": "AHE_DATA=<AHE64 root> python bench/bundled.py",
        "machine": cache_key(torch.device("cpu")),
        "torch": torch.__version__,
        "train_minutes": minutes,
        "date": time.strftime("%Y-%m-%d"),
    }
    card = dict(made_by=made, figures=figures(run / "last.pt", calibration))
    card["data_key"] = split_key(json.loads((run / "split.json").read_text()))
    folder = BUNDLED if a.write else run / "model"
    write_model_folder(run / "last.pt", folder, **card)
    trained_on = json.loads((run / "config.json").read_text())["data"]["root"]
    card["onnx"] = write_folder_graph(folder, trained_on)  # checked on the images it trained on
    card = add_outside(folder)
    print(
        json.dumps(
            {k: v for k, v in card.items() if k not in ("config", "calibration", "outside_predictions")}, indent=2
        )
    )
    if a.write:
        size = (folder / MODEL_WEIGHTS).stat().st_size / 1e6
        print(f"written: {folder / MODEL_WEIGHTS} ({size:.1f} MB) and {MODEL_CARD}")
        return 0
    shipped = model_card(BUNDLED)
    same = file_sha256(folder / MODEL_WEIGHTS) == shipped["sha256"]
    print(f"\nweights: {'the same bytes as' if same else 'not the same bytes as'} the bundled model")
    print(f"data key: {card['data_key']} (bundled: {shipped.get('data_key')})")
    moved = 0
    for split, figs in card["figures"].items():
        for k, v in figs.items():
            old = shipped["figures"].get(split, {}).get(k)
            if isinstance(v, float):
                off = old is None or abs(v - old) > a.tolerance
                moved += off
                print(f"  {split:<7}{k:<26}{v:.4f}  bundled {old}{'  MOVED' if off else ''}")
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main())
