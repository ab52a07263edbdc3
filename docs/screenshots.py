"""The README's screenshots: a run's report and each tab of the web app, drawn by Debian's Chromium.

    .venv/bin/python docs/screenshots.py --run RUN [--data ../shared/data/ahe64] [--out docs/screenshots]

RUN is a run folder with its `report.html` (what `make run` writes). The web app serves the bundled model with the
data's training images (for the top 9); a photo from the outside photos beside the data (or from train/) is uploaded,
its strongest channel followed to its top 9, a class image made, and a few photos sorted with a high threshold so
that the Review tab has a queue. Each PNG is written atomically; an existing one is replaced (they are generated).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from heritagelens.data import dataset
from heritagelens.files import atomic_write_bytes
from heritagelens.model.card import BUNDLED, model_card
from heritagelens.webapp import ServeError, running, wait_text

WIDTH, HEIGHT = 1280, 900
CHROMIUM = "/usr/bin/chromium"


@contextmanager
def serving(data_root: Path, log: Path):
    """`heritagelens serve --data DATA` (the bundled model) on a free port; its URL."""
    try:
        with running(["--data", data_root], log) as url:
            yield url
    except ServeError as e:
        raise SystemExit(str(e)) from None


def wait_image(page, selector: str) -> None:
    page.wait_for_function(
        "s => { const i = document.querySelector(s + ' img'); return i && i.complete && i.naturalWidth > 0 }",
        arg=selector,
    )


def shoot(page, out: Path, name: str, full: bool = False) -> Path:
    """The page (its first screen, or all of it) as `out/name.png`, written atomically."""
    path = out / f"{name}.png"
    png = page.screenshot(full_page=full)
    atomic_write_bytes(png, path)
    print(f"{path}: {Image.open(path).size[0]} x {Image.open(path).size[1]} px")
    return path


def a_photo(root: Path, cls: str) -> Path:
    """A photo of `cls` from other sources than the training's when there are some, else from train/."""
    outside = dataset.find_outside("", str(root), model_card(BUNDLED)["classes"])
    folder = (outside or root / "train") / cls
    return sorted(folder.glob("*.jpg"))[0]


def sorted_queue(root: Path, work: Path) -> Path:
    """A sort of 40 photos (4 of each class) at a 0.95 threshold: the output folder, with an unsure queue."""
    photos = work / "photos"
    photos.mkdir()
    for c in model_card(BUNDLED)["classes"]:
        for f in sorted((root / "train" / c).glob("*.jpg"))[-4:]:
            (photos / f"{c}-{f.name}").write_bytes(f.read_bytes())
    out = work / "sorted"
    cmd = [sys.executable, "-m", "heritagelens", "sort", str(photos), "--out", str(out), "--min-confidence", "0.95"]
    subprocess.run([*cmd, "--quiet"], check=True)
    return out


def main() -> int:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path, help="run folder with its report.html")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("AHE_DATA", "../shared/data/ahe64")))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "screenshots")
    a = p.parse_args()
    if not (a.run / "report.html").is_file():
        raise SystemExit(f"{a.run}: no report.html (heritagelens report {a.run} writes it)")
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.set_default_timeout(120_000)
        page.goto((a.run / "report.html").resolve().as_uri())
        shoot(page, a.out, "report")
        queue = sorted_queue(a.data, Path(tmp))
        with serving(a.data, Path(tmp) / "serve.log") as url:
            page.goto(url)
            page.locator("#upload input[type=file]").set_input_files(str(a_photo(a.data, "gargoyle")))
            wait_text(page, "#status", "%")
            for s in ("#projections", "#maps"):
                wait_image(page, s)
            shoot(page, a.out, "classify", full=True)
            page.click("#strongest input")
            page.locator("li[role=option]").first.click()
            page.click("#follow")
            wait_text(page, "#channel-status", "strongest on train/")
            wait_image(page, "#top9")
            shoot(page, a.out, "channels", full=True)
            page.click("button[role=tab]:has-text('Class images')")
            page.click("#class input")
            page.click("li[role=option]:has-text('dome(outer)')")
            page.click("#generate")
            wait_text(page, "#dream-status", "image(s) of dome(outer)")
            wait_image(page, "#dreamed")
            shoot(page, a.out, "class-images", full=True)
            page.click("button[role=tab]:has-text('Review a sort')")
            page.fill("#review-folder textarea, #review-folder input", str(queue))
            page.click("#review-open")
            wait_text(page, "#review-status", " of ")
            for s in ("#review-photo", "#review-proj", "#review-maps"):
                wait_image(page, s)
            shoot(page, a.out, "review", full=True)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
