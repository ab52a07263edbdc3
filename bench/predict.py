"""`heritagelens predict` on one photo from a cold start: the whole command, a fresh process each time.

    .venv/bin/python bench/predict.py PHOTO [--model CHECKPOINT] [--runs 7]

Runs `heritagelens predict [CHECKPOINT] PHOTO` (the bundled model when none is given) once to warm the disk cache, then
--runs times, and prints the median, fastest and slowest wall time, and how long `import torch` alone takes in a
fresh interpreter (the floor of any command that uses PyTorch).
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


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo")
    ap.add_argument("--model", help="checkpoint (default: the bundled model)")
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()
    exe = shutil.which("heritagelens", path=str(Path(sys.executable).parent)) or "heritagelens"
    cmd = [exe, "predict", *([a.model] if a.model else []), a.photo]
    wall(cmd)
    times = [wall(cmd) for _ in range(a.runs)]
    torch_import = statistics.median(wall([sys.executable, "-c", "import torch"]) for _ in range(3))
    print(
        json.dumps(
            {
                "command": " ".join(cmd[1:]),
                "runs": a.runs,
                "median_s": round(statistics.median(times), 3),
                "min_s": round(min(times), 3),
                "max_s": round(max(times), 3),
                "python_import_torch_s": round(torch_import, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
