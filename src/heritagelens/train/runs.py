"""A training run and its folder: starting and resuming one, the time budget, and the files it writes.

A run folder holds `config.json`, `split.json`, `metrics.csv`, `train.log`, `precision.json`, `last.pt`, `best.pt`
and optional `epoch-N.pt` snapshots; the jobs (`heritagelens.jobs`) add their results beside them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..config import Config, ConfigError
from ..data import dataset
from ..data.split import Prepared, prepare
from ..distributed import from_main, init_world
from ..files import WriteError, atomic_save, atomic_write_json, atomic_write_text, file_sha256
from ..model.card import BUNDLED, check_classes
from ..model.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    checkpoint_file,
    model_from_checkpoint,
    read_checkpoint,
)
from ..model.network import build_model, with_classes
from ..model.precision import Choice, resolve
from ..model.trained import Trained
from .loop import EpochResult, Teacher, TrainState, epoch_side, eval_model, fit, fit_head, new_state


def save_checkpoint(path: Path | str, state: TrainState, cfg: Config, classes: list[str], **extra: Any) -> Path:
    """Write the model (and, for resuming, optimizer and averaged weights) with its config and class names."""
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "classes": list(classes),
        "config": cfg.to_dict(),
        "epoch": state.epoch,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        **extra,
    }
    try:
        return atomic_save(ckpt, path)
    except OSError as e:  # a full disk, a quota: the file it would have replaced is whole (the write is atomic)
        kept = "the one written before is kept" if Path(path).exists() else "none was written before"
        raise WriteError(f"{path}: cannot write the checkpoint ({e.strerror or e}); {kept}") from None


def resume_state(ckpt: dict[str, Any], cfg: Config, path: Path | str) -> TrainState:
    """The training state saved in `ckpt`, ready to continue."""
    model = model_from_checkpoint(ckpt, path, averaged=False).train()
    state = new_state(model, cfg.train)
    epoch = ckpt.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= cfg.train.epochs:
        raise CheckpointError(f"{path}: its epoch ({str(epoch)[:40]}) is not one of its training's: cannot resume")
    try:
        state.optimizer.load_state_dict(ckpt["optimizer"])
        if state.ema is not None and ckpt.get("ema"):
            state.ema.load_state_dict(ckpt["ema"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        raise CheckpointError(f"{path}: its optimizer state does not fit the model ({why}): cannot resume") from None
    state.epoch = epoch
    return state


class RunWriter:
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


def initial_state(cfg: Config, prep: Prepared, source: dict | None = None) -> TrainState:
    """A new model of `cfg` (seeded), its input normalization set from the training images, and its optimizer; or,
    with `train.init_from`, that checkpoint's model (the same model and classes) with a new optimizer. `source` is
    that checkpoint when already read."""
    torch.manual_seed(cfg.train.seed)
    if cfg.train.init_from:
        model = starting_model(cfg, prep.split.classes, source)
        if cfg.train.head_fit:
            fit_head(model, prep.split.images[prep.train_idx], prep.split.labels[prep.train_idx])
        return new_state(model, cfg.train)
    model = build_model(cfg.model, len(prep.split.classes))
    mean, std = dataset.channel_stats(prep.split.images[prep.train_idx])
    model.normalize.mean.copy_(mean.reshape(1, 3, 1, 1))
    model.normalize.std.copy_(std.reshape(1, 3, 1, 1))
    return new_state(model, cfg.train)


def starting_model(cfg: Config, classes: list[str], source: dict | None = None):
    """The model `train.init_from` names (`source`, when already read), checked to be the model `cfg` describes;
    when it knows other classes than `classes`, adapted to them (`with_classes`: its features kept, a head row for
    each class)."""
    path = cfg.train.init_from
    ckpt = source or read_checkpoint(path)
    if Config.from_dict(ckpt["config"]).model != cfg.model:
        raise CheckpointError(f"{path}: train.init_from holds another model than this run's (model.* settings differ)")
    model = model_from_checkpoint(ckpt, path)
    if list(ckpt["classes"]) != list(classes):
        model = with_classes(model, list(ckpt["classes"]), list(classes))[0]
    return model.train()


def adapted_from(cfg: Config, classes: list[str], source: dict | None = None) -> dict[str, Any] | None:
    """What a run adapts (`train.init_from` with other classes than `classes`), as its checkpoints record it: the
    model it starts from, that model's classes, the classes that keep their head rows and the new ones; None when
    the run starts from random weights or from a model of the same classes. `source`: its checkpoint, when read."""
    path = cfg.train.init_from
    if not path:
        return None
    ckpt = source or read_checkpoint(path)
    old = list(ckpt["classes"])
    if old == list(classes):
        return None
    card = ckpt.get("card") or {}
    return {
        "model": "HeritageLens bundled model" if Path(path).resolve() == BUNDLED.resolve() else str(path),
        "sha256": card.get("sha256") or file_sha256(checkpoint_file(path)),
        "classes": old,
        "kept": [c for c in classes if c in old],
        "new": [c for c in classes if c not in old],
    }


def lengthened(cfg: Config, prep: Prepared) -> tuple[Config, str]:
    """`cfg` with its epochs (and its probe's, in proportion) raised so that they make at least `train.min_steps`
    optimizer steps on `prep`'s training part, and why in words ('' when it makes as many already)."""
    tc = cfg.train
    per_epoch = math.ceil(len(prep.train_idx) / tc.batch_size)
    need = math.ceil(tc.min_steps / per_epoch)
    if need <= tc.epochs:
        return cfg, ""
    probe = round(tc.probe_epochs * need / tc.epochs)
    why = (
        f"{len(prep.train_idx)} training photos make {per_epoch} step(s) an epoch: {need} epochs "
        f"({probe} of them the head alone) make the recipe's {tc.min_steps} steps"
    )
    return cfg.override([f"train.epochs={need}", f"train.probe_epochs={probe}"]), why


def check_source_teacher(cfg: Config) -> None:
    """Refuse `train.source_teacher` without `train.init_from`: there is no model to teach."""
    if cfg.train.source_teacher and not cfg.train.init_from:
        raise ConfigError("train.source_teacher needs train.init_from, the model that teaches (train --from)")


def teacher_for(cfg: Config, classes: list[str], source: dict | None = None) -> Teacher | None:
    """The teachers of `cfg.train.teachers` (and, with `train.source_teacher`, the model of `train.init_from`) as one
    `Teacher` of the classes of `classes` they know (every teacher the same ones, at least two); None without
    teachers, or when the source model alone would teach and knows fewer than two of `classes`. A teacher of some of
    the classes is learning without forgetting: a model adapted to new classes keeps what it said of the old ones.
    `source`: the checkpoint of `train.init_from`, when already read."""
    read = {}
    check_source_teacher(cfg)
    if cfg.train.source_teacher:
        read[cfg.train.init_from] = source or read_checkpoint(cfg.train.init_from)
        if not cfg.train.teachers and len(set(classes) & set(read[cfg.train.init_from]["classes"])) < 2:
            return None  # nothing to keep of it: a softmax over one class says nothing
    paths = [*cfg.train.teachers, *read]
    if not paths:
        return None
    device = init_world(cfg.train.device).device
    models, rows, shared = [], [], None
    for path in paths:
        ckpt = read.get(path) or read_checkpoint(path)
        taught = list(ckpt["classes"])
        known = [c for c in classes if c in taught]
        if len(known) < 2 or shared not in (None, known):
            raise CheckpointError(
                f"{path}: a teacher must know at least two of this run's classes ({', '.join(classes)}), "
                "the same ones as the other teachers"
            )
        shared = known
        models.append(model_from_checkpoint(ckpt, path).to(device).eval())
        rows.append([taught.index(c) for c in known])
    return Teacher(models, rows, [classes.index(c) for c in shared])


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
    cfg: Config | None,
    run_path: Path | str,
    resume: bool = False,
    progress: bool = True,
    like: Prepared | None = None,
    precision: Choice | None = None,
) -> Trained:
    """Train into `run_path`; with `resume`, continue the run saved there with the config saved there. Under torchrun
    every process trains its share and only rank 0 writes (see `heritagelens.distributed`).

    `like` is a split already prepared from the same data (see `prepare`); `precision`, the mode already chosen and
    said by the caller (a job that trains several models says it once). Returns the model as its `last.pt` holds it,
    with the split it was trained on."""
    if resume:
        last = Path(run_path) / "last.pt"
        ckpt = read_checkpoint(last)
        cfg = Config.from_dict(ckpt["config"])
    check_source_teacher(cfg)  # before the run folder is made
    w = init_world(cfg.train.device)
    main = w.main
    run = RunWriter(run_path, writes=main)
    if main:  # chosen (timed once per machine) before the data is loaded, so the line comes first
        choice = precision or resolve(cfg.train.precision, w.device)
        if precision is None:
            print(f"heritagelens: {choice.line}", flush=True)
        run.log(choice.line)
        run.record_precision(choice.to_dict())
    prep = prepare(cfg, like)
    s = prep.split
    start = cfg.train.init_from and (not resume or cfg.train.source_teacher)  # a resumed run has its weights
    source = read_checkpoint(cfg.train.init_from) if start else None  # read once: its record, weights and teaching
    if cfg.train.min_steps and not resume:
        cfg, why = lengthened(cfg, prep)
        if why:
            run.log(why)
            if main:
                print(f"heritagelens: {why}", flush=True)
    if cfg.train.minutes and not resume:  # every process measures (fit is collective), the main one decides
        epochs, why = budget_epochs(cfg, prep)
        epochs = from_main(epochs, w)
        cfg = cfg.override([f"train.epochs={epochs}", f"train.probe_epochs={min(epochs, cfg.train.probe_epochs)}"])
        if main:
            print(f"heritagelens: {why}", flush=True)
        run.log(why)
    if resume:
        check_classes(ckpt["classes"], s.classes, last)
        state = resume_state(ckpt, cfg, last)
        origin = ckpt.get("adapted_from")
        run.log(f"resumed at epoch {state.epoch}")
    else:
        origin = adapted_from(cfg, s.classes, source)
        if origin:
            run.log(f"adapted from {json.dumps(origin)}")
        state = initial_state(cfg, prep, source)
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
        made = {"adapted_from": origin} if origin else {}
        save_checkpoint(run.path / "last.pt", st, cfg, s.classes, **made)
        if is_best:
            save_checkpoint(run.path / "best.pt", st, cfg, s.classes, **made)
        if r.epoch in cfg.train.snapshot_epochs:
            save_checkpoint(run.path / f"epoch-{r.epoch}.pt", st, cfg, s.classes, **made)

    xt, yt = s.images[prep.train_idx], s.labels[prep.train_idx]
    xv, yv = s.images[prep.val_idx], s.labels[prep.val_idx]
    teacher = teacher_for(cfg, s.classes, source)
    if teacher is not None:
        run.log(f"taught by {len(teacher.models)} model(s) on {', '.join(s.classes[c] for c in teacher.columns)}")
    state = fit(cfg, state, xt, yt, xv, yv, on_epoch=on_epoch, progress=progress, teacher=teacher)
    if main:  # the model as the file holds it, which every later use of it reads
        return Trained.load(run.path / "last.pt", prep=prep)
    model = eval_model(state).eval()
    ckpt = {"classes": list(s.classes), "config": cfg.to_dict()}  # rank 0 alone writes the file
    return Trained(model, list(s.classes), cfg, ckpt, run.path / "last.pt", prep)
