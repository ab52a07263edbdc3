"""The search: its space builds valid models, workers share one study, a killed study resumes, pruning fires."""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import SETS, assert_one_line_error, cli, free_port, need, tiny_config

optuna = need("optuna")

from heritagelens.config import Config  # noqa: E402
from heritagelens.data.split import prepare  # noqa: E402
from heritagelens.jobs import tune as tune_module  # noqa: E402
from heritagelens.jobs.tune import (  # noqa: E402
    SPACE,
    TuneError,
    baseline,
    open_or_create_study,
    open_study,
    searched,
    suggest,
    summary,
    tune,
)
from heritagelens.model.network import build_model  # noqa: E402
from heritagelens.train.runs import estimated_minutes  # noqa: E402

FAST = [*SETS, "--set", "train.epochs=2", "--set", "model.widths=[8,16]", "--set", "model.depths=[1,1]"]


def test_every_architecture_in_the_space_builds_and_runs():
    choices = {p.key: p.choices for p in SPACE if p.kind == "choice"}
    for width, depths, k, pool in itertools.product(*choices.values()):
        values = {p.key: p.low for p in SPACE if p.kind != "choice"}
        values |= dict(zip(choices, (width, depths, k, pool)))
        cfg = Config().override(suggest(optuna.trial.FixedTrial(values), list(SPACE)))
        assert cfg.model.widths == (width, 2 * width, 4 * width, 8 * width)
        assert cfg.model.depths == tuple(int(d) for d in depths.split(","))
        assert build_model(cfg.model, 10)(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_values_given_with_set_are_not_searched():
    free = {p.key for p in searched(["model.widths=[8,16]", "train.lr=0.1"])}
    assert "model.width" not in free and "train.lr" not in free and "train.epochs" in free
    assert len(free) == len(SPACE) - 2


def trials_in(db) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of our own on 127.0.0.1, from Debian's binaries (.ci/run installs them); its URL."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL missing: .ci/run installs Debian's postgresql for the shared-study test")
        pytest.skip("shared-study test on PostgreSQL: apt-get install postgresql")
    need("psycopg")
    bin_dir = bins[-1].parent
    base = Path(tempfile.mkdtemp(prefix="heritagelens-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # the server refuses root
    if as_postgres:
        base.chmod(0o755)
        shutil.chown(base, "postgres", "postgres")
    port = free_port()
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run([*as_postgres, bin_dir / "initdb", "-D", base / "data", "-A", "trust", "-U", "heritagelens"])
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"
    run([*as_postgres, bin_dir / "pg_ctl", "-D", base / "data", "-o", options, "-l", base / "log", "-w", "start"])
    try:
        run([bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "heritagelens", "studies"])
        yield f"postgresql://heritagelens@127.0.0.1:{port}/studies"
    finally:
        run([*as_postgres, bin_dir / "pg_ctl", "-D", base / "data", "-m", "fast", "-w", "stop"])
        shutil.rmtree(base, ignore_errors=True)


def run_together(script: str, url: str, n: int, spacing: float = 0.0) -> list[str]:
    """The outputs of `n` processes running `script` on `url`, each let go `spacing` seconds after the one before
    once all have imported, so they race on the database, not on their start-up; each must succeed."""
    at = time.time() + 3.0  # after every process's imports
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, url, str(at + i * spacing)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [err[-2000:] for _, err in outs]
    return [out for out, _ in outs]


OPEN_AT = """
import sys, time
import optuna.storages, sqlalchemy  # imported before the start, so the race is on the database
from heritagelens.jobs.tune import open_or_create_study
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(open_or_create_study(sys.argv[1], "race")[1])
"""


def test_workers_racing_on_a_new_database_all_open_one_study(postgres):
    """Workers started at once (or nearly) on an empty database race to create its tables and the study: all open
    it and exactly one is its creator, the one that enqueues the base recipe."""
    for n, spacing in enumerate((0.0, 0.05)):
        with need("psycopg").connect(postgres, autocommit=True) as db:
            db.execute(f"CREATE DATABASE race{n}")
        outs = run_together(OPEN_AT, f"{postgres.rpartition('/')[0]}/race{n}", 4, spacing)
        assert sorted(out.strip() for out in outs) == ["False", "False", "False", "True"]


ASK_AT = """
import sys, time
from heritagelens.jobs.tune import open_study
study = open_study(sys.argv[1], "queue", create=False)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(*(study.ask().number for _ in range(20)))
"""


def test_workers_on_one_sqlite_file_never_claim_the_same_queued_trial(tmp_path):
    """Queued trials (the base recipe, a killed trial tried again) are claimed by reading 'waiting' and writing
    'running': on SQLite both must be one step, or two workers read 'waiting' together and both run the trial, and
    the slower one fails when it reports a trial the other finished. Unserialized, 1 to 6 of these 40 claims went
    to both workers in each of 7 runs."""
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    study = open_study(url, "queue")
    for x in range(30):
        study.enqueue_trial({"x": x})
    outs = run_together(ASK_AT, url, 2)
    claimed = [int(n) for out in outs for n in out.split()]
    assert len(claimed) == 40 and len(set(claimed)) == 40, sorted(claimed)
    assert all(out.split() for out in outs)  # both asked


def test_a_table_that_another_worker_just_created_is_tried_again(tmp_path, monkeypatch):
    """PostgreSQL's 'relation already exists' (a worker that checked for the tables before another's creation was
    committed, and created them after) is a lost race, tried again; a storage failing every time is one line."""
    from sqlalchemy.exc import ProgrammingError

    lost = ProgrammingError("CREATE TABLE studies", {}, Exception('relation "studies" already exists'))
    real, calls = tune_module._open_study, []

    def lose_the_race_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise lost
        return real(*args)

    monkeypatch.setattr(tune_module, "_open_study", lose_the_race_once)
    study, created = open_or_create_study(f"sqlite:///{tmp_path / 's.db'}", "s")
    assert len(calls) == 2 and created and study.study_name == "s"

    def always_fail(*args):
        raise lost

    monkeypatch.setattr(tune_module, "_open_study", always_fail)
    monkeypatch.setattr(tune_module.time, "sleep", lambda s: None)
    with pytest.raises(TuneError, match=r"after 5 attempts \(relation \"studies\" already exists\)$"):
        open_or_create_study("postgresql://nowhere/db", "s")


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_two_workers_share_one_study(trained, tmp_path, engine, request):
    root, _ = trained
    url = f"sqlite:///{tmp_path / 'study.db'}" if engine == "sqlite" else request.getfixturevalue("postgres")
    args = ["tune", "--trials", "6", "--storage", url, "--study", f"shared-{engine}", "--data", root, "--quiet"]
    cmd = [sys.executable, "-X", "faulthandler", "-m", "heritagelens", *map(str, args), *FAST]
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [(w.returncode, err[-3000:]) for w, (_, err) in zip(workers, outs)]
    study = open_study(url, f"shared-{engine}", create=False)
    done = [t for t in study.trials if t.state.is_finished()]
    assert len(done) >= 6 and len({t.number for t in study.trials}) == len(study.trials)
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both processes finished trials
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done)  # distinct configurations
    assert sum(bool(t.user_attrs.get("base_recipe")) for t in study.trials) == 1  # enqueued once, by the creator
    assert "best trials:" in outs[0][0] and "val accuracy" in outs[0][0]


def test_a_killed_study_resumes_without_losing_finished_trials(trained, tmp_path):
    root, _ = trained
    db = tmp_path / "study.db"
    args = ["tune", "--trials", "100", "--storage", f"sqlite:///{db}", "--study", "s", "--data", root, "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "heritagelens", *map(str, args), *FAST])
    finished = ("COMPLETE", "PRUNED")  # what --trials counts
    deadline = time.time() + 240
    while time.time() < deadline and (not db.exists() or sum(s == "COMPLETE" for _, s in trials_in(db)) < 2):
        time.sleep(1)
    proc.kill()
    proc.wait()
    before = {n: s for n, s in trials_in(db) if s in finished}
    assert sum(s == "COMPLETE" for s in before.values()) >= 2
    p = cli(
        "tune",
        "--trials",
        len(before) + 2,
        "--storage",
        f"sqlite:///{db}",
        "--study",
        "s",
        "--data",
        root,
        "--quiet",
        *FAST,
    )
    assert p.returncode == 0, p.stderr
    after = {n: s for n, s in trials_in(db) if s in finished}
    assert before.items() <= after.items() and len(after) == len(before) + 2  # kept as they were, two more


def test_pruning_stops_a_trial_that_is_made_to_be_bad(tiny_data, tmp_path):
    base = tiny_config(tiny_data, "train.epochs=6")
    fixed = ["model.widths=[8,16]", "model.depths=[1,1]", "train.epochs=6", "data.val_folds=4"]
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = open_study(storage, "p")
    good = {"train.lr": 0.1, "model.dropout": 0.0, "train.cutout": 0, "train.label_smoothing": 0.0}
    for _ in range(3):
        study.enqueue_trial(good)
    study.enqueue_trial({**good, "train.lr": 1e-7, "train.muon_lr": 1e-7})  # learns nothing: chance every epoch
    study = tune(base, fixed, storage, "p", trials=4)
    states = [t.state.name for t in study.trials]
    assert states[:3] == ["COMPLETE"] * 3 and states[3] == "PRUNED"
    assert max(study.trials[3].intermediate_values) < 100  # stopped before the end of its schedule


def test_show_writes_the_study_report_and_a_best_config_train_accepts(trained, tmp_path):
    root, _ = trained
    db = f"sqlite:///{tmp_path / 'study.db'}"
    p = cli("tune", "--trials", "2", "--storage", db, "--study", "x", "--data", root, "--quiet", *FAST)
    assert p.returncode == 0, p.stderr
    p = cli("tune", "--show", "--storage", db, "--study", "x", "--runs", tmp_path)
    assert p.returncode == 0, p.stderr
    assert "parameter importances" in p.stdout
    report = (tmp_path / "tune-x" / "report.html").read_text()
    assert report.count('<img src="data:image/png;base64,') == 2  # history and importances
    best = tmp_path / "tune-x" / "best-config.json"
    p = cli("train", "--preset", best, "--data", root, "--out", tmp_path / "run", "--quiet", "--epochs", "1")
    assert p.returncode == 0, p.stderr
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"] == json.loads(best.read_text())["model"]


def test_tune_bad_input_gives_one_line(tmp_path):
    assert_one_line_error(cli("tune", "--show", "--storage", f"sqlite:///{tmp_path / 'none.db'}"), "no study")
    assert_one_line_error(cli("tune", "--show", "--storage", "nosuchdb://x"), "cannot open the study storage")
    assert_one_line_error(cli("tune", "--data", tmp_path), "--trials")


def test_a_trial_estimated_over_the_time_cap_is_pruned_before_it_trains(tiny_data, tmp_path):
    fixed = ["model.widths=[8,16]", "model.depths=[1,1]", "train.epochs=2", "data.val_folds=4"]
    base = tiny_config(tiny_data, *fixed)
    prep = prepare(base)
    small, large = (estimated_minutes(base.override([f"model.widths=[{w},{2 * w}]"]), prep) for w in (4, 64))
    assert 0 < small < large  # 16x the channels costs more

    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = tune(base, fixed, storage, "cap", trials=1, trial_minutes=1e-9)
    (t,) = study.trials
    assert t.state.name == "PRUNED" and not t.intermediate_values and t.user_attrs["estimated_minutes"] >= 0
    study = tune(base, fixed, storage, "cap", trials=2, trial_minutes=60)
    assert study.trials[1].state.name == "COMPLETE" and sorted(study.trials[1].intermediate_values) == [50, 100]


def test_a_new_study_starts_with_the_base_recipe(tiny_data, tmp_path):
    fixed = ["model.widths=[8,16]", "model.depths=[1,1]", "train.epochs=2", "data.val_folds=4"]
    base = tiny_config(tiny_data, *fixed, "train.lr=0.05", "train.cutout=8")
    study = tune(base, fixed, f"sqlite:///{tmp_path / 's.db'}", "b", trials=2)
    first = study.trials[0]
    assert first.user_attrs["base_recipe"] and first.params["train.lr"] == 0.05 and first.params["train.cutout"] == 8
    assert Config.from_dict(first.user_attrs["config"]) == base
    assert not study.trials[1].user_attrs.get("base_recipe")
    assert "the base recipe (#0) ranks" in summary(study)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert complete
    for t in complete:  # scored on both validations: the tiny data holds its newest Flickr ids out as a source
        val, source = t.user_attrs["val_accuracy"], t.user_attrs["source_accuracy"]
        assert 0 <= source <= 1 and t.value == pytest.approx((val + source) / 2)
    assert "source accuracy" in summary(study)
    assert baseline(base.override(["train.lr=5"]), searched(fixed)) is None  # outside the space: not enqueued
