"""Every slow command says first what it does: started on the real data as a user starts it, each is stopped once it
has written its first line, which names the model and what it is about to read."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch
from conftest import free_port

from heritagelens.model.card import BUNDLED
from heritagelens.model.checkpoint import read_checkpoint

pytestmark = pytest.mark.realdata


def first_line(proc: subprocess.Popen, got: dict, name: str) -> None:
    """The first line of `proc`'s stderr that says what it does (the note naming the bundled model is not it)."""
    for line in proc.stderr:
        if line.startswith("heritagelens: ") and "no checkpoint given" not in line:
            got[name] = line.rstrip("\n")
            return
    got[name] = f"<ended with {proc.wait()} and no line>"


def test_each_slow_command_says_first_what_it_does_on_the_real_data(ahe_root, trained, tmp_path):
    _, run = trained
    torch.save(read_checkpoint(BUNDLED), tmp_path / "model.pt")  # calibrate writes into a checkpoint
    commands = {
        "evaluate": (["evaluate", "--split", "val", "--out", tmp_path / "e"], f"evaluating {BUNDLED} on val (group"),
        "calibrate": (["calibrate", tmp_path / "model.pt"], f"calibrating {tmp_path / 'model.pt'} on its validation"),
        "deconv": (["deconv", "--top9", "--layer", "conv4_2", "--out", tmp_path / "d"], f"deconv: {BUNDLED}, the top"),
        "dream": (["dream", "--class", "vault", "--out", tmp_path / "g"], f"dream: {BUNDLED}, 4 image(s) of vault"),
        "data check": (["data", "check", ahe_root], f"data check: reading every image under {ahe_root}"),
        "export": (["export", "--out", tmp_path / "m.onnx"], f"export: {BUNDLED} to {tmp_path / 'm.onnx'}"),
        "report": (["report", run, "--out", tmp_path / "r.html"], f"report: {run}, its figures"),
        "serve": (["serve", "--port", free_port()], f"serve: loading {BUNDLED} and its training images"),
    }
    env = os.environ | {"AHE_DATA": str(ahe_root), "PYTHONUNBUFFERED": "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "heritagelens", *map(str, argv)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for name, (argv, _) in commands.items()
    }
    got: dict[str, str] = {}
    readers = [threading.Thread(target=first_line, args=(p, got, n)) for n, p in procs.items()]
    try:
        for r in readers:
            r.start()
        for r in readers:
            r.join(timeout=300)
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    for name, (_, said) in commands.items():
        assert got.get(name, "").startswith(f"heritagelens: {said}"), (name, got.get(name))
