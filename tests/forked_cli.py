"""The command line in a fresh process that starts warm.

Every `cli(...)` of the tests is a new process, as a user's command is: its own environment, working folder,
standard streams, exit code and exit handlers. Starting `python -m heritagelens` costs over two seconds of imports
(torch above all), a hundred times in a suite; so the processes are forked from a multiprocessing fork server that
imported the package once. What runs in the child is what `python -m heritagelens` runs.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import tempfile
from pathlib import Path

PRELOAD = [
    "heritagelens.cli",
    "heritagelens.jobs.pipeline",
    "heritagelens.explain.views",
    "heritagelens.jobs.tune",
    "heritagelens.sort.sorter",
    "heritagelens.data.fetch",
    "heritagelens.jobs.report",
    "heritagelens.model.export",
    "heritagelens.model.calibration",
]

_context = None


def context():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(argv: list[str], env: dict[str, str], cwd: str | None, out: str, err: str) -> None:
    """Runs in the forked process: as `python -m heritagelens ARGV` would, then exits with its code."""
    import atexit
    import sys
    import traceback

    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
    import heritagelens
    from heritagelens.cli import main

    sys.argv = [str(Path(heritagelens.__file__).with_name("__main__.py")), *argv]  # as `python -m` sets it

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    except BaseException:
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(args: list[str], env: dict[str, str], cwd: Path | None, timeout: float) -> subprocess.CompletedProcess:
    """`python -m heritagelens ARGS` in a forked process; as `subprocess.run(..., capture_output=True, text=True)`."""
    with tempfile.TemporaryDirectory(prefix="hl-cli-") as d:
        out, err = os.path.join(d, "out"), os.path.join(d, "err")
        p = context().Process(target=_child, args=(args, env, None if cwd is None else str(cwd), out, err))
        p.start()
        p.join(timeout)
        if p.exitcode is None:
            p.kill()
            p.join()
            raise subprocess.TimeoutExpired(["heritagelens", *args], timeout)
        stdout, stderr = (Path(f).read_text(encoding="utf-8") if os.path.exists(f) else "" for f in (out, err))
    return subprocess.CompletedProcess(["heritagelens", *args], p.exitcode, stdout, stderr)
