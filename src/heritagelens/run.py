"""Workflows that touch the disk: preparing the data split, a training run and its folder, evaluating a checkpoint.

A run folder holds `config.json`, `split.json`, `metrics.csv`, `train.log`, `last.pt`, `best.pt`, optional
`epoch-N.pt` snapshots, and for each evaluated split `eval-<split>.json` and `confusion-<split>.png`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import data
from .calibrate import Calibration, calibrate, ece, reliability_figure
from .checkpoint import (
    CheckpointError,
    check_classes,
    checkpoint_file,
    load_model,
    model_from_checkpoint,
    read_checkpoint,
    resume_state,
    save_checkpoint,
    temperature,
)  # fmt: skip
from .config import ROBUST, SGD, Config, DataConfig
from .distributed import from_main, init_world, world
from .evaluate import EvalResult, confusion_figure, evaluate_logits
from .figures import figure_image, png_bytes
from .flops import training_flops
from .io import atomic_save, atomic_write_bytes, atomic_write_json, atomic_write_text
from .models import build_model, conv_layer_names
from .precision import resolve
from .train import EpochResult, TrainState, epoch_side, fit, new_state, predict_logits


@dataclass
class Prepared:
    """The train split decoded and divided into training, group-aware validation and source-held-out validation."""

    split: data.Split
    groups: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    source_idx: np.ndarray
    source: str = "none"

    def held_out(self, split: str) -> np.ndarray:
        """The indices of 'val' (group-aware) or 'source' (source-held-out) validation."""
        return self.val_idx if split == "val" else self.source_idx

    def record(self) -> dict:
        """What a run's `split.json` holds: the summary and the files of both validations."""
        files = self.split.files
        return {**self.summary(), "val_files": [files[i] for i in self.val_idx],
                "source_files": [files[i] for i in self.source_idx]}  # fmt: skip

    def summary(self) -> dict:
        labels = self.split.labels.numpy()

        def count(idx: np.ndarray) -> dict[str, int]:
            return {c: int((labels[idx] == i).sum()) for i, c in enumerate(self.split.classes)}

        return {
            "method": "StratifiedGroupKFold over groups of near-duplicates, Flickr bursts and Wikimedia name series",
            "images": len(labels),
            "groups": int(self.groups.max() + 1) if len(self.groups) else 0,
            "largest_group": int(np.bincount(self.groups).max()) if len(self.groups) else 0,
            "train_images": len(self.train_idx),
            "val_images": len(self.val_idx),
            "source_held_out": self.source,
            "source_images": len(self.source_idx),
            "unreadable_skipped": len(self.split.bad),
            "per_class": count(np.arange(len(labels))),
            "train_per_class": count(self.train_idx),
            "val_per_class": count(self.val_idx),
            "source_per_class": count(self.source_idx),
        }


_GROUPS: dict[tuple, np.ndarray] = {}
"""Groups already found in this process (the main job prepares the same split several times)."""


def prepare(cfg: Config) -> Prepared:
    dc = cfg.data
    split = data.load_split(dc.root, "train", on_bad_file=dc.on_bad_file, cache_dir=dc.cache_dir or None)
    key = (tuple(split.files), dc.near_dup_corr, dc.flickr_id_window, int(split.images[..., ::8, ::8].sum()))
    if key not in _GROUPS:
        _GROUPS.clear()  # one split at a time is all a process needs
        _GROUPS[key] = data.find_groups(split.files, split.images, dc.near_dup_corr, dc.flickr_id_window)
    groups, labels = _GROUPS[key], split.labels.numpy()
    src = data.source_holdout(split.files, labels, groups, dc.source_val, dc.source_ranges)
    rest = np.setdiff1d(np.arange(len(labels)), src)
    tr, va = data.group_split(labels[rest], groups[rest], dc.val_folds, dc.val_fold, dc.split_seed)
    tr, va = rest[tr], rest[va]
    if cfg.train.limit_train:
        rng = np.random.default_rng(cfg.train.seed)
        tr = rng.permutation(tr)[: cfg.train.limit_train]
        va = rng.permutation(va)[: max(1, cfg.train.limit_train // 4)]
        src = rng.permutation(src)[: max(1, cfg.train.limit_train // 4)]
    return Prepared(split, groups, np.sort(tr), np.sort(va), np.sort(src), dc.source_val)


def judges_unseen(data_cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels no judge trained on (their validation split): the real images galleries are scored beside."""
    from .judges import judge_data

    prep = prepare(Config(data=judge_data(data_cfg)))
    return prep.split.images[prep.val_idx], prep.split.labels[prep.val_idx]


class RunDir:
    """The one place a training run writes its files (all atomically); with `writes` False (the processes of a
    distributed run other than rank 0) it writes nothing."""

    def __init__(self, path: Path | str, writes: bool = True):
        self.path, self.writes = Path(path), writes
        if writes:
            self.path.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = self._read_metrics()

    def _read_metrics(self) -> list[dict]:
        f = self.path / "metrics.csv"
        return list(csv.DictReader(f.open())) if f.exists() else []

    def log(self, line: str) -> None:
        if not self.writes:
            return
        with (self.path / "train.log").open("a") as f:  # append-only: a torn last line loses nothing earlier
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def add_epoch(self, r: EpochResult) -> None:
        self.rows = [row for row in self.rows if int(row["epoch"]) < r.epoch] + [asdict(r)]
        if not self.writes:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(asdict(r)))
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(buf.getvalue(), self.path / "metrics.csv")

    def record_precision(self, choice: dict) -> None:
        """`precision.json`: the mode training runs in and why (train.log keeps every earlier one of a resumed run)."""
        if self.writes:
            atomic_write_json(choice, self.path / "precision.json")

    def best_val(self) -> float:
        return max((float(row["val_acc"]) for row in self.rows), default=float("-inf"))


def initial_state(cfg: Config, prep: Prepared) -> TrainState:
    """A new model of `cfg` (seeded), its input normalization set from the training images, and its optimizer; or,
    with `train.init_from`, that checkpoint's model (the same model and classes) with a new optimizer."""
    torch.manual_seed(cfg.train.seed)
    if cfg.train.init_from:
        return new_state(starting_model(cfg, prep.split.classes), cfg.train)
    model = build_model(cfg.model, len(prep.split.classes))
    mean, std = data.channel_stats(prep.split.images[prep.train_idx])
    model.normalize.mean.copy_(mean.reshape(1, 3, 1, 1))
    model.normalize.std.copy_(std.reshape(1, 3, 1, 1))
    return new_state(model, cfg.train)


def starting_model(cfg: Config, classes: list[str]):
    """The model `train.init_from` names, checked to be the model `cfg` describes and to know `classes`."""
    path = cfg.train.init_from
    ckpt = read_checkpoint(path)
    check_classes(ckpt["classes"], classes, path)
    if Config.from_dict(ckpt["config"]).model != cfg.model:
        raise CheckpointError(f"{path}: train.init_from holds another model than this run's (model.* settings differ)")
    return model_from_checkpoint(ckpt, path).train()


_SAID: set[str] = set()
"""Precision lines already printed by this process."""


def seconds_per_step(cfg: Config, prep: Prepared, steps: int = 3, side: int = 64) -> float:
    """Seconds one training step of `cfg` at `side` px takes here (augmentation, attack and averaging included), from
    timing `steps` steps on `prep`'s training images after one warm-up step."""
    n, train = cfg.train.batch_size, prep.split.images[prep.train_idx]
    labels = prep.split.labels[prep.train_idx]
    short = cfg.override(["train.epochs=1", f"train.res_min={side}", "train.res_ramp=[1,1]"])
    state = initial_state(cfg, prep)
    fit(short, state, train[:n], labels[:n], train[:1], labels[:1], progress=False)  # kernels chosen, caches warm
    state.epoch = 0
    t0 = time.perf_counter()
    fit(short, state, train[: steps * n], labels[: steps * n], train[:1], labels[:1], progress=False)
    return (time.perf_counter() - t0) / min(steps, math.ceil(len(train) / n))


def step_times(cfg: Config, prep: Prepared, steps: int = 3) -> tuple[float, float]:
    """Seconds a training step takes here at 64 px and at `train.res_min` px (the same when there is no resizing)."""
    full = seconds_per_step(cfg, prep, steps)
    low = cfg.train.res_min
    return full, (full if low >= 64 else seconds_per_step(cfg, prep, steps, side=low))


def schedule_seconds(cfg: Config, prep: Prepared, times: tuple[float, float], epochs: int | None = None) -> float:
    """Seconds `epochs` epochs of `cfg`'s recipe (its own number when None) train for here, each epoch's validation
    pass included (about a third of a training step per image), from the step `times` at 64 px and at `res_min` px:
    a step at a side in between is taken as linear in its pixel count."""
    tc = cfg.train
    epochs = tc.epochs if epochs is None else epochs
    steps = math.ceil(len(prep.train_idx) / tc.batch_size)
    full, low = times
    lo2 = tc.res_min**2

    def step(side: int) -> float:
        return full if side >= 64 else low + (full - low) * (side**2 - lo2) / max(1, 64**2 - lo2)

    val = full * len(prep.val_idx) / tc.batch_size / 3
    return sum(step(epoch_side(e, epochs, tc)) * steps + val for e in range(epochs))


def estimated_minutes(cfg: Config, prep: Prepared, steps: int = 3) -> float:
    """Minutes `cfg` would train for on `prep`'s training part, from timing `steps` steps after one warm-up step."""
    return schedule_seconds(cfg, prep, step_times(cfg, prep, steps)) / 60


BUDGET_MARGIN = 0.95
"""Fraction of a time budget planned for: the rest absorbs checkpoints, logging and the speed's drift."""


def budget_epochs(cfg: Config, prep: Prepared, times: tuple[float, float] | None = None) -> tuple[int, str]:
    """The most epochs of `cfg`'s recipe (at most its own, the schedule and any progressive resizing stretched over
    them) that train within `cfg.train.minutes` at the step times measured here (`step_times`); and why, in words."""
    tc = cfg.train
    times = step_times(cfg, prep) if times is None else times
    budget = tc.minutes * 60 * BUDGET_MARGIN
    fits = max((e for e in range(1, tc.epochs + 1) if schedule_seconds(cfg, prep, times, e) <= budget), default=0)
    epochs = max(1, fits)
    why = (
        f"time budget {tc.minutes:g} min: {epochs} of the recipe's {tc.epochs} epochs at "
        f"{tc.batch_size / times[0]:.0f} training images/s measured here "
        f"({schedule_seconds(cfg, prep, times, epochs) / epochs:.0f} s an epoch)"
    )
    return epochs, why + (" (one epoch does not fit: training one anyway)" if fits < 1 else "")


def train_run(
    cfg: Config, run_path: Path | str, resume: bool = False, progress: bool = True
) -> tuple[TrainState, Prepared]:
    """Train into `run_path`; with `resume`, continue the run saved there with the config saved there. Under torchrun
    every process trains its share and only rank 0 writes (see `heritagelens.distributed`)."""
    if resume:
        last = Path(run_path) / "last.pt"
        ckpt = read_checkpoint(last)
        cfg = Config.from_dict(ckpt["config"])
    w = init_world(cfg.train.device)
    main = w.main
    run = RunDir(run_path, writes=main)
    if main:  # chosen (timed once per machine) before the data is loaded, so the line comes first
        choice = resolve(cfg.train.precision, w.device)
        if choice.line not in _SAID:  # once per process: the main job trains up to four models
            print(f"heritagelens: {choice.line}", flush=True)
            _SAID.add(choice.line)
        run.log(choice.line)
        run.record_precision(choice.to_dict())
    prep = prepare(cfg)
    s = prep.split
    if cfg.train.minutes and not resume:  # every process measures (fit is collective), the main one decides
        epochs, why = budget_epochs(cfg, prep)
        epochs = from_main(epochs, w)
        cfg = cfg.override([f"train.epochs={epochs}"])
        if main:
            print(f"heritagelens: {why}", flush=True)
        run.log(why)
    if resume:
        check_classes(ckpt["classes"], s.classes, last)
        state = resume_state(ckpt, cfg, last)
        run.log(f"resumed at epoch {state.epoch}")
    else:
        state = initial_state(cfg, prep)
        if main:
            atomic_write_text(cfg.to_json() + "\n", run.path / "config.json")
            atomic_write_json(prep.record(), run.path / "split.json")
        run.log(f"config {json.dumps(cfg.to_dict())}")
        run.log(f"split {json.dumps(prep.summary())}")
    if s.bad and main:
        run.log(f"skipped {len(s.bad)} unreadable file(s): " + "; ".join(f"{f}: {p}" for f, p in s.bad))
        print(
            f"heritagelens: warning: skipped {len(s.bad)} unreadable file(s), first {s.bad[0][0]}: {s.bad[0][1]} "
            f"(all listed in {run.path / 'train.log'})",
            file=sys.stderr,
        )
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)

    def on_epoch(st: TrainState, r: EpochResult) -> None:
        if not main:
            return
        is_best = r.val_acc > run.best_val()
        run.add_epoch(r)
        run.log(
            f"epoch {r.epoch} loss {r.train_loss:.4f} train_acc {r.train_acc:.4f} val_acc {r.val_acc:.4f} "
            f"{r.seconds:.1f}s {r.images_per_s:.0f} img/s" + (f" at {r.side} px" if r.side < 64 else "")
        )
        save_checkpoint(run.path / "last.pt", st, cfg, s.classes)
        if is_best:
            save_checkpoint(run.path / "best.pt", st, cfg, s.classes)
        if r.epoch in cfg.train.snapshot_epochs:
            save_checkpoint(run.path / f"epoch-{r.epoch}.pt", st, cfg, s.classes)

    xt, yt = s.images[prep.train_idx], s.labels[prep.train_idx]
    xv, yv = s.images[prep.val_idx], s.labels[prep.val_idx]
    state = fit(cfg, state, xt, yt, xv, yv, on_epoch=on_epoch, progress=progress)
    return state, prep


def data_config_of(ckpt: dict, root: Path | str | None = None, data_overrides: list[str] = ()) -> Config:
    """A checkpoint's config with the data root and the `data.*` settings a command gives."""
    cfg = Config.from_dict(ckpt["config"]).override(list(data_overrides))
    if root is not None:
        cfg.data.root = str(root)
    return cfg


def validation_splits(checkpoint: Path | str, root: Path | str | None = None, data_overrides: list[str] = ()):
    """'val', and 'source' when the checkpoint's split holds photos of other sources out of training."""
    cfg = data_config_of(read_checkpoint(checkpoint), root, data_overrides)
    return ["val"] + ["source"] * bool(len(prepare(cfg).source_idx))


def evaluate_checkpoint(
    checkpoint: Path | str,
    split: str,
    root: Path | str | None = None,
    tta: bool | None = None,
    out_dir: Path | str | None = None,
    data_overrides: list[str] = (),
) -> EvalResult:
    """Evaluate a checkpoint on 'val' (its own group-aware validation split), 'source' (its source-held-out
    validation split) or 'test' (the data root's test/), with
    `data_overrides` (`data.*` assignments) applied to its config; the test split's unreadable files are listed."""
    model, classes, ckpt = load_model(checkpoint)
    cfg = data_config_of(ckpt, root, data_overrides)
    tta = cfg.train.tta if tta is None else tta
    if split in ("val", "source"):
        prep = prepare(cfg)
        check_classes(classes, prep.split.classes, checkpoint)
        idx = prep.held_out(split)
        if len(idx) == 0:
            raise data.DataError(f"{checkpoint}: its {split} split is empty (data.source_val is '{prep.source}')")
        images, labels, files = prep.split.images[idx], prep.split.labels[idx], [prep.split.files[i] for i in idx]
    else:
        data_classes = data.list_classes(cfg.data.root, "train") if data.has_split(cfg.data.root, "train") else classes
        check_classes(classes, data_classes, checkpoint)
        sp = data.load_split(cfg.data.root, split, classes, cfg.data.on_bad_file, cfg.data.cache_dir or None)
        images, labels, files = sp.images, sp.labels, sp.files
    logits = predict_logits(model, images, tta=tta, precision=cfg.train.precision)
    result = evaluate_logits(logits, labels, classes, split, files, tta)
    if split == "source":
        result.held_out = data.source_description(cfg.data.source_val, cfg.data.source_ranges)
    if split == "test":
        result.unreadable = [(str(f), problem) for f, problem in sp.bad]
    t = temperature(ckpt, tta)
    if t is not None:
        fitted = ckpt["calibration"]["tta" if tta else "plain"]
        same = split == fitted["split"] and root is None
        result.calibration = {
            "temperature": t, "split": split, "fitted_on": fitted["split"],
            "ece_before": ece(torch.softmax(logits.double(), 1), labels),
            "ece_after": ece(torch.softmax(logits.double() / t, 1), labels),
            "ece_held_out": fitted["ece_held_out"] if same else None,
        }  # fmt: skip
    if out_dir is not None:
        write_eval(result, out_dir)
        if t is not None:
            title = f"{split} ({result.n} images{', TTA' if tta else ''}), temperature fitted on {fitted['split']}"
            png = png_bytes(figure_image(reliability_figure(logits, labels, t, title)))
            atomic_write_bytes(png, Path(out_dir) / f"reliability-{split}.png")
    return result


def calibrate_checkpoint(checkpoint: Path | str, root: Path | str | None = None) -> dict[str, Calibration]:
    """Fit the temperature of the checkpoint's predictions with and without TTA on its validation split and store
    both in the checkpoint (rewritten atomically), so that every later prediction of it can use them."""
    path = checkpoint_file(checkpoint)
    model, classes, ckpt = load_model(path)
    prep = prepare(cfg := data_config_of(ckpt, root))
    check_classes(classes, prep.split.classes, path)
    images, labels = prep.split.images[prep.val_idx], prep.split.labels[prep.val_idx]
    if len(labels) == 0:
        raise data.DataError(f"{path}: its validation split is empty: nothing to calibrate on")
    cals = {}
    for name, tta in (("plain", False), ("tta", True)):
        logits = predict_logits(model, images, tta=tta, precision=cfg.train.precision)
        cals[name] = calibrate(logits, labels, "val", tta)
    atomic_save({**ckpt, "calibration": {k: c.to_dict() for k, c in cals.items()}}, path)
    return cals


def write_eval(result: EvalResult, out_dir: Path | str) -> None:
    out = Path(out_dir)
    atomic_write_json(result.to_dict(), out / f"eval-{result.split}.json")
    text = "\n\n".join([result.table(), result.confusion_table(), result.mistakes_table()])
    atomic_write_text(text + "\n", out / f"eval-{result.split}.txt")
    png = png_bytes(figure_image(confusion_figure(result)))
    atomic_write_bytes(png, out / f"confusion-{result.split}.png")


@contextmanager
def stage(stages: dict[str, float], name: str):
    """Time the block into `stages[name]` (seconds)."""
    t0 = time.perf_counter()
    yield
    stages[name] = round(time.perf_counter() - t0, 2)


def main_job(cfg: Config, run_path: Path | str, progress: bool = True) -> dict:
    """Train, then evaluate the final weights on validation and, when the data has one, the official test split;
    deconvnet figure-2 grids for the two deepest layers; the class-image gallery with its scores; the report.

    Returns (and writes as `summary.json`) the headline figures, each named by its split, and each stage's time.
    """
    from .visualize import write_top9

    run = Path(run_path)
    stages: dict[str, float] = {}
    with stage(stages, "train"):
        _, prep = train_run(cfg, run, progress=progress)
    summary = {"train_minutes": round(stages["train"] / 60, 2), "evaluated": "last.pt", "splits": {}}
    trained = Config.from_dict(read_checkpoint(run / "last.pt")["config"])  # the epochs a time budget left
    summary["train_compute"] = training_flops(trained, len(prep.train_idx), len(prep.split.classes))
    summary["precision"] = resolve(cfg.train.precision, world().device).to_dict()
    with stage(stages, "calibrate"):
        cals = calibrate_checkpoint(run / "last.pt")
    summary["calibration"] = {k: c.to_dict() for k, c in cals.items()}
    with stage(stages, "evaluate"):
        validations = ["val"] + (["source"] if len(prep.source_idx) else [])
        for split in validations + (["test"] if data.has_split(cfg.data.root, "test") else []):
            r = evaluate_checkpoint(run / "last.pt", split, out_dir=run)
            summary["splits"][split] = {"accuracy": r.accuracy, "macro_f1": r.macro["f1"], "n": r.n, "tta": r.tta}
            summary["splits"][split] |= {"holds_out": r.held_out} if r.held_out else {}
    with stage(stages, "deconvnet figures"):  # figure 2 for the two deepest conv layers
        model, _, _ = load_model(run / "last.pt")
        written = write_top9(run / "last.pt", conv_layer_names(model)[-2:], run)
    summary["figures"] = [p.name for p in written]
    summary["gallery"] = gallery_job(cfg, run, progress, stages)
    summary["stages_seconds"] = stages
    summary["report"] = str(run / "report.html")
    atomic_write_json(summary, run / "summary.json")
    from .report import write_report

    try:  # last, so that it shows every stage's time; a report problem never costs the run its results
        write_report(run)
    except Exception as e:
        summary["report"] = None
        atomic_write_json(summary, run / "summary.json")
        print(f"heritagelens: warning: {run}: report not written ({type(e).__name__}: {e})", file=sys.stderr)
    return summary


def robust_config(cfg: Config, standard: Path | str | None = None) -> Config:
    """The robust model trained beside the standard one: the same data, model and seed, the robust recipe; with
    `gallery.robust_from='standard'`, fine-tuned from the `standard` checkpoint (no time budget: its epochs are few)."""
    g = cfg.gallery
    extra = [f"train.init_from={standard}", f"train.lr={g.robust_lr}"] if g.robust_from == "standard" else []
    return cfg.override([*ROBUST, *SGD, f"train.epochs={g.robust_epochs}", "train.minutes=0", *extra])


def gallery_job(cfg: Config, run: Path, progress: bool = True, stages: dict[str, float] | None = None) -> dict:
    """The class-image gallery of the run (`dream-gallery.*`), made from the robust model (trained into `robust/`)
    or the standard one as `cfg.gallery.model` says, scored by the judges; returns its headline figures."""
    from .judges import HEADLINE_JUDGE
    from .visualize import write_dream

    stages = {} if stages is None else stages
    source = run / "last.pt"
    out: dict = {"model": cfg.gallery.model}
    if cfg.gallery.model == "robust":
        with stage(stages, "robust model"):
            train_run(robust_config(cfg, run / "last.pt"), run / "robust", progress=progress)
            source = run / "robust" / "last.pt"
            r = evaluate_checkpoint(source, "val", out_dir=run / "robust")
        out["robust_val_accuracy"] = r.accuracy
        out["robust_train_minutes"] = round(stages["robust model"] / 60, 2)
    g = cfg.gallery
    with stage(stages, "class images"):
        png = write_dream(
            source, None, run, cfg.dream, "gallery", g.samples, g.seed, score=g.judges,
            judges_dir=g.judges_dir or None, judge_extra=g.judge_overrides, progress=progress,
            standard_model=run / "last.pt" if cfg.gallery.model == "robust" else None, floor_samples=g.floor_samples,
        )  # fmt: skip
    meta = json.loads(png.with_suffix(".json").read_text())
    out["figure"] = png.name
    for name, s in meta.get("scores", {}).items():
        out[name] = {f"{HEADLINE_JUDGE}_recognised": s["judges"][HEADLINE_JUDGE]["recognised"]}
        out[name] |= {"frechet": s["frechet"], "spectrum": s["spectrum"], "diversity": s["diversity"]}
    out["minutes"] = round(stages["class images"] / 60, 2)
    return out
