"""The review tab's speed: how long a decision takes to be saved and the next photo to be ready, on a large sort.

    python bench/review.py PHOTOS [--model CHECKPOINT] [--decisions 20]

Sorts PHOTOS (for instance the 10,000 photos `bench/sort.py --speed` makes) with the model at --min-confidence 0.99,
so that many wait in `_uncertain/`, then makes --decisions decisions as the page does (`Explorer.decide`: the copy
moved, the journal synced, `sort.csv` rewritten, the sidecar merged, the next photo read and shown) and prints the
median and the slowest, in milliseconds. The explanation figures the page draws after the next photo is shown are
timed apart (`Explorer.explain`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from heritagelens.model.card import BUNDLED
from heritagelens.webapp import UNSURE, Explorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos")
    ap.add_argument("--model", default=str(BUNDLED))
    ap.add_argument("--decisions", type=int, default=20)
    ap.add_argument("--out", default="runs/bench-review/sorted")
    a = ap.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "heritagelens", "sort", a.model, a.photos, "--out", str(out), "--xmp", "--quiet"]
    subprocess.run([*cmd, "--min-confidence", "0.99"], check=True, capture_output=True)
    ex = Explorer(a.model, "/nonexistent")  # the review needs no training data
    shown = ex.review(str(out), UNSURE)
    decide, explain = [], []
    for _ in range(a.decisions):
        t = time.perf_counter()
        shown = ex.decide(str(out), UNSURE, shown.file, 0)
        decide.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        ex.explain(str(out), shown.file)
        explain.append((time.perf_counter() - t) * 1000)
    with (out / "sort.csv").open() as f:
        rows = sum(1 for _ in f) - 1
    print(
        json.dumps(
            {
                "photos_in_sort": rows,
                "decisions": a.decisions,
                "decide_and_next_ms_median": round(statistics.median(decide)),
                "decide_and_next_ms_max": round(max(decide)),
                "explain_ms_median": round(statistics.median(explain)),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
