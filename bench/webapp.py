"""Explorer web app: time to prediction plus projections, one client and many.

1. In process: `Explorer.classify` (decode, top-5, deconvnet projections of the 6 strongest channels of every
   layer) on real training images, after warm-up.
2. Over HTTP: `heritagelens serve RUN` on a free local port; one client uploads images one after another through
   the Gradio client (upload, queue, compute, response).
3. Load: `--clients` threads, each its own Gradio client, upload images in a loop for `--seconds`; every request's
   outcome and latency recorded.

usage: AHE_DATA=../shared/data/ahe64 .venv/bin/python bench/webapp.py RUN [--clients 20] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.array(xs) * 1000
    return {f"p{q}": round(float(np.percentile(a, q)), 1) for q in (50, 90, 95, 99)} | {"max": round(a.max(), 1)}


def in_process(run: str, files: list[Path], n: int) -> dict:
    from heritagelens.webapp import Explorer

    ex = Explorer(run)
    for f in files[:3]:
        ex.classify(str(f))
    times = []
    for f in files[:n]:
        t0 = time.perf_counter()
        r = ex.classify(str(f))
        times.append(time.perf_counter() - t0)
        assert r.top5 is not None, r.status
    return {"requests": len(times), "ms": percentiles(times)}


def start(run: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "heritagelens", "serve", run, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start")


def one_client(url: str, files: list[Path], n: int) -> dict:
    from gradio_client import Client, handle_file

    c = Client(url, verbose=False, download_files=False)
    c.predict(handle_file(str(files[0])), None, api_name="/classify")
    times = []
    for f in files[:n]:
        t0 = time.perf_counter()
        c.predict(handle_file(str(f)), None, api_name="/classify")
        times.append(time.perf_counter() - t0)
    return {"requests": len(times), "ms": percentiles(times)}


def load(url: str, files: list[Path], clients: int, seconds: float) -> dict:
    from gradio_client import Client, handle_file

    ok, failed, errors = [], [], []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        c = Client(url, verbose=False, download_files=False)
        j = i
        while time.perf_counter() < stop:
            f = files[j % len(files)]
            j += clients
            t0 = time.perf_counter()
            try:
                out = c.predict(handle_file(str(f)), None, api_name="/classify")
                good = out[1] is not None  # the top-5 label came back
            except Exception as e:  # every failure counts, whatever its kind
                good, out = False, repr(e)[:200]
            with lock:
                (ok if good else failed).append(time.perf_counter() - t0)
                if not good:
                    errors.append(str(out)[:200])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "ok": len(ok),
        "failed": len(failed),
        "first_errors": errors[:3],
        "requests_per_s": round(len(ok) / wall, 2),
        "ms": percentiles(ok) if ok else {},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run folder or checkpoint (its data root must exist)")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--n", type=int, default=40, help="requests for the one-client timings")
    a = p.parse_args()
    root = Path(os.environ.get("AHE_DATA", "../shared/data/ahe64"))
    files = sorted((root / "train").rglob("*.jpg"))[::97]  # a spread over every class
    result = {"in_process": in_process(a.run, files, a.n)}
    print(json.dumps(result), flush=True)
    proc, url = start(a.run)
    try:
        result["one_client_http"] = one_client(url, files, a.n)
        print(json.dumps(result["one_client_http"]), flush=True)
        result["load"] = load(url, files, a.clients, a.seconds)
    finally:
        proc.terminate()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
