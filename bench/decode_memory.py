"""Peak memory of decoding one large image, as `predict` does: each file in a fresh process, peak RSS (reset just
before, Linux only) less the process's RSS before the decode.

    python bench/decode_memory.py [--side 10000]

Makes a 16-bit greyscale PNG, an 8-bit RGB PNG and a JPEG of `--side` x `--side` px in a temporary folder, then
decodes each with `heritagelens.data.images.decode` and prints the megabytes the decode added at its peak.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PROBE = """
import sys
from heritagelens.data.images import decode
def status(key):
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(key))
    return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from here
before = status("VmRSS")
decode(sys.argv[1])
print(status("VmHWM") - before)
"""


def make(folder: Path, side: int) -> dict[str, Path]:
    y, x = np.mgrid[0:side, 0:side]
    files = {"16-bit grey PNG": folder / "grey16.png", "8-bit RGB PNG": folder / "rgb.png", "JPEG": folder / "rgb.jpg"}
    Image.fromarray(((x + y) * 3 % 65536).astype(np.uint16)).save(files["16-bit grey PNG"])
    rgb = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))
    rgb.save(files["8-bit RGB PNG"])
    rgb.save(files["JPEG"], quality=90)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=10_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for what, path in make(Path(tmp), a.side).items():
            out = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True)
            size = path.stat().st_size / 1e6
            print(f"{what:<16} {a.side}x{a.side} ({size:.1f} MB file): peak +{float(out.stdout):.0f} MB while decoding")


if __name__ == "__main__":
    main()
