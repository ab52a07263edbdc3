"""Decoding the train split, then loading it again from the cache.

    AHE_DATA=../shared/data/ahe64 python bench/data_load.py

Uses a fresh temporary cache folder, so the first load really decodes every image.
"""

from __future__ import annotations

import os
import tempfile
import time

from heritagelens.data.dataset import load_split


def main():
    root = os.environ.get("AHE_DATA", "data/ahe64")
    with tempfile.TemporaryDirectory() as cache:
        for what in ("first load (decode, 4 threads)", "second load (cache)"):
            t = time.perf_counter()
            s = load_split(root, "train", cache_dir=cache)
            print(f"{what}: {time.perf_counter() - t:.2f} s for {len(s.labels)} images")


if __name__ == "__main__":
    main()
