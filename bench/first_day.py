"""A new user's first day, end to end, with nothing trained: the bundled model sorts held-out photos with `--xmp`,
ExifTool reads the keywords back beside the originals (whose bytes must not change), and the review tab in Chromium
files one `_uncertain` photo into a class; then the folder, `sort.csv` and the sidecar are checked.

    AHE_DATA=../shared/data/ahe64 .venv/bin/python bench/first_day.py [--per-class 20]

The photos are each class's newest Flickr uploads (the source-held-out validation the bundled model never trained
on), copied to a temporary folder. Needs Debian's exiftool and chromium (as `.ci/run` installs them). Prints what it
found at each step and "first day: holds", or stops at the first step that fails.
"""

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--per-class", type=int, default=20, help="newest Flickr photos of each class to sort")
args = ap.parse_args()
hl = Path(sys.executable).with_name("heritagelens")
data = Path(os.environ.get("AHE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "ahe64"))
from heritagelens.data.dataset import name_key  # noqa: E402
from heritagelens.webapp import running, wait_text  # noqa: E402

work = Path(tempfile.mkdtemp(prefix="heritagelens-first-day-"))
photos, out = work / "photos", work / "sorted"
classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
for k, c in enumerate(classes):  # each class's newest Flickr uploads: the source-held-out photos
    (photos / f"site{k % 3}").mkdir(parents=True, exist_ok=True)
    flickr = [f for f in (data / "train" / c).glob("*.jpg") if name_key(f.name)[0] == "flickr"]
    for f in sorted(flickr, key=lambda f: name_key(f.name)[1])[-args.per_class :]:
        shutil.copyfile(f, photos / f"site{k % 3}" / f"{k}-{f.name}")
originals = sorted(p for p in photos.rglob("*.jpg"))
before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in originals}
print(f"{len(originals)} held-out photos in {photos}")

env = {k: v for k, v in os.environ.items() if k != "AHE_DATA"}  # a user's shell: no data set
t = time.time()
p = subprocess.run([hl, "sort", photos, "--out", out, "--xmp"], capture_output=True, text=True, env=env)
print(f"$ heritagelens sort {photos} --out {out} --xmp   ({time.time() - t:.1f} s, exit {p.returncode})")
print(p.stdout.strip(), p.stderr.strip(), sep="\n")
assert p.returncode == 0


def rows():
    with (out / "sort.csv").open() as fh:
        return {r["file"]: r for r in csv.DictReader(fh)}


def exif(files):
    r = subprocess.run(
        ["exiftool", "-j", "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {Path(d["SourceFile"]).name: d for d in json.loads(r.stdout)}


def as_list(v):
    return [] if v is None else v if isinstance(v, list) else [v]


table = rows()
sidecars = [photos / (f + ".xmp") for f in table]
assert all(s.is_file() for s in sidecars), "a sidecar is missing"
read = exif(sidecars)
filed = right = 0
for f, r in table.items():
    d = read[Path(f).name + ".xmp"]
    if r["copied_to"].startswith("_uncertain/"):  # waiting for a person, as a photo manager gathers them
        assert as_list(d.get("Subject")) == ["to review"], (f, d)
        assert as_list(d.get("HierarchicalSubject")) == ["HeritageLens|to review"], (f, d)
        continue
    filed += 1
    right += r["class"] == classes[int(Path(f).name.split("-")[0])]
    assert as_list(d.get("Subject")) == [r["class"]], (f, d)
    assert as_list(d.get("HierarchicalSubject")) == [f"HeritageLens|{r['class']}"], (f, d)
unsure = sorted(f for f, r in table.items() if r["copied_to"].startswith("_uncertain/"))
print(
    f"ExifTool read {len(sidecars)} sidecars: {filed} filed with keyword and hierarchy matching sort.csv "
    f"({right} of them the right class), {len(unsure)} in _uncertain with no keyword"
)
assert all(hashlib.sha256(p.read_bytes()).hexdigest() == h for p, h in before.items())
assert sorted(p for p in photos.rglob("*.jpg")) == originals
print(f"originals: {len(originals)} files, every SHA-256 unchanged")

assert unsure, "nothing to review"
file = unsure[0]
k = int(Path(file).name.split("-")[0])
with running([], work / "serve.log", env) as url:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(60_000)

        page.goto(url)
        page.click("button[role=tab]:has-text('Review a sort')")
        page.fill("#review-folder textarea, #review-folder input", str(out))
        page.click("#review-open")
        wait_text(page, "#review-status", f"(1 of {len(unsure)})")
        print("review tab:", page.inner_text("#review-status").strip().splitlines()[0])
        page.click(f"#review-file-{k}")
        wait_text(page, "#review-status", f"Filed {file} as {classes[k]}")
        print("review tab:", page.inner_text("#review-status").strip().splitlines()[0])
        page.screenshot(path=work / "review.png", full_page=True)
        browser.close()

r = rows()[file]
copy = out / r["copied_to"]
assert r["class"] == classes[k] and r["decided"] == "person", r
assert copy.parent.name == classes[k] and copy.is_file(), r
assert not list((out / "_uncertain").rglob(Path(file).name)), "the copy is still in _uncertain"
d = exif([photos / (file + ".xmp")])[Path(file).name + ".xmp"]
assert as_list(d.get("Subject")) == [classes[k]] and as_list(d.get("HierarchicalSubject")) == [
    f"HeritageLens|{classes[k]}"
], d
assert all(hashlib.sha256(p.read_bytes()).hexdigest() == h for p, h in before.items())
print(
    f"{file}: moved from _uncertain to {r['copied_to']}; sort.csv says {r['class']} decided by {r['decided']}; "
    f"ExifTool reads Subject {d['Subject']!r} in its sidecar; originals still unchanged"
)
print(f"first day: holds (files in {work})")
