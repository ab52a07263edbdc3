"""Shared fixtures: tiny synthetic datasets on disk, and the real AHE64 train split (never silently skipped in CI)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import forked_cli
import numpy as np
import pytest
from PIL import Image

from heritagelens.config import Config
from heritagelens.webapp import free_port, wait_text  # noqa: F401  (the tests' too)

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


LONGEST_FIRST = ("test_realdata.py", "test_bundled.py")
"""The files whose tests take longest (the real-data main job, the bundled model on three sets): collected first, so
that `make test`'s two workers (a file each at a time) start them at once rather than end on them."""


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: the rest keep their order


def metrics(run: Path) -> list[dict[str, str]]:
    """A run's `metrics.csv`, one dict per epoch keyed by column name."""
    with (Path(run) / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def sort_rows(out: Path) -> dict[str, dict]:
    """The rows of a sort's `sort.csv` by photo, read as strict UTF-8 (as a spreadsheet reads it)."""
    with (Path(out) / "sort.csv").open(newline="", encoding="utf-8") as f:
        return {r["file"]: r for r in csv.DictReader(f)}


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
    from heritagelens.data.dataset import load_split

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
    errors = [ln for ln in lines if ln.startswith("heritagelens: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], p.stderr  # one error line, the last
    assert all(ln.startswith("heritagelens: ") for ln in lines), p.stderr  # before it, only what was being done
    for n in needles:
        assert n in errors[0], errors[0]


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


@pytest.fixture
def read_only(tmp_path):
    """A folder the test fills, then `freeze()` makes read-only: a read-only filesystem when the tests run as root
    (whom permissions do not stop), else mode 555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", folder]).returncode == 0
    )
    if os.geteuid() == 0 and not mounted:
        skip_outside_ci("running as root where no read-only filesystem can be mounted: nothing is read-only to root")

    def freeze():
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", folder], check=True)
        else:
            folder.chmod(0o555)

    yield folder, freeze
    if mounted:
        subprocess.run(["umount", folder], check=True)
    else:
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def photos(trained, tmp_path) -> tuple[Path, dict[str, str]]:
    """The tiny test images as 'photos': nested folders, 64 to 400 px, JPEG, PNG and WebP, one rotated by EXIF,
    plus a text file and a truncated JPEG. Returns (folder, true class by relative path)."""
    root, _ = trained
    out, truth = tmp_path / "photos", {}
    rng = np.random.default_rng(0)
    for i, f in enumerate(sorted((root / "test").rglob("*.jpg"))):
        im = Image.open(f).convert("RGB")
        size = int(rng.choice([64, 150, 400]))
        im = im.resize((size, size * 3 // 4 if i % 2 else size), Image.Resampling.BICUBIC)
        sub = out / f"day{i % 3}" / ("close-ups" if i % 4 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        ext = [".jpg", ".png", ".webp"][i % 3]
        name = f"IMG_{i:04d}{ext}"
        if i == 0:  # stored lying on its side, with the EXIF tag that puts it upright
            exif = Image.Exif()
            exif[0x0112] = 6
            im.transpose(Image.Transpose.ROTATE_90).save(sub / name, exif=exif.tobytes())
        else:
            im.save(sub / name)
        truth[(sub / name).relative_to(out).as_posix()] = f.parent.name
    (out / "day0" / "notes.txt").write_text("not a photo")
    (out / "day1" / "broken.jpg").write_bytes(next((root / "test" / "arch").glob("*.jpg")).read_bytes()[:300])
    return out, truth


@contextlib.contextmanager
def serving(args: list[str], log: Path):
    """`heritagelens serve ARGS` on a free local port, as a user starts it (without $AHE_DATA); its URL."""
    from heritagelens.webapp import ServeError, running

    env = {k: v for k, v in os.environ.items() if k != "AHE_DATA"}
    try:
        with running(args, log, env) as url:
            yield url
    except ServeError as e:
        pytest.fail(str(e))


@contextlib.contextmanager
def browser_page(chromium: str):
    """A page of headless Chromium (Debian's), 1400 x 1100, waiting up to a minute for anything."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1100})
        pg.set_default_timeout(60_000)
        try:
            yield pg
        finally:
            browser.close()
