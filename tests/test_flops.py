from __future__ import annotations

import pytest

from heritagelens.config import Config
from heritagelens.train.flops import training_flops

ONE_CONV = Config().override(
    ["model.widths=[8]", "model.depths=[1]", "train.epochs=4", "train.batch_size=10"]
    + ["train.optimizer=sgd", "train.res_min=64"]  # SGD at full size throughout; each test adds what it counts
)


def test_training_compute_matches_a_hand_count():
    # conv 3->8, 3x3, at 64x64: 64*64*8*27 multiply-adds forward, as many for the filters' gradient (the input needs
    # none); the 8->10 head: one product forward, two backward
    per_image = 2 * (64 * 64 * 8 * 27 * 2) + 3 * (2 * 8 * 10)
    f = training_flops(ONE_CONV, 100)
    assert f["gflop_per_image"] == pytest.approx(per_image / 1e9, rel=1e-3)
    assert f["tflop"] == pytest.approx(4 * 100 * per_image / 1e12, rel=1e-3) and f["steps"] == 40


def test_low_resolution_epochs_cost_their_share_and_muon_its_iterations():
    full = training_flops(ONE_CONV, 100)["tflop"]
    half = training_flops(ONE_CONV.override(["train.res_min=32", "train.res_ramp=[0.5,0.5]"]), 100)
    assert half["epochs_per_side"] == {32: 2, 64: 2}
    assert half["tflop"] == pytest.approx(full * (2 * 0.25 + 2) / 4, rel=0.01)  # a 32 px epoch: a quarter
    muon = training_flops(ONE_CONV.override(["train.optimizer=muon"]), 100)
    ns = 3 * (4 * 8 * 8 * 27 + 2 * 8**3)  # three Newton-Schulz iterations on the 8 x 27 filter bank
    assert muon["optimizer_gflop_per_step"] == pytest.approx(ns / 1e9, rel=1e-3)
    assert muon["tflop"] == pytest.approx(full + 40 * ns / 1e12, rel=1e-3)
    five = training_flops(ONE_CONV.override(["train.optimizer=muon", "train.muon_ns_steps=5"]), 100)
    assert five["optimizer_gflop_per_step"] == pytest.approx(ns / 3 * 5 / 1e9, rel=1e-3)
