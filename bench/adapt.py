"""Adapting a trained model to new classes with few photos, against training from scratch and a linear probe.

    AHE_DATA=../shared/data/ahe64 python bench/adapt.py [--out bench-adapt] [--seeds 0 1 2] [--ns 10 25 50 100]

From the AHE64 train split's group-aware division (the default `data.*` settings: the 10-class validation photos
are never trained on by any model here):

1. a default-recipe model is trained on the 7 old classes (their training photos only): `OUT/old7/`;
2. for each seed and each N, an adaptation set is drawn from the training photos: `--old-photos` photos of each old
   class and N of each of the 3 new classes (`NEW`), whole image groups at a time (no burst or near-duplicate
   split); on it, with the same photos for each method (paired):
   - `adapt`: `heritagelens train --from OUT/old7` (the 'adapt' recipe: the head fitted, then the whole network);
   - `probe`: the fitted head alone (a frozen-feature linear probe, and one epoch of the head);
   - `scratch`: the default recipe from random weights;
   - at N=25 only, the recipe's rivals (`adapt-lr02`, `sgd-probe`: see `METHODS`);
3. each model is measured on the 10-class group-aware validation photos: accuracy on the new classes and on the old
   ones, beside the 7-class model's accuracy on those old-class photos (7-way) and a default-recipe model of all 10
   classes trained on every training photo (`OUT/all10/`); and, of the old-class photos, how many the old classes'
   logits alone get right (7-way: are the features still there?) and how many are called one of the new classes.

Every run trains as `heritagelens train` does, its own group-aware validation split carved from its adaptation set.
Results go to OUT/adapt.json (runs already there are kept: a stopped benchmark continues); `--table` prints the
markdown tables from it, `--remeasure` measures every run folder there again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from heritagelens.config import Config, preset
from heritagelens.data.split import prepare
from heritagelens.files import atomic_write_json
from heritagelens.model.checkpoint import load_model
from heritagelens.model.inference import predict_logits
from heritagelens.train.runs import train_run

NEW = ("altar", "gargoyle", "vault")
"""The classes the 7-class model never sees: one interior furnishing, one sculpture, one ceiling (chosen before
any measurement)."""

NO_LWF = ["train.source_teacher=false", "train.kd_weight=0"]
LOW = ["train.lr=0.01", "train.muon_lr=0.005"]
V1 = [
    "train.head_fit=false",
    "train.balanced=false",
    "train.probe_epochs=3",
    "train.lr=0.02",
    "train.muon_lr=0.02",
]
METHODS = {
    "adapt": lambda old: [f"train.init_from={old}"],
    "probe": lambda old: [
        f"train.init_from={old}",
        *NO_LWF,
        "train.epochs=1",
        "train.probe_epochs=1",
        "train.min_steps=0",
    ],
    "scratch": lambda old: [],
    "adapt-nolwf": lambda old: [f"train.init_from={old}", *NO_LWF],
    "adapt-even": lambda old: [f"train.init_from={old}", "train.balanced=false"],
    "adapt-low": lambda old: [f"train.init_from={old}", *LOW],
    "adapt-bn": lambda old: [f"train.init_from={old}", "train.frozen_bn=true"],
    "adapt-nolwf-low": lambda old: [f"train.init_from={old}", *NO_LWF, *LOW],
    "adapt-nolwf-bn": lambda old: [f"train.init_from={old}", *NO_LWF, "train.frozen_bn=true"],
    "sgd-probe": lambda old: [f"train.init_from={old}", *NO_LWF, *V1],
    "adapt-lr02": lambda old: [f"train.init_from={old}", "train.lr=0.02", "train.muon_lr=0.02"],
    "adapt-muon01": lambda old: [f"train.init_from={old}", "train.muon_lr=0.01"],
    "adapt-ema": lambda old: [f"train.init_from={old}", "train.ema_decay=0.98"],
    "adapt-long": lambda old: [f"train.init_from={old}", "train.min_steps=400"],
    "adapt-kd07": lambda old: [f"train.init_from={old}", "train.kd_weight=0.7"],
}
"""`adapt`: the 'adapt' recipe; `probe`: its fitted head alone (and one epoch of the head, features frozen, no
teacher); `scratch`: the default recipe from random weights. The recipe's rivals: `adapt-nolwf` (no teaching by the
source model), `adapt-even` (no class weights), `adapt-low` (a fifth of the rate for the head, a tenth for the
filters), `adapt-bn` (batch norm statistics frozen), the last two without the teacher too, `sgd-probe` (the first
recipe tried: no fitted head, no class weights, no teacher, a 3-epoch gradient probe, rate 0.02), `adapt-lr02`
(rate 0.02 for the head and the filters, not 0.05), `adapt-muon01` (0.01 for the filters alone), `adapt-ema` (the
weights averaged, decay 0.98 a step), `adapt-long` (400 steps at least, not 200) and `adapt-kd07` (the teacher 70%
of the loss, not half)."""
ONLY_AT_25 = tuple(
    m for m in METHODS if m not in ("adapt", "probe", "scratch", "adapt-lr02", "adapt-muon01", "adapt-ema")
)
"""Methods measured at N=25 only (the others at any N asked for)."""


def link_folder(
    root: Path, files: list[str], labels: list[int], classes: list[str], folder: Path, copy: bool = False
) -> Path:
    """`folder/train/<class>/` of symbolic links to `files` (paths below `root`), or copies of them, made once."""
    if (folder / "train").exists():
        return folder
    tmp = folder.with_name(folder.name + ".making")
    for f, y in zip(files, labels):
        d = tmp / "train" / classes[y]
        d.mkdir(parents=True, exist_ok=True)
        if copy:  # a sort reads no symbolic link
            shutil.copyfile(root / f, d / Path(f).name)
        else:
            (d / Path(f).name).symlink_to((root / f).resolve())
    tmp.rename(folder)
    return folder


def draw(idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, cls: int, n: int, rng) -> list[int]:
    """About `n` of `idx`'s photos of class `cls`, whole groups at a time in a random order (at least `n`)."""
    mine = idx[labels[idx] == cls]
    chosen: list[int] = []
    for g in rng.permutation(np.unique(groups[mine])):
        if len(chosen) >= n:
            break
        chosen += mine[groups[mine] == g].tolist()
    return chosen


def measure(checkpoint: Path, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    model, own, ckpt = load_model(checkpoint)
    assert own == classes, (own, classes)
    tta = Config.from_dict(ckpt["config"]).train.tta
    logits = predict_logits(model, images, tta=tta)
    pred = logits.argmax(1)
    new = torch.tensor([classes[int(y)] in NEW for y in labels])
    right = pred == labels
    olds = torch.tensor([c not in NEW for c in classes])
    among_old = torch.where(olds, logits, torch.tensor(float("-inf"))).argmax(1)  # the old classes' logits alone
    return {
        "accuracy": float(right.float().mean()),
        "new": float(right[new].float().mean()),
        "old": float(right[~new].float().mean()),
        "n_new": int(new.sum()),
        "n_old": int((~new).sum()),
        "old_7way": float((among_old == labels)[~new].float().mean()),
        "old_as_new": float((~olds[pred])[~new].float().mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench-adapt")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ns", type=int, nargs="+", default=[10, 25, 50, 100])
    p.add_argument("--old-photos", type=int, default=100, help="photos of each old class in an adaptation set")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--table", action="store_true", help="print the tables of OUT/adapt.json and stop")
    p.add_argument("--review", action="store_true", help="only the review loop, from the adapted N=25 models")
    p.add_argument("--decisions", type=int, default=200)
    p.add_argument("--remeasure", action="store_true", help="measure again every run whose folder is in OUT/runs")
    a = p.parse_args()
    out = Path(a.out)
    results_file = out / "adapt.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {"runs": {}}
    if a.table:
        print(tables(results))
        return
    root = Path(os.environ.get("AHE_DATA", "../shared/data/ahe64")).resolve()
    full = prepare(Config().override([f"data.root={root}"]))
    s = full.split
    labels, groups = s.labels.numpy(), full.groups
    new_ids = [s.classes.index(c) for c in NEW]
    old_classes = [c for c in s.classes if c not in NEW]
    val_images, val_labels = s.images[full.val_idx], s.labels[full.val_idx]

    old_idx = full.train_idx[~np.isin(labels[full.train_idx], new_ids)]
    old_root = link_folder(
        root,
        [s.files[i] for i in old_idx],
        [old_classes.index(s.classes[labels[i]]) for i in old_idx],
        old_classes,
        out / "data-old7",
    )
    old_run = out / "old7"
    if not (old_run / "last.pt").exists():
        t0 = time.perf_counter()
        train_run(preset("default").override([f"data.root={old_root}"]), old_run, progress=False)
        results["old7_minutes"] = (time.perf_counter() - t0) / 60
    old_mask = ~np.isin(val_labels.numpy(), new_ids)
    if "old7" not in results:
        model, _, _ = load_model(old_run)
        pred = predict_logits(model, val_images[old_mask], tta=True).argmax(1)
        old_labels = torch.tensor([old_classes.index(s.classes[int(y)]) for y in val_labels[old_mask]])
        results["old7"] = {"old": float((pred == old_labels).float().mean()), "n_old": int(old_mask.sum())}
        results["old7"]["classes"], results["new_classes"] = old_classes, list(NEW)
        atomic_write_json(results, results_file)
    print(f"7-class model on the old classes' validation photos: {results['old7']['old']:.2%}", flush=True)
    all_run = out / "all10"  # the reference: the default recipe on every training photo of the 10 classes
    if not (all_run / "last.pt").exists():
        train_run(preset("default").override([f"data.root={root}"]), all_run, progress=False)
    if "all10" not in results:
        results["all10"] = measure(all_run / "last.pt", val_images, val_labels, s.classes)
        results["all10"]["photos"] = len(full.train_idx)
        atomic_write_json(results, results_file)
    if a.remeasure:
        for key, row in results["runs"].items():
            run = out / "runs" / key.replace("/", "-") / "last.pt"
            if run.exists():
                row |= measure(run, val_images, val_labels, s.classes)
        atomic_write_json(results, results_file)
        print(tables(results))
        return

    if a.review:
        for seed in a.seeds:
            model = out / "runs" / f"adapt-n25-s{seed}" / "last.pt"
            for name, sets in (
                ("learn", []),
                ("learn-no-teacher", ["train.kd_weight=0", "train.source_teacher=false"]),
            ):
                key = f"{name}/s{seed}"
                if key not in results.setdefault("review", {}):
                    results["review"][key] = review_loop(out, root, full, model, a.decisions, seed, name, sets)
                    atomic_write_json(results, results_file)
                print(key, results["review"][key], flush=True)
        print(tables(results))
        return
    source = preset("adapt").model  # the adapted model is the 7-class model's own, the default model
    for seed in a.seeds:
        for n in a.ns:
            rng = np.random.default_rng(1000 * seed + n)
            chosen = []
            for c in range(len(s.classes)):
                chosen += draw(full.train_idx, labels, groups, c, n if c in new_ids else a.old_photos, rng)
            data = link_folder(
                root,
                [s.files[i] for i in chosen],
                [int(labels[i]) for i in chosen],
                s.classes,
                out / f"data-n{n}-s{seed}",
            )
            for method in a.methods:
                if method in ONLY_AT_25 and n != 25:
                    continue
                key = f"{method}/n{n}/s{seed}"
                if key in results["runs"]:
                    continue
                recipe = "default" if method == "scratch" else "adapt"
                sets = [f"data.root={data}", f"train.seed={seed}", *METHODS[method](old_run.resolve() / "last.pt")]
                cfg = preset(recipe).override(sets)
                assert cfg.model == source
                run = out / "runs" / key.replace("/", "-")
                t0 = time.perf_counter()
                trained = train_run(cfg, run, progress=False)
                seconds = time.perf_counter() - t0
                row = measure(run / "last.pt", val_images, val_labels, s.classes)
                row |= {
                    "seconds": seconds,
                    "photos": len(chosen),
                    "trained_on": len(trained.prep.train_idx),
                    "new_photos": int(np.isin(labels[chosen], new_ids).sum()),
                    "epochs": trained.config.train.epochs,
                }
                results["runs"][key] = row
                atomic_write_json(results, results_file)
                print(
                    f"{key}: new {row['new']:.2%} old {row['old']:.2%} all {row['accuracy']:.2%} "
                    f"({row['photos']} photos, {seconds:.0f} s)",
                    flush=True,
                )
    print(tables(results))


def review_loop(out: Path, root: Path, full, model: Path, decisions: int, seed: int, name: str, sets: list) -> dict:
    """The review loop on the source-held-out photos (each class's newest Flickr uploads, never trained on): sorted
    by `model`, the first `decisions` unsure ones (in a random order) filed by their true class as a person would,
    then `learn`; accuracy on the rest of the unsure photos before and after."""
    from heritagelens.jobs.learn import learn
    from heritagelens.sort.journal import UNCERTAIN
    from heritagelens.sort.review import decide, sorted_rows
    from heritagelens.sort.sorter import sort_photos

    s = full.split
    photos, sort_out, learnt = out / "review-photos", out / f"review-sort-s{seed}", out / f"review-{name}-s{seed}"
    if not photos.exists():
        files, ys = [s.files[i] for i in full.source_idx], [int(s.labels[i]) for i in full.source_idx]
        link_folder(root, files, ys, s.classes, photos, copy=True)
    shutil.rmtree(sort_out, ignore_errors=True)
    shutil.rmtree(learnt, ignore_errors=True)
    sort_photos(model, photos / "train", sort_out, progress=False)
    rows = sorted_rows(sort_out, s.classes)
    unsure = sorted(f for f, r in rows.items() if r["copied_to"].split("/")[0] == UNCERTAIN)
    rng = np.random.default_rng(seed)
    order = [unsure[i] for i in rng.permutation(len(unsure))]
    n = min(decisions, len(order) // 2)
    for f in order[:n]:
        decide(sort_out, f, f.split("/")[0], s.classes)
    rest = order[n:]

    def right(rows: dict) -> int:
        return sum(rows[f]["class"] == f.split("/")[0] for f in rest)

    before = right(sorted_rows(sort_out, s.classes))
    t0 = time.perf_counter()
    learned = learn(sort_out, learnt, sets=sets, progress=False)
    seconds = time.perf_counter() - t0
    after = right(sorted_rows(sort_out, s.classes))
    return {
        "photos": len(rows),
        "unsure": len(unsure),
        "decisions": n,
        "rest": len(rest),
        "before": before / len(rest),
        "after": after / len(rest),
        "held_out": learned.held_out,
        "held_before": learned.right_before / learned.held_out,
        "held_after": learned.right_after / learned.held_out,
        "still_unsure": sum(1 for f in rest if sorted_rows(sort_out, s.classes)[f]["copied_to"].startswith(UNCERTAIN)),
        "seconds": seconds,
    }


def tables(results: dict) -> str:
    runs = results["runs"]
    methods = [m for m in METHODS if any(k.startswith(m + "/") for k in runs)]
    ns = sorted({int(k.split("/")[1][1:]) for k in runs})
    old7 = results.get("old7", {}).get("old")
    lines = [
        f"7-class model on the old classes' validation photos ({results['old7']['n_old']} photos, 7-way): {old7:.2%}"
        if old7 is not None
        else "",
        "",
        "| N new photos / class | method | new classes | old classes | old vs 7-class | all 10 | old photos: 7-way "
        "| old photos called new | seconds | photos |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = results.get("all10")
    if ref:
        lines.insert(
            -2,
            f"10-class model, all {ref['photos']} training photos: new classes {ref['new']:.1%}, old {ref['old']:.1%}, "
            f"all 10 {ref['accuracy']:.1%}\n",
        )
    for n in ns:
        for m in methods:
            rows = [v for k, v in runs.items() if k.startswith(f"{m}/n{n}/")]
            if not rows:
                continue

            def mean(key: str, rows: list = rows) -> float:
                return statistics.mean(r[key] for r in rows)

            def spread(key: str, rows: list = rows) -> str:
                vals = [r[key] for r in rows]
                return f"{statistics.mean(vals):.1%}" + (f" ({min(vals):.1%}-{max(vals):.1%})" if len(vals) > 1 else "")

            delta = f"{(mean('old') - old7) * 100:+.1f} pt" if old7 is not None else ""
            why = [f"{mean(k):.1%}" if all(k in r for r in rows) else "" for k in ("old_7way", "old_as_new")]
            lines.append(
                f"| {n} | {m} ({len(rows)} seeds) | {spread('new')} | {spread('old')} | {delta} | {spread('accuracy')} "
                f"| {why[0]} | {why[1]} | {statistics.median(r['seconds'] for r in rows):.0f} | {int(mean('photos'))} |"
            )
    for key, r in results.get("review", {}).items():
        if key == next(iter(results["review"])):
            lines += [
                "",
                "| review loop | photos | unsure | decisions | rest: before | rest: after | still unsure | held-out "
                "decisions: before -> after | seconds |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
        lines.append(
            f"| {key} | {r['photos']} | {r['unsure']} | {r['decisions']} | {r['before']:.1%} | {r['after']:.1%} "
            f"| {r['still_unsure']} | {r['held_before']:.1%} -> {r['held_after']:.1%} ({r['held_out']}) "
            f"| {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
