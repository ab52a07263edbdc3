"""Temperature scaling: the calibration error of known cases, a known temperature recovered, and the command that
stores it in a checkpoint for predict, evaluate and sort."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import assert_one_line_error, cli

from heritagelens.model.calibration import (
    calibrate,
    curve,
    ece,
    filed_at,
    fit_temperature,
    held_out_predictions,
    reliability,
    threshold_for,
)
from heritagelens.model.checkpoint import read_checkpoint


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


def held(confidence, right, predicted=None):
    predicted = predicted or [0] * len(confidence)
    return {
        "confidence": confidence,
        "predicted": predicted,
        "label": [p if r else p + 1 for p, r in zip(predicted, right)],
    }


def test_a_threshold_files_the_photos_at_or_above_it_and_counts_those_right():
    h = held([0.95, 0.9, 0.9, 0.7, 0.6, 0.4], [1, 1, 0, 1, 0, 0], predicted=[0, 1, 0, 0, 1, 1])
    f = filed_at(h, 0.9)
    assert (f.n, f.filed, f.right, f.coverage, f.accuracy) == (6, 3, 2, 0.5, 2 / 3)
    assert filed_at(h, 0.0).accuracy == 0.5 and filed_at(h, 0.99).filed == 0 and filed_at(h, 0.99).accuracy is None
    assert (filed_at(h, 0.5, predicted=1).n, filed_at(h, 0.5, predicted=1).filed) == (3, 2)  # per class
    assert filed_at(h, 0.9).line() == "at 0.90: 50.0% of photos filed, 66.7% of those right"
    thresholds, coverage, accuracy = curve(h)
    assert thresholds.tolist() == [0.95, 0.9, 0.7, 0.6, 0.4]  # the two photos at 0.9 go together
    assert coverage.tolist() == [1 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0] and accuracy[1] == 2 / 3


def test_the_target_accuracy_picks_the_threshold_that_files_the_most():
    h = held([0.99, 0.97, 0.9, 0.85, 0.8, 0.5, 0.3], [1, 1, 0, 1, 1, 1, 0])
    assert threshold_for(h, 0.8).threshold == 0.5  # 5 of 6 right: the 0.9 miss is outweighed further down
    assert threshold_for(h, 0.9).threshold == 0.97 and threshold_for(h, 1.0).filed == 2
    assert threshold_for(held([0.9, 0.8], [0, 0]), 0.5) is None  # no threshold reaches it


def test_held_out_confidences_come_from_the_other_halfs_temperature():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2_000, 5, generator=g) * 2
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g).flatten()
    h = held_out_predictions(4 * z, labels)
    conf = torch.tensor(h["confidence"], dtype=torch.float64)
    assert h["predicted"] == (4 * z).argmax(1).tolist() and h["label"] == labels.tolist()
    assert not torch.allclose(conf, torch.softmax(4 * z.double(), 1).max(1).values, atol=1e-3)  # calibrated
    # calibrated: the photos filed at a threshold are about as often right as their confidence says
    f = filed_at(h, 0.9)
    assert f.filed > 100 and abs(f.accuracy - conf[conf >= 0.9].mean()) < 0.03


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


def test_evaluating_a_calibrated_model_on_val_says_what_each_threshold_files(trained, tmp_path):
    import json

    from heritagelens.jobs.evaluation import evaluate_checkpoint

    mine = tmp_path / "run"
    shutil.copytree(trained[1], mine)
    assert cli("calibrate", mine).returncode == 0
    one_view = evaluate_checkpoint(mine, "val", tta=False, out_dir=mine)
    rc = json.loads((mine / "risk-coverage.json").read_text())
    everything = rc["rows"][0]  # threshold 0 files every photo: the one-view accuracy, as sort sees photos
    assert everything["threshold"] == 0 and everything["coverage"] == 1 and rc["n"] == one_view.n
    assert everything["accuracy"] == pytest.approx(one_view.accuracy)
    coverage = [r["coverage"] for r in rc["rows"]]
    assert coverage == sorted(coverage, reverse=True)  # a higher threshold never files more
    assert sum(rows[0]["n"] for rows in rc["per_class"].values()) == rc["n"]  # every photo in one predicted class
    assert (mine / "risk-coverage.png").read_bytes()[:4] == b"\x89PNG"
    evaluate_checkpoint(mine, "test", out_dir=tmp_path / "elsewhere")  # measured on val only
    assert not (tmp_path / "elsewhere" / "risk-coverage.json").exists()


def test_calibrate_bad_input(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(cli("calibrate", tmp_path / "x.pt"), "not a HeritageLens checkpoint")
