"""Evaluating and calibrating a checkpoint on its validation splits, the official test split or the outside photos,
into files.

For each evaluated split a run folder gets `eval-<split>.json`, `eval-<split>.txt`, `confusion-<split>.png` and, once
the checkpoint is calibrated, `reliability-<split>.png`; evaluated on 'val', a calibrated checkpoint also gets
`risk-coverage.json` and `.png`: what each confidence threshold files, and how accurately, one view as `sort` sees;
on 'outside', `risk-coverage-outside.json` and `.png`, the same measured on photos from other sources.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import SPLIT_NAMES, Config
from ..data import dataset
from ..figures import confusion_figure, figure_image, png_bytes, reliability_figure, risk_coverage_figure
from ..files import atomic_save, atomic_write_bytes, atomic_write_json, atomic_write_text
from ..model.calibration import Calibration, calibrate, ece, filed_at
from ..model.card import check_classes
from ..model.checkpoint import CheckpointError, checkpoint_file, is_model_folder, temperature
from ..model.inference import predict_logits
from ..model.metrics import EvalResult, evaluate_logits, interval_text, wilson_interval
from ..model.trained import Trained
from ..progress import say


def evaluation_splits(model: Trained, test: bool = False) -> list[str]:
    """'val'; 'source' when the model's split holds photos of other sources out of training; with `test`, 'test'
    when the data root has a test split; and 'outside' when there are outside photos to evaluate on."""
    cfg, prep = model.config, model.prepared()
    outside = dataset.find_outside(cfg.data.outside, cfg.data.root, model.classes) is not None
    test = test and dataset.has_split(cfg.data.root, "test")
    return ["val"] + ["source"] * bool(len(prep.source_idx)) + ["test"] * test + ["outside"] * outside


def outside_folder(cfg: Config, classes: list[str], checkpoint: Path | str) -> Path:
    """The folder of outside photos `cfg` names or finds (`data.find_outside`); `DataError` when there is none."""
    folder = dataset.find_outside(cfg.data.outside, cfg.data.root, classes)
    if folder is None:
        raise dataset.DataError(
            f"{checkpoint}: no outside photos to evaluate on: give --outside DIR (a folder of class folders of photos "
            f"from other sources than the training's), or place them in {Path(cfg.data.root)}-outside"
        )
    return folder


def evaluate_checkpoint(
    checkpoint: Path | str,
    split: str,
    root: Path | str | None = None,
    tta: bool | None = None,
    out_dir: Path | str | None = None,
    data_overrides: list[str] = (),
) -> EvalResult:
    """`evaluate` the model of a checkpoint, its data at `root` with `data_overrides` (`data.*` assignments)."""
    return evaluate(Trained.load(checkpoint, root, data_overrides), split, tta, out_dir)


def evaluate(trained: Trained, split: str, tta: bool | None = None, out_dir: Path | str | None = None) -> EvalResult:
    """Evaluate a model on 'val' (its own group-aware validation split), 'source' (its source-held-out validation
    split), 'test' (the data root's test/) or 'outside' (the folder `data.outside` names or finds); unreadable test
    or outside files are listed. With `out_dir`, its files are written there (see the module's words)."""
    checkpoint, model, classes, ckpt, cfg = trained.path, trained.model, trained.classes, trained.ckpt, trained.config
    say(f"evaluating {checkpoint} on {split} ({SPLIT_NAMES.get(split, split)})")
    tta = cfg.train.tta if tta is None else tta
    folder = ""
    if split in ("val", "source"):
        prep = trained.prepared()
        idx = prep.held_out(split)
        if len(idx) == 0:
            raise dataset.DataError(f"{checkpoint}: its {split} split is empty (data.source_val is '{prep.source}')")
        images, labels, files = prep.split.images[idx], prep.split.labels[idx], [prep.split.files[i] for i in idx]
    else:
        data_classes = (
            dataset.list_classes(cfg.data.root, "train") if dataset.has_split(cfg.data.root, "train") else classes
        )
        check_classes(classes, data_classes, checkpoint)
        if split == "outside":
            where = outside_folder(cfg, classes, checkpoint)
            sp = dataset.load_folder(where, classes, cfg.data.on_bad_file, cfg.data.cache_dir or None)
            folder = str(where.resolve().parent)
        else:
            sp = dataset.load_split(cfg.data.root, split, classes, cfg.data.on_bad_file, cfg.data.cache_dir or None)
        images, labels, files = sp.images, sp.labels, sp.files
    say(f"{split}: {len(labels)} photos{', each in 4 views (TTA)' if tta else ''}")
    logits = predict_logits(model, images, tta=tta, progress=split)
    result = evaluate_logits(logits, labels, classes, split, files, tta)
    result.folder = folder
    if split == "source":
        result.held_out = dataset.source_description(cfg.data.source_val, cfg.data.source_ranges)
    if split == "outside":
        result.held_out = str(where.resolve())
    if split in ("test", "outside"):
        result.unreadable = [(str(f), problem) for f, problem in sp.bad]
    t = temperature(ckpt, tta)
    if t is not None:
        fitted = ckpt["calibration"]["tta" if tta else "plain"]
        same = split == fitted["split"] and trained.own_data
        result.calibration = {
            "temperature": t,
            "split": split,
            "fitted_on": fitted["split"],
            "ece_before": ece(torch.softmax(logits.double(), 1), labels),
            "ece_after": ece(torch.softmax(logits.double() / t, 1), labels),
            "ece_held_out": fitted["ece_held_out"] if same else None,
        }
    if out_dir is not None:
        write_eval(result, out_dir)
        if t is not None:
            title = f"{split} ({result.n} images{', TTA' if tta else ''}), temperature fitted on {fitted['split']}"
            png = png_bytes(figure_image(reliability_figure(logits, labels, t, title)))
            atomic_write_bytes(png, Path(out_dir) / f"reliability-{split}.png")
        held = ckpt["calibration"].get("plain", {}).get("held_out") if t is not None else None
        if split == "val" and held and trained.own_data:
            write_risk_coverage(held, classes, out_dir)
        if split == "outside" and temperature(ckpt, False) is not None:
            one_view = predict_logits(model, images, tta=False) if tta else logits
            write_risk_coverage(outside_predictions(one_view, labels, ckpt), classes, out_dir, "outside")
    return result


def outside_predictions(one_view: torch.Tensor, labels: torch.Tensor, ckpt: dict) -> dict[str, list]:
    """Each outside photo's calibrated top probability (one view, the temperature fitted on validation: nothing is
    fitted on these photos), predicted and true class, as `calibration.held_out_predictions` gives them."""
    conf, pred = torch.softmax(one_view.double() / temperature(ckpt, False), 1).max(1)
    return {"confidence": [round(float(c), 5) for c in conf], "predicted": pred.tolist(), "label": labels.tolist()}


THRESHOLDS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


RISK_VIEWS = {
    "val": (
        "risk-coverage",
        "held-out photos",
        "one view, calibrated with a temperature fitted on the other half of the split",
    ),
    "outside": (
        "risk-coverage-outside",
        "outside photos",
        "one view, calibrated with the temperature fitted on the group-aware validation split",
    ),
}
"""Per split: the files' stem, what its photos are, and how their probabilities were made."""


def write_risk_coverage(held: dict[str, list], classes: list[str], out_dir: Path | str, split: str = "val") -> None:
    """`risk-coverage.json` (or `risk-coverage-outside.json`): coverage and accuracy at `THRESHOLDS`, overall and
    per predicted class, and its figure."""
    stem, photos, view = RISK_VIEWS[split]

    def row(t, k=None):
        f = filed_at(held, t, k)
        return {"threshold": t, "n": f.n, "filed": f.filed, "coverage": f.coverage, "accuracy": f.accuracy}

    d = {
        "split": split,
        "view": view,
        "n": len(held["label"]),
        "rows": [row(t) for t in THRESHOLDS],
        "per_class": {c: [row(t, k) for t in THRESHOLDS] for k, c in enumerate(classes)},
    }
    atomic_write_json(d, Path(out_dir) / f"{stem}.json")
    title = f"{split} ({d['n']} {photos}, one view): filing the photos the model is sure of"
    png = png_bytes(figure_image(risk_coverage_figure(held, classes, 0.5, title)))
    atomic_write_bytes(png, Path(out_dir) / f"{stem}.png")


def calibrate_checkpoint(checkpoint: Path | str, root: Path | str | None = None) -> dict[str, Calibration]:
    """`calibrate` the model of a checkpoint file or run folder, its data at `root` when given."""
    path = checkpoint_file(checkpoint)
    if is_model_folder(path):  # its card is not a checkpoint to rewrite
        raise CheckpointError(f"{path}: a model folder only serves predictions: calibrate its checkpoint")
    return calibrate_model(Trained.load(path, root))


def calibrate_model(trained: Trained) -> dict[str, Calibration]:
    """Fit the temperature of the model's predictions with and without TTA on its validation split and store both
    in its checkpoint (rewritten atomically, and in `trained.ckpt`), so that every later prediction of it can use
    them."""
    path, model = trained.path, trained.model
    say(f"calibrating {path} on its validation split")
    prep = trained.prepared()
    images, labels = prep.split.images[prep.val_idx], prep.split.labels[prep.val_idx]
    if len(labels) == 0:
        raise dataset.DataError(f"{path}: its validation split is empty: nothing to calibrate on")
    say(f"val: {len(labels)} photos, one view then 4 (TTA), a temperature for each")
    cals = {}
    for name, tta in (("plain", False), ("tta", True)):
        logits = predict_logits(model, images, tta=tta, progress="TTA" if tta else "one view")
        cals[name] = calibrate(logits, labels, "val", tta)
    trained.ckpt = {**trained.ckpt, "calibration": {k: c.to_dict() for k, c in cals.items()}}
    atomic_save(trained.ckpt, path)
    return cals


def write_eval(result: EvalResult, out_dir: Path | str) -> None:
    out = Path(out_dir)
    atomic_write_json(result.to_dict(), out / f"eval-{result.split}.json")
    atomic_write_text(result.report() + "\n", out / f"eval-{result.split}.txt")
    png = png_bytes(figure_image(confusion_figure(result)))
    atomic_write_bytes(png, out / f"confusion-{result.split}.png")


FEW_PHOTOS = 30
"""A class with fewer validation photos than this gets a word that its figure means little (its interval shows how
little): with 30 photos an accuracy of 90% could be anywhere from 74% to 97%."""


def class_lines(result: EvalResult, trained_on: dict[str, int]) -> list[str]:
    """One line per class of `result`: its accuracy (recall) on its validation photos with the 95% interval, and how
    many photos it was trained on; a class with fewer than `FEW_PHOTOS` validation photos is said to have too few."""
    lines = []
    w = max(len(c) for c in result.classes)
    for i, c in enumerate(result.classes):
        n, right = sum(result.confusion[i]), result.confusion[i][i]
        if n == 0:
            lines.append(f"  {c:<{w}}  no validation photos ({trained_on.get(c, 0)} to train on): not measured")
            continue
        few = "  <- too few photos for this figure to mean much" if n < FEW_PHOTOS else ""
        lines.append(
            f"  {c:<{w}}  {right / n:6.1%} of {n:3d} validation photos right "
            f"(95% interval {interval_text(wilson_interval(right, n))}; {trained_on.get(c, 0)} trained on){few}"
        )
    return lines


def adapted_text(trained: Trained) -> str:
    """What `train --from` says when done: what the model was adapted from, and each class's accuracy on the
    group-aware validation photos with its interval, classes with too few photos named."""
    origin = trained.ckpt["adapted_from"]
    prep = trained.prepared()
    result = evaluate(trained, "val")
    labels = prep.split.labels[prep.train_idx]
    trained_on = {c: int((labels == i).sum()) for i, c in enumerate(trained.classes)}
    kept, new = origin["kept"], origin["new"]
    head = (
        f"adapted from {origin['model']} ({len(origin['classes'])} classes): "
        + (f"{len(kept)} class(es) kept their head rows ({', '.join(kept)}), " if kept else "")
        + f"{len(new)} new ({', '.join(new)})"
    )
    few = [c for i, c in enumerate(result.classes) if sum(result.confusion[i]) < FEW_PHOTOS]
    tail = (
        [
            f"heritagelens: warning: {len(few)} class(es) with fewer than {FEW_PHOTOS} validation photos "
            f"({', '.join(few)}): their figures are rough (see the intervals); more photos make them firmer"
        ]
        if few
        else []
    )
    overall = (
        f"accuracy on {result.name}: {result.accuracy:.1%} of {result.n} photos "
        f"(95% interval {interval_text(result.interval)}), by class:"
    )
    return "\n".join([head, overall, *class_lines(result, trained_on), *tail])
