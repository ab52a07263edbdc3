"""Two recipes compared on the same photos, seed by seed: the paired difference of their accuracies on the group-aware
validation, the source-held-out validation and the outside photos.

    AHE_DATA=../shared/data/ahe64 python bench/paired.py --a RUN_A0 RUN_A1 RUN_A2 --b RUN_B0 RUN_B1 RUN_B2 \\
        [--names default zoom] [--tta/--no-tta] [--ensemble]

Each RUN is a run folder (its `last.pt`) or a model folder; the i-th run of --a is paired with the i-th of --b (the
same seed). Every split is the photos both were measured on (the runs' own validation splits must be the same: the
split is seeded apart from training). Prints, per split, each recipe's mean accuracy over seeds, the mean paired
difference with its sample spread over seeds, and a 95% interval of that difference from a paired bootstrap over the
photos (the same resampled photos for every seed and both recipes), so a difference of a point on 703 photos is told
from noise. With `--ensemble`, B is the ensemble of the --b runs (their mean softmax), set beside each run of A.
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np
import torch

from heritagelens.data import dataset
from heritagelens.model.checkpoint import checkpoint_file
from heritagelens.model.inference import predict_logits
from heritagelens.model.trained import Trained

SPLITS = ("val", "source", "outside")


def photos(model: Trained, split: str, root: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The images, labels and files of `split` as `model` was measured on it."""
    if split == "outside":
        folder = dataset.find_outside("", root, model.classes)
        if folder is None:
            raise SystemExit(f"no outside photos beside {root}")
        sp = dataset.load_folder(folder, model.classes)
        return sp.images, sp.labels, sp.files
    prep = model.prepared()
    idx = prep.held_out(split)
    return prep.split.images[idx], prep.split.labels[idx], [prep.split.files[i] for i in idx]


def probabilities(run: str, root: str, tta: bool) -> dict[str, tuple[list[str], torch.Tensor, torch.Tensor]]:
    """Per split: the files, the run's model's softmax (N, C) and the true labels."""
    model = Trained.load(checkpoint_file(run), root)
    out = {}
    for split in SPLITS:
        images, labels, files = photos(model, split, root)
        out[split] = (files, torch.softmax(predict_logits(model.model, images, tta=tta).double(), 1), labels)
    return out


def correct(members: list[dict], split: str) -> tuple[list[str], np.ndarray]:
    """The files of `split` and whether the mean softmax of `members` (one run's, or an ensemble's) got each right."""
    files, _, labels = members[0][split]
    mean = torch.stack([m[split][1] for m in members]).mean(0)
    return files, (mean.argmax(1) == labels).numpy()


def paired(a: list[np.ndarray], b: list[np.ndarray], draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean over seeds of accuracy(b) - accuracy(a), and its 95% paired-bootstrap interval over the photos."""
    a, b = np.stack(a).astype(float), np.stack(b).astype(float)  # (seeds, photos)
    diff = (b - a).mean(0)  # per photo, averaged over seeds
    rng = np.random.default_rng(seed)
    boots = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(draws)]
    return float(diff.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", nargs="+", required=True, help="runs of the first recipe, one per seed")
    p.add_argument("--b", nargs="+", required=True, help="runs of the second recipe, in the same seed order")
    p.add_argument("--names", nargs=2, default=["A", "B"])
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--ensemble", action="store_true", help="B is one model: the mean softmax of the --b runs, paired with each A"
    )
    a = p.parse_args()
    if len(a.a) != len(a.b) and not a.ensemble:
        p.error("--a and --b pair run by run: give as many of each")
    root = os.environ.get("AHE_DATA", "data/ahe64")
    probs = {name: [probabilities(r, root, a.tta) for r in rs] for name, rs in zip(a.names, (a.a, a.b))}
    groups = {name: [[m] for m in ms] for name, ms in probs.items()}  # each run alone...
    if a.ensemble:  # ...or the ensemble's answer beside every run of A
        groups[a.names[1]] = [probs[a.names[1]]] * len(a.a)
    runs = {name: [{split: correct(ms, split) for split in SPLITS} for ms in g] for name, g in groups.items()}
    first, second = a.names
    print(f"{first}: {' '.join(a.a)}\n{second}: {' '.join(a.b)}\n{'TTA' if a.tta else 'one view'}, {root}")
    print(f"\n| split | photos | {first} | {second} | {second} - {first} (seeds) | paired 95% interval |")
    print("|---|---:|---:|---:|---:|---:|")
    for split in SPLITS:
        files = {tuple(run[split][0]) for rs in runs.values() for run in rs}
        if len(files) != 1:
            raise SystemExit(f"{split}: the runs were not measured on the same photos")
        acc = {name: [float(run[split][1].mean()) for run in rs] for name, rs in runs.items()}
        per_seed = [y - x for x, y in zip(acc[first], acc[second])]
        spread = f" ± {100 * statistics.stdev(per_seed):.2f}" if len(per_seed) > 1 else ""
        mean, low, high = paired([r[split][1] for r in runs[first]], [r[split][1] for r in runs[second]])
        print(
            f"| {split} | {len(next(iter(files)))} | {statistics.mean(acc[first]):.2%} | "
            f"{statistics.mean(acc[second]):.2%} | {100 * mean:+.2f}{spread} | {100 * low:+.2f} to {100 * high:+.2f} |"
        )


if __name__ == "__main__":
    main()
