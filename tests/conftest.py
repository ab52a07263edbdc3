"""Shared fixtures: tiny synthetic datasets on disk, and the real AHE64 train split (never silently skipped in CI)."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import forked_cli
import numpy as np
import pytest
from PIL import Image

from heritagelens.config import Config

TINY_MODEL = ["model.widths=[8,16]", "model.depths=[1,1]"]
FP32 = ["train.precision=fp32"]
"""Tests not about precision run in float32, without timing the modes (tests/test_precision.py covers 'auto')."""


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Decode caches go to a folder of this test session, not the user's."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


def class_image(k: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """An image whose class is visible: class k is a bright stripe pattern at its own angle and colour, plus noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    angle = np.pi * k / 5 + rng.uniform(-0.2, 0.2)
    phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(2.0, 5.0)  # so no two images are near-duplicates
    wave = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) / period + phase)
    colour = np.array([(k * 70) % 256, (k * 130 + 60) % 256, (k * 200 + 30) % 256])
    img = 40 + 0.6 * colour[None, None] + 40 * wave[..., None]
    img = img + rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_dataset(
    root: Path, classes=("arch", "bell", "dome"), per_class: int = 24, test_per_class: int = 0, seed: int = 0
) -> Path:
    """`root/train/<class>/*.jpg` (and test/) of learnable synthetic images, with Flickr-like names far apart."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for k, c in enumerate(classes):
            if n == 0:
                continue
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                # ids 10**7 apart: no two images form a burst, so groups come only from pixels or names
                fid = 10_000_000_000 + (k * 1000 + i) * 10_000_000 + (0 if split == "train" else 5_000_000)
                class_image(k, rng).save(d / f"{fid}_abcdef12_m.jpg", quality=92)
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_dataset(tmp_path / "ahe", test_per_class=6)


def tiny_config(root: Path, *extra: str) -> Config:
    cfg = Config().override(TINY_MODEL + ["train.epochs=2", "train.batch_size=16", "data.val_folds=4", *FP32, *extra])
    cfg.data.root = str(root)
    return cfg


SLOW = {"main_run", "chromium", "postgres", "ddp_results"}
"""Fixtures that make a test slow (the whole main job, a browser, a database server, two processes training):
`pytest -m "not slow and not realdata"` is the quick inner loop."""


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


def metrics(run: Path) -> list[dict[str, str]]:
    """A run's `metrics.csv`, one dict per epoch keyed by column name."""
    with (Path(run) / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def skip_outside_ci(reason: str) -> None:
    """Skip a test this machine cannot run; in CI (`CI` set) fail instead: nothing is skipped there unseen."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: this test must run in CI")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ahe_root() -> Path:
    """The real AHE64 data at $AHE_DATA. In CI its absence is a failure, never a skip."""
    env = os.environ.get("AHE_DATA")
    if env and (Path(env) / "train").is_dir():
        return Path(env)
    if os.environ.get("CI"):
        pytest.fail(f"AHE_DATA={env!r} does not hold train/: real-data tests must run in CI")
    pytest.skip("real-data test: set AHE_DATA to the AHE64 root")


@pytest.fixture(scope="session")
def ahe_train(ahe_root):
    from heritagelens.data import load_split

    return load_split(ahe_root, "train")


# ------------------------------------------------------------------------------- the command, run as a user runs it

SETS = [a for s in TINY_MODEL + ["data.val_folds=4", "train.batch_size=16", *FP32] for a in ("--set", s)]
TINY_JUDGES = [
    "--set",
    'gallery.judge_overrides=["model.widths=[8,16]", "model.depths=[1,1]", "train.batch_size=16", '
    '"train.precision=fp32"]',
]


def cli(*args, cwd: Path | None = None, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m heritagelens ARGS` in a new process, without the caller's AHE_DATA unless `env` gives it.

    The process is forked from one that has imported the package already (`forked_cli`); `HERITAGELENS_TEST_EXEC=1`
    runs every command through a fresh interpreter instead."""
    e = {k: v for k, v in os.environ.items() if k != "AHE_DATA"}
    e.update(env or {})
    argv = [str(a) for a in args]
    if os.environ.get("HERITAGELENS_TEST_EXEC") != "1":
        return forked_cli.run(argv, e, cwd, timeout)
    return subprocess.run(
        [sys.executable, "-m", "heritagelens", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=e,
        timeout=timeout,
    )


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("heritagelens: error: "), p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny model trained through the CLI on synthetic data; (data root, run folder)."""
    base = tmp_path_factory.mktemp("cli")
    root = make_dataset(base / "ahe", test_per_class=5)
    p = cli("train", "--data", root, "--epochs", "2", "--out", base / "run", "--quiet", *SETS)
    assert p.returncode == 0, p.stderr
    return root, base / "run"


@pytest.fixture(scope="session")
def main_run(trained, tmp_path_factory):
    """`heritagelens run` end to end on the tiny data, robust model and scored gallery included; (process, run)."""
    root, _ = trained
    base = tmp_path_factory.mktemp("main")
    gallery = ["gallery.robust_epochs=2", "gallery.samples=2", "gallery.floor_samples=1", "dream.steps=16"]
    gallery.append(f"gallery.judges_dir={base / 'j'}")
    sets = [*SETS, *(a for g in gallery for a in ("--set", g)), *TINY_JUDGES]
    p = cli("run", "--data", root, "--epochs", "2", "--out", base / "run", "--quiet", *sets)
    assert p.returncode == 0, p.stderr
    return p, base / "run"


def need(module: str):
    """The module; missing, it skips the test locally but fails it in CI, where `make test` installs every extra."""
    if os.environ.get("CI"):
        return __import__(module)
    return pytest.importorskip(module)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Debian Chromium for browser tests; in CI its absence is a failure, never a skip."""
    path = "/usr/bin/chromium"
    if Path(path).exists():
        need("playwright")
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{path} missing: .ci/run installs Debian's chromium for the browser tests")
    pytest.skip("browser test: apt-get install chromium")
