"""Sorting a photo collection: which view of a large photo to classify, and how fast `heritagelens sort` runs.

1. Views (`--views`): the checkpoint's held-out validation images, each enlarged to a random size of 128 to 1,024
   px on its long side, as a square, a 4:3 or a 3:4 frame (the 64 px picture stretched to it), saved as JPEG; every
   view in `heritagelens.sort.inputs.VIEWS` is scored by accuracy on them, per frame shape.
2. Speed (`--speed`): N JPEGs of 64 to 1,024 px (enlarged training images, random frame shapes, 10 folders) are
   made once under `--photos`; `heritagelens sort` runs on the first 2,000 and on all N, each in a fresh process
   into a fresh folder: images/s as the command reports it, and the process's peak memory (flat in N when it
   streams). With `--xmp`, every run also writes an XMP sidecar beside each photo (removed before each run, so all
   are written anew).

usage: AHE_DATA=../shared/data/ahe64 .venv/bin/python bench/sort.py RUN [--views] [--speed [--xmp]] [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FRAMES = {"square": (1, 1), "4:3": (4, 3), "3:4": (3, 4)}


def enlarge(image: np.ndarray, rng: np.random.Generator, frame: str, low: int = 128) -> Image.Image:
    """A (3, 64, 64) uint8 image stretched to a random size of `low`-1,024 px on its long side in `frame`'s shape."""
    long = int(rng.integers(low, 1025))
    w, h = FRAMES[frame]
    size = (long, long * h // w) if w >= h else (long * w // h, long)
    return Image.fromarray(image.transpose(1, 2, 0)).resize(size, Image.Resampling.BICUBIC)


def measure_views(run: str) -> dict:
    from heritagelens.config import Config
    from heritagelens.data.split import prepare
    from heritagelens.model.checkpoint import load_model
    from heritagelens.model.inference import predict_logits
    from heritagelens.sort.inputs import VIEWS, load

    model, classes, ckpt = load_model(run)
    cfg = Config.from_dict(ckpt["config"])
    prep = prepare(cfg)
    images, labels = prep.split.images[prep.val_idx].numpy(), prep.split.labels[prep.val_idx]
    rng = np.random.default_rng(0)
    out = {"images": len(labels), "split": "val (group-aware, held out from training)"}
    with tempfile.TemporaryDirectory() as tmp:
        for frame in FRAMES:
            files = []
            for i, im in enumerate(images):
                f = Path(tmp) / f"{frame.replace(':', 'x')}-{i}.jpg"
                enlarge(im, rng, frame).save(f, quality=90)
                files.append(f)
            for how in VIEWS:
                x = [load(f, how) for f in files]
                v = len(x[0])
                probs = torch.softmax(predict_logits(model, torch.from_numpy(np.concatenate(x))), 1)
                pred = probs.reshape(len(files), v, -1).mean(1).argmax(1)
                out[f"{frame} {how}"] = round(float((pred == labels).float().mean()), 4)
                print(f"{frame:>6} {how:>6}: {out[f'{frame} {how}']:.4f}", flush=True)
    return out


def make_photos(folder: Path, n: int, data: str) -> None:
    from heritagelens.data.dataset import load_split

    if folder.is_dir() and sum(1 for _ in folder.rglob("*.jpg")) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    split = load_split(data, "train")
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for i in range(n):
        d = folder / f"folder-{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        im = split.images[i % len(split.images)].numpy()
        photo = enlarge(im, rng, list(FRAMES)[i % 3], low=64)
        photo.save(d / f"{i:05d}.jpg", quality=90)
    print(f"made {n} photos in {time.perf_counter() - t0:.0f} s", flush=True)


def sort_once(run: str, photos: Path, out: Path, xmp: bool = False) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    for f in photos.rglob("*.xmp"):
        f.unlink()
    cmd = [sys.executable, "-m", "heritagelens", "sort", run, str(photos), "--out", str(out), "--quiet"]
    cmd += ["--xmp"] if xmp else []
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rate = float(re.search(r"\(([\d.]+) images/s\)", p.stdout).group(1))
    sorted_n = int(re.search(r"sorted (\d+) photo", p.stdout).group(1))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # MiB, the largest child so far
    return {"photos": sorted_n, "images_per_s": rate, "peak_rss_mib_so_far": round(peak, 1)}


def measure_speed(run: str, n: int, photos: Path, data: str, xmp: bool = False) -> list[dict]:
    make_photos(photos, n, data)
    small = photos.parent / f"{photos.name}-2000"
    if not small.is_dir():
        for f in sorted(photos.rglob("*.jpg"))[:2000]:
            target = small / f.relative_to(photos)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, target)
    results = []
    for folder in (small, photos):  # smaller first: the peak of the children so far is then the larger run's
        r = sort_once(run, folder, photos.parent / "sorted", xmp) | {"xmp": xmp}
        print(json.dumps(r), flush=True)
        results.append(r)
    shutil.rmtree(photos.parent / "sorted", ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="checkpoint or run folder")
    ap.add_argument("--views", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--xmp", action="store_true", help="with --speed: write XMP sidecars too")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--photos", default="runs/bench-sort/photos")
    ap.add_argument("--data", default=os.environ.get("AHE_DATA", "../shared/data/ahe64"))
    a = ap.parse_args()
    results = {}
    if a.views:
        results["views"] = measure_views(a.run)
    if a.speed:
        results["speed"] = measure_speed(a.run, a.n, Path(a.photos), a.data, a.xmp)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
