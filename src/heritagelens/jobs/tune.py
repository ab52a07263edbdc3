"""Hyperparameter and architecture search on Optuna: the recipe and the architecture family searched together,
scored by validation accuracy (the mean of the group-aware and the source-held-out accuracies when the split holds a
source out, so that a recipe is chosen for photos from elsewhere too), hopeless trials pruned from their per-epoch
reports on the group-aware split.

A study lives in an Optuna storage: by default a SQLite file in the runs folder (embedded, nothing to start); any
SQLAlchemy URL (PostgreSQL, MySQL) works the same, so workers on several machines join one study by pointing at
one database. A killed worker's unfinished trial is noticed by its heartbeat going stale and tried again; finished
trials are never lost. `--trials N` is the study's total of finished trials, so a resumed study runs only the rest.

Trials report their validation accuracy at each quarter of their own schedule (step 25, 50, 75, 100: percent of the
epochs done), so a 28-epoch trial is compared with an 8-epoch one at the same point of its learning-rate schedule,
not at the same epoch, where the shorter one would always look better. With `trial_minutes`, a configuration whose
training is estimated (from timing a few steps) to take longer is pruned before it starts: a time budget then bounds
every trial, so `--timeout` plus the cap bounds the study.
"""

from __future__ import annotations

import os
import random
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import HeritageLensError

DEFAULT_STUDY = "heritagelens"
OBJECTIVES = ("accuracy", "accuracy-per-minute")


@dataclass(frozen=True)
class Param:
    """One searched config value: `kind` is 'int', 'float', 'log' (float on a log scale) or 'choice'."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    step: int | None = None


SPACE: tuple[Param, ...] = (
    Param("model.width", "choice", choices=(16, 32, 48, 64)),  # widths w, 2w, 4w, 8w
    Param("model.depths", "choice", choices=("1,1,1,1", "1,2,2,2", "2,2,2,2", "1,2,3,3")),
    Param("model.kernel_size", "choice", choices=(3, 5)),
    Param("model.dropout", "float", 0.0, 0.5),
    Param("model.head_pool", "choice", choices=("max", "avg")),
    Param("train.lr", "log", 0.02, 0.3),
    Param("train.muon_lr", "log", 0.02, 0.2),  # searched whatever the optimizer; unused with train.optimizer=sgd
    Param("train.weight_decay", "log", 1e-5, 2e-3),
    Param("train.label_smoothing", "float", 0.0, 0.2),
    Param("train.crop_pad", "int", 0, 8),
    Param("train.cutout", "int", 0, 24, step=4),
    Param("train.colour_jitter", "float", 0.0, 0.3),
    Param("train.epochs", "int", 8, 28, step=4),
)
"""The search space. A key the user fixes with --set is not searched (model.widths fixes model.width)."""


class TuneError(HeritageLensError):
    """A storage that cannot be reached, or a study with nothing to show."""


def searched(fixed: list[str]) -> list[Param]:
    """The parameters of SPACE that the `--set` assignments in `fixed` leave free."""
    keys = {a.partition("=")[0] for a in fixed}
    keys |= {"model.width"} if "model.widths" in keys else set()
    return [p for p in SPACE if p.key not in keys]


def suggest(trial, params: list[Param]) -> list[str]:
    """The trial's values for `params`, as config assignments."""
    out = []
    for p in params:
        if p.kind == "choice":
            v = trial.suggest_categorical(p.key, list(p.choices))
        elif p.kind == "int":
            v = trial.suggest_int(p.key, int(p.low), int(p.high), step=p.step or 1)
        else:
            v = trial.suggest_float(p.key, p.low, p.high, log=p.kind == "log")
        if p.key == "model.width":
            out.append(f"model.widths=[{v},{2 * v},{4 * v},{8 * v}]")
        elif p.key == "model.depths":
            out.append(f"model.depths=[{v}]")
        else:
            out.append(f"{p.key}={v}")
    return out


def default_storage(runs: Path | str = "runs") -> str:
    Path(runs).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(runs).resolve() / 'tune.db'}"


def open_study(storage: str, name: str, create: bool = True, attempts: int = 5):
    """The study `name` in `storage` (created when `create`), with heartbeats so a killed trial is retried."""
    return open_or_create_study(storage, name, create, attempts)[0]


def open_or_create_study(storage: str, name: str, create: bool = True, attempts: int = 5):
    """(study, whether this call created it). Workers that start together on a new database race to create its
    tables (the losers see a duplicate table, type or row, or a locked file) and try again; of workers creating one
    new study, the database's unique name lets exactly one be its creator."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeats and grouped TPE are marked experimental
                return _open_study(storage, name, create)
        except (IntegrityError, OperationalError, ProgrammingError) as e:
            why = str(e.orig or e).splitlines()[0][:160]
            if "timeout expired" in why or "timed out" in why:
                raise TuneError(
                    f"{storage}: the database server did not answer within {CONNECT_SECONDS} s ({why})"
                ) from None
            if attempt == attempts - 1:
                raise TuneError(f"{storage}: cannot open the study storage after {attempts} attempts ({why})") from None
            time.sleep(0.5 + random.random())
        except KeyError:
            raise TuneError(f"no study '{name}' in {storage}") from None
        except Exception as e:  # SQLAlchemy's errors for a bad URL or an unreachable server
            raise TuneError(f"{storage}: cannot open the study storage ({type(e).__name__}: {str(e)[:160]})") from None
    raise AssertionError("unreachable")


CONNECT_SECONDS = 10
"""How long a database server may take to answer a connection: one that accepts and never answers is one line."""
STATEMENT_SECONDS = 120
"""The longest one statement may run on a PostgreSQL server (Optuna's take milliseconds)."""


def engine_kwargs(storage: str) -> dict | None:
    """SQLAlchemy's arguments for `storage`: SQLite waits its turn for the file's lock; PostgreSQL (and MySQL) give
    up on a server that does not answer."""
    if storage.startswith("sqlite"):
        return {"connect_args": {"timeout": 60, "isolation_level": None}}
    if storage.startswith("postgresql"):
        options = f"-c statement_timeout={STATEMENT_SECONDS * 1000}"
        return {"connect_args": {"connect_timeout": CONNECT_SECONDS, "options": options}}
    if storage.startswith("mysql"):
        return {"connect_args": {"connect_timeout": CONNECT_SECONDS, "read_timeout": STATEMENT_SECONDS}}
    return None


def _open_study(storage: str, name: str, create: bool):
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sqlite = storage.startswith("sqlite")
    rdb = RDBStorage(
        storage,
        heartbeat_interval=30,
        grace_period=120,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
        engine_kwargs=engine_kwargs(storage),
    )
    if sqlite:
        _serialize_sqlite_transactions(rdb.engine)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=50)  # from half of the schedule on
    sampler = optuna.samplers.TPESampler(n_startup_trials=6, multivariate=True, group=True)  # budgets of ~12 trials
    if create:
        try:
            kw = dict(storage=rdb, study_name=name, direction="maximize", pruner=pruner, sampler=sampler)
            return optuna.create_study(**kw), True
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another worker created it: join
    return optuna.load_study(study_name=name, storage=rdb, sampler=sampler, pruner=pruner), False


def _serialize_sqlite_transactions(engine) -> None:
    """Make each of Optuna's transactions on a SQLite file take the write lock when it begins. Optuna claims a queued
    trial by reading that it is waiting and then marking it running, in one transaction that is atomic on a server
    (SELECT ... FOR UPDATE) but not on SQLite, where Python's driver starts the transaction only at the write: two
    workers both read 'waiting' and both ran the same trial, and the second to finish failed on a finished trial.
    With the driver's own transactions off (`isolation_level=None`), each begins with BEGIN IMMEDIATE instead, so the
    read and the write are one step for the other workers, who wait (up to the connection's timeout) for the lock."""
    from sqlalchemy import event

    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))


def objective_fn(
    base: Config, fixed: list[str], objective: str, progress: bool = False, trial_minutes: float | None = None
):
    """The function Optuna calls per trial: train the suggested config on the group-aware split, report the
    validation accuracy at each quarter of the schedule (for pruning), return the final one (or it per minute of
    training). A config estimated to train longer than `trial_minutes` is pruned before it starts."""
    import optuna

    from ..data.split import prepare
    from ..distributed import init_world
    from ..model.inference import accuracy
    from ..model.precision import for_model
    from ..train.loop import eval_model, fit
    from ..train.runs import estimated_minutes, initial_state, teacher_for

    init_world(base.train.device)
    prep = prepare(base)  # the split depends only on data.*, which is never searched
    s = prep.split
    xt, yt, xv, yv = s.images[prep.train_idx], s.labels[prep.train_idx], s.images[prep.val_idx], s.labels[prep.val_idx]
    xs, ys = s.images[prep.source_idx], s.labels[prep.source_idx]
    params = searched(fixed)

    def run_trial(trial) -> float:
        cfg = base.override(suggest(trial, params))
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        if trial_minutes:
            minutes = estimated_minutes(cfg, prep)
            trial.set_user_attr("estimated_minutes", round(minutes, 2))
            if minutes > trial_minutes:
                raise optuna.TrialPruned(f"estimated {minutes:.0f} min of training, over the {trial_minutes:g} min cap")
        last = {"step": 0}

        def on_epoch(state, r) -> None:
            last["acc"] = r.val_acc
            step = 100 * r.epoch // cfg.train.epochs // 25 * 25  # percent of the schedule, in quarters
            if step > last["step"]:
                last["step"] = step
                trial.report(r.val_acc, step)
                if r.epoch < cfg.train.epochs and trial.should_prune():  # a finished trial is complete, not pruned
                    raise optuna.TrialPruned(f"epoch {r.epoch}: val accuracy {r.val_acc:.4f} below the median")

        t0 = time.perf_counter()
        try:
            teacher = teacher_for(cfg, prep.split.classes)
            state = fit(cfg, initial_state(cfg, prep), xt, yt, xv, yv, on_epoch, progress, teacher)
        finally:  # a pruned trial too says how long it trained
            minutes = (time.perf_counter() - t0) / 60
            trial.set_user_attr("train_minutes", round(minutes, 3))
        trial.set_user_attr("val_accuracy", acc := last["acc"])
        if len(xs):
            mode = for_model(state.model, cfg.train.precision).name  # as fit scored the validation split
            src = accuracy(eval_model(state), xs, ys, precision=mode)
            trial.set_user_attr("source_accuracy", src)
            acc = (acc + src) / 2
        return acc / minutes if objective == "accuracy-per-minute" else acc

    return run_trial


def baseline(base: Config, params: list[Param]) -> dict | None:
    """The base recipe as values of `params`, or None when it lies outside the space."""
    values = {}
    for p in params:
        section, key = p.key.split(".")
        if p.key == "model.width":
            w = base.model.widths
            v = w[0] if w == (w[0], 2 * w[0], 4 * w[0], 8 * w[0]) else None
        elif p.key == "model.depths":
            v = ",".join(map(str, base.model.depths))
        else:
            v = getattr(getattr(base, section), key)
        inside = v in p.choices if p.kind == "choice" else v is not None and p.low <= v <= p.high
        if not inside or (p.step and (v - p.low) % p.step):
            return None
        values[p.key] = v
    return values


def tune(
    base: Config,
    fixed: list[str],
    storage: str,
    name: str,
    trials: int,
    timeout: float | None = None,
    objective: str = "accuracy",
    progress: bool = False,
    trial_minutes: float | None = None,
    with_base: bool = True,
):
    """Run trials until the study holds `trials` finished (complete or pruned) trials or `timeout` seconds pass.
    With `with_base`, a new study's first trial is the base recipe itself (when it lies in the space), so the study
    holds the figure to beat and the sampler starts from a good point."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    study, created = open_or_create_study(storage, name)
    study.set_user_attr("objective", objective)
    start = baseline(base, searched(fixed)) if with_base else None
    if start and created:  # only the creator: workers starting together on a new study enqueue it once
        study.enqueue_trial(start, user_attrs={"base_recipe": True})
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = trials - len(study.get_trials(deepcopy=False, states=done))
    if remaining > 0:
        study.optimize(
            objective_fn(base, fixed, objective, progress, trial_minutes),
            n_trials=remaining,
            timeout=timeout,
            callbacks=[MaxTrialsCallback(trials, states=done), _say],
            catch=(optuna.exceptions.StorageInternalError,),
        )
    return study


def _say(study, trial) -> None:
    """One line per finished trial, so a long study's log shows its progress."""
    trained, estimated = trial.user_attrs.get("train_minutes"), trial.user_attrs.get("estimated_minutes")
    value = "" if trial.value is None else f" {trial.value:.4f}"
    last = max(trial.intermediate_values, default=None)
    where = f" at {last}% of its schedule" if trial.state.name == "PRUNED" and last else ""
    took = f"{trained:.1f} min" if trained else f"estimated {estimated:.1f} min, not trained" if estimated else ""
    print(f"trial {trial.number} {trial.state.name.lower()}{value}{where} ({took}) {trial.params}", flush=True)


def summary(study, top: int = 5) -> str:
    """The best trials and the parameters' importances, as text."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TuneError(f"study '{study.study_name}' has no finished trial yet")
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    lines = [
        f"study '{study.study_name}': " + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))),
        f"objective: {study.user_attrs.get('objective', 'accuracy')} on the validation splits (the mean of group-aware "
        "and source-held-out when a source is held out)",
        "best trials:",
    ]
    ranked = sorted(complete, key=lambda t: -t.value)
    for t in ranked[:top]:
        acc, minutes = t.user_attrs.get("val_accuracy"), t.user_attrs.get("train_minutes")
        base = "the base recipe, " if t.user_attrs.get("base_recipe") else ""
        src = t.user_attrs.get("source_accuracy")
        src = f", source accuracy {src:.4f}" if src is not None else ""
        lines.append(f"  #{t.number}: {t.value:.4f} ({base}val accuracy {acc:.4f}{src}, {minutes:.1f} min)  {t.params}")
    base = [t for t in ranked if t.user_attrs.get("base_recipe")]
    if base:
        lines.append(f"the base recipe (#{base[0].number}) ranks {ranked.index(base[0]) + 1} of {len(ranked)}")
    if len(complete) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # too few trials for the evaluator's quantiles: it says so, we show it
            importances = optuna.importance.get_param_importances(study)
        lines.append("parameter importances (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
    return "\n".join(lines)


def best_config(study) -> dict:
    """The config of the best finished trial, as saved with it."""
    return study.best_trial.user_attrs["config"]


def study_figures(study) -> dict:
    """Optimization history and parameter importances (Optuna's matplotlib plots) as images."""
    from ..figures import figure_image, pyplot

    pyplot()  # the Agg backend, before Optuna's plots import pyplot
    from optuna.visualization import matplotlib as oplt

    figs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        figs["optimization history"] = figure_image(oplt.plot_optimization_history(study).figure)
        if len(study.get_trials(deepcopy=False, states=(study.best_trial.state,))) >= 2:
            figs["parameter importances"] = figure_image(oplt.plot_param_importances(study).figure)
    return figs


def write_study(study, runs: Path) -> list[Path]:
    """`<runs>/tune-<study>/`: report.html (summary and plots), best-config.json (usable as `--preset FILE`)."""
    import html
    import json

    from ..figures import png_bytes
    from ..files import atomic_write_json, atomic_write_text
    from ..htmlpage import Section, html_page, img

    out = runs / f"tune-{study.study_name}"
    best = best_config(study)
    sections = [Section("summary", "Study", f"<pre>{html.escape(summary(study))}</pre>")]
    sections += [
        Section(k.replace(" ", "-"), k.capitalize(), img(png_bytes(im), k)) for k, im in study_figures(study).items()
    ]
    sections.append(Section("best", "Best configuration", f"<pre>{html.escape(json.dumps(best, indent=2))}</pre>"))
    page = html_page(f"HeritageLens study {study.study_name}", f"{len(study.trials)} trials", sections)
    return [atomic_write_text(page, out / "report.html"), atomic_write_json(best, out / "best-config.json")]
