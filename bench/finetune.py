"""The fine-tuning curve: epochs of adversarial fine-tuning of a trained standard model against the quality of the
class-image gallery made from it, beside the robust model trained from scratch.

    AHE_DATA=../shared/data/ahe64 python bench/finetune.py RUN --epochs 1 2 4 8 [--scratch] [--out bench-finetune]

RUN is a finished `heritagelens run` or `train` folder (its `last.pt` is the standard model). For each number of
epochs E the main job's gallery stage runs with `gallery.robust_from=standard gallery.robust_epochs=E` into
`OUT/finetune-E/` (the robust model is trained there, evaluated on the validation split, and its gallery is scored
by the judges); `--scratch` adds the main job's robust model from scratch as the reference row. Prints one row per
point: robust validation accuracy, minutes of robust training, the share of the gallery each judge recognises, the
Fréchet distance to real validation images and the relative diversity, and whether the point meets the gallery's
bar (both judges at least 95%, FD at most 25, diversity at least 0.5). Writes everything to OUT/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from heritagelens.config import Config
from heritagelens.files import atomic_write_json
from heritagelens.jobs.pipeline import gallery_job
from heritagelens.model.checkpoint import read_checkpoint
from heritagelens.model.trained import Trained

BAR = {"recognised": 0.95, "frechet": 25.0, "diversity": 0.5}
"""The gallery's bar: each judge recognises at least 95%, FD at most 25, relative diversity at least 0.5."""


def point(cfg: Config, standard: Path, folder: Path, overrides: list[str]) -> dict:
    """The gallery stage of the main job with `overrides`, into `folder` (which gets a copy of `standard`)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(standard, folder / "last.pt")
    t0 = time.perf_counter()
    out, _ = gallery_job(cfg.override(overrides), Trained.load(folder / "last.pt"), progress=False)
    meta = json.loads((folder / "dream-gallery.json").read_text())
    scores = next(s for name, s in meta["scores"].items() if name.endswith("(this gallery)"))
    row = {
        "overrides": overrides,
        "robust_val_accuracy": out["robust_val_accuracy"],
        "robust_train_minutes": out["robust_train_minutes"],
        "stage_minutes": round((time.perf_counter() - t0) / 60, 2),
        "recognised": {name: j["recognised"] for name, j in scores["judges"].items()},
        "frechet": scores["frechet"],
        "diversity": scores["diversity"],
    }
    row["meets_bar"] = (
        min(row["recognised"].values()) >= BAR["recognised"]
        and row["frechet"] <= BAR["frechet"]
        and row["diversity"] >= BAR["diversity"]
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder holding last.pt")
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--scratch", action="store_true", help="add the robust model trained from scratch")
    ap.add_argument("--set", action="append", default=[], help="extra overrides of every point")
    ap.add_argument("--out", type=Path, default=Path("bench-finetune"))
    a = ap.parse_args()
    standard = a.run / "last.pt"
    cfg = Config.from_dict(read_checkpoint(standard)["config"])
    points = {f"finetune-{e}": ["gallery.robust_from=standard", f"gallery.robust_epochs={e}"] for e in a.epochs}
    if a.scratch:
        points["scratch"] = ["gallery.robust_from=scratch", "gallery.robust_epochs=16"]
    rows = {}
    print(
        "point          robust val  minutes  "
        + "  ".join(f"{j:>14}" for j in ("robust-resnet", "robust-cnn"))
        + "      FD  diversity  bar"
    )
    for name, overrides in points.items():
        rows[name] = r = point(cfg, standard, a.out / name, [*overrides, *a.set])
        rec = "  ".join(f"{r['recognised'].get(j, float('nan')):>14.1%}" for j in ("robust-resnet", "robust-cnn"))
        print(
            f"{name:<14} {r['robust_val_accuracy']:>10.4f} {r['robust_train_minutes']:>8.1f}  {rec}  "
            f"{r['frechet']:>6.1f}  {r['diversity']:>9.2f}  {'yes' if r['meets_bar'] else 'no'}"
        )
        atomic_write_json({"standard": str(standard), "bar": BAR, "points": rows}, a.out / "finetune.json")


if __name__ == "__main__":
    main()
