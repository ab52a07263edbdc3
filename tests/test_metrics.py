from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import classification_report

from heritagelens.figures import confusion_figure
from heritagelens.model.metrics import evaluate_logits

CLASSES = ["a", "b", "c"]


def _logits(pred: list[int], conf: list[float]) -> torch.Tensor:
    """Logits whose softmax gives probability `conf[i]` to class `pred[i]` and splits the rest evenly."""
    p = torch.tensor([[(1 - c) / 2] * 3 for c in conf])
    p[torch.arange(len(pred)), torch.tensor(pred)] = torch.tensor(conf)
    return p.log()


def test_metrics_by_hand():
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = [0, 0, 1, 1, 2, 2]
    r = evaluate_logits(_logits(pred, [0.9] * 6), y, CLASSES, "val")
    assert r.accuracy == pytest.approx(4 / 6)
    assert r.per_class["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert r.per_class["b"]["precision"] == 0.5 and r.per_class["b"]["recall"] == 0.5
    assert r.per_class["c"]["precision"] == 0.5 and r.per_class["c"]["recall"] == 1.0
    assert r.macro["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert r.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r.split == "val" and "accuracy on val (6 images)" in r.table()


def test_metrics_agree_with_scikit_learn_on_random_predictions():
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(0, 3, 500))
    logits = torch.from_numpy(rng.normal(size=(500, 3))).float() + 1.5 * torch.nn.functional.one_hot(y, 3)
    r = evaluate_logits(logits, y, CLASSES, "test")
    ref = classification_report(y.numpy(), logits.argmax(1).numpy(), output_dict=True, target_names=CLASSES)
    for c in CLASSES:
        for k in ("precision", "recall"):
            assert r.per_class[c][k] == pytest.approx(ref[c][k])
        assert r.per_class[c]["f1"] == pytest.approx(ref[c]["f1-score"])
    assert r.macro["f1"] == pytest.approx(ref["macro avg"]["f1-score"])
    assert r.weighted["precision"] == pytest.approx(ref["weighted avg"]["precision"])
    assert r.accuracy == pytest.approx(ref["accuracy"])


def test_confident_mistakes_are_the_surest_wrong_predictions_first():
    y = torch.tensor([0, 1, 2, 0])
    r = evaluate_logits(_logits([1, 1, 0, 2], [0.6, 0.99, 0.95, 0.7]), y, CLASSES, "val", files=["w", "x", "y", "z"])
    assert [(m.file, m.true, m.predicted) for m in r.mistakes] == [("y", "c", "a"), ("z", "a", "c"), ("w", "a", "b")]
    assert r.mistakes[0].confidence == pytest.approx(0.95, abs=1e-4)
    assert r.mistakes_table().splitlines()[:2] == [
        "surest mistakes (of 3): probability, true -> predicted, file",
        "  0.950  c -> a  y",
    ]


def test_a_class_absent_from_the_split_still_has_a_row():
    r = evaluate_logits(_logits([0, 1], [0.8, 0.8]), torch.tensor([0, 1]), CLASSES, "val")
    assert r.per_class["c"]["support"] == 0 and len(r.confusion) == 3
    fig = confusion_figure(r)
    assert "accuracy 1.000 on 2 images" in fig.axes[0].get_title()
