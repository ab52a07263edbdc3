"""Temperature scaling: the calibration error of known cases, a known temperature recovered, and the command that
stores it in a checkpoint for predict, evaluate and sort."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import assert_one_line_error, cli

from heritagelens.calibration import calibrate, ece, fit_temperature, reliability
from heritagelens.checkpoint import read_checkpoint


def two_class(conf: float, n: int, right: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` predictions of class 0 with probability `conf`, of which `right` are correct."""
    probs = torch.tensor([[conf, 1 - conf]] * n)
    return probs, torch.tensor([0] * right + [1] * (n - right))


def test_expected_calibration_error_of_known_cases():
    p, y = two_class(0.9, 10, 7)  # says 90%, right 70%: off by 0.2
    assert ece(p, y) == pytest.approx(0.2)
    p1, y1 = two_class(0.6, 4, 3)  # one bin off by 0.15 ...
    p2, y2 = two_class(0.95, 6, 6)  # ... another off by 0.05
    p, y = torch.cat([p1, p2]), torch.cat([y1, y2])
    assert ece(p, y) == pytest.approx((4 * 0.15 + 6 * 0.05) / 10)
    bins = reliability(p, y)
    assert [b["count"] for b in bins] == [4, 6] and bins[0]["lo"] == pytest.approx(0.6, abs=0.07)
    perfect, yp = two_class(0.8, 10, 8)
    assert ece(perfect, yp) == pytest.approx(0.0, abs=1e-6)  # float32 probabilities


def test_a_known_temperature_is_recovered_and_removes_the_calibration_error():
    """Labels drawn from softmax(z) are calibrated for z; a model reporting 3z is overconfident by T = 3."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 10, generator=g) * 2
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g).flatten()
    assert fit_temperature(3 * z, labels) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(z / 2, labels) == pytest.approx(0.5, rel=0.05)  # underconfident: T below 1
    c = calibrate(3 * z, labels, "val", tta=False)
    assert c.ece_before > 0.1 and c.ece_after < 0.01 and c.ece_held_out < 0.015 and c.nll_after < c.nll_before
    assert (torch.softmax(3 * z / c.temperature, 1).argmax(1) == (3 * z).argmax(1)).all()  # predictions unchanged


def test_calibrate_stores_the_temperature_that_predict_and_evaluate_use(trained, tmp_path):
    root, run = trained
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    image = next((root / "test").rglob("*.jpg"))
    before = cli("predict", mine, image)
    p = cli("calibrate", mine)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("temperature") == 2 and "ECE" in p.stdout and "held out" in p.stdout
    ckpt = read_checkpoint(mine)  # still a weights-only checkpoint
    t = ckpt["calibration"]["plain"]["temperature"]
    assert ckpt["calibration"]["tta"]["tta"] and t > 0
    after = cli("predict", mine, image)
    assert before.stdout.split()[1] == after.stdout.split()[1]  # same class
    if abs(t - 1) > 0.01:
        assert before.stdout != after.stdout  # other probabilities
    e = cli("evaluate", mine, "--split", "test")
    assert "expected calibration error on test" in e.stdout and "fitted on val" in e.stdout
    assert (mine / "reliability-test.png").read_bytes()[:4] == b"\x89PNG"


def test_calibrate_bad_input(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(cli("calibrate", tmp_path / "x.pt"), "not a HeritageLens checkpoint")
