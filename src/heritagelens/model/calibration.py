"""Temperature scaling (Guo et al. 2017): one number T divides the logits so that a predicted probability of 0.8
is right about 80% of the time. T is fitted on the group-aware validation split by minimising the negative
log-likelihood; the argmax, and so every accuracy, is unchanged.

Expected calibration error (ECE): predictions binned by confidence into 15 equal-width bins; the average gap between
each bin's accuracy and its mean confidence, weighted by the bin's share of the images. An ECE measured on the images
T was fitted on flatters it, so `calibrate` also reports a held-out figure: T fitted on one half of the split and
measured on the other, both ways round.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .card import TEMPERATURES

BINS = 15


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """Expected calibration error of probabilities (N, C) against true labels (N,)."""
    return sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in reliability(probs, labels, bins)) / max(
        1, len(labels)
    )


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> list[dict]:
    """Per confidence bin (lo, hi]: its image count, mean confidence and accuracy (empty bins left out)."""
    conf, pred = probs.max(1)
    right = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(conf.double(), edges[1:-1])  # bin k holds (edges[k], edges[k+1]]
    out = []
    for k in range(bins):
        m = which == k
        if m.any():
            out.append(
                {
                    "lo": float(edges[k]),
                    "hi": float(edges[k + 1]),
                    "count": int(m.sum()),
                    "confidence": float(conf[m].double().mean()),
                    "accuracy": float(right[m].mean()),
                }
            )
    return out


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [0.05, 20] minimising the negative log-likelihood of softmax(logits / T) (a 1-D convex search)."""
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        return 1.0
    z = logits.double()
    low, high = TEMPERATURES
    r = minimize_scalar(
        lambda log_t: nll(z, labels, float(np.exp(log_t))),
        bounds=(np.log(low), np.log(high)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.clip(np.exp(r.x), low, high))  # within the bounds a checkpoint's check accepts, to the last bit


def held_out_probabilities(logits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Calibrated probabilities (N, C) in which no image's temperature was fitted on itself: the split is cut into
    two random halves and each half is divided by the temperature fitted on the other."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    halves = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    probs = torch.empty(logits.shape, dtype=torch.float64)
    for fit_on, test_on in (halves, halves[::-1]):
        probs[test_on] = torch.softmax(logits[test_on].double() / fit_temperature(logits[fit_on], labels[fit_on]), 1)
    return probs


def held_out_ece(logits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """ECE of temperatures fitted on one random half and applied to the other, both ways, pooled."""
    return ece(held_out_probabilities(logits, labels, seed), labels)


# ------------------------------------------------------------------------------------------------- risk-coverage
# A sorter files a photo when its top probability reaches a threshold and leaves the others to a person. What a
# threshold means is measured on held-out photos: the share filed (coverage) and the accuracy of those filed.


@dataclass
class Filed:
    """What a confidence threshold does on the held-out photos."""

    threshold: float
    n: int
    """Photos measured on."""
    filed: int
    right: int

    @property
    def coverage(self) -> float:
        return self.filed / max(1, self.n)

    @property
    def accuracy(self) -> float | None:
        return self.right / self.filed if self.filed else None

    def line(self) -> str:
        acc = f"{self.accuracy:.1%} of those right" if self.filed else "none filed"
        return f"at {self.threshold:.2f}: {self.coverage:.1%} of photos filed, {acc}"


def held_out_predictions(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, list]:
    """Per image of the split: its held-out calibrated top probability, predicted class and true class (indices),
    from which every threshold's coverage and accuracy follow (`filed_at`, `threshold_for`)."""
    conf, pred = held_out_probabilities(logits, labels).max(1)
    return {"confidence": [round(float(c), 5) for c in conf], "predicted": pred.tolist(), "label": labels.tolist()}


def measured(held: Any) -> dict[str, list] | None:
    """`held` when it is what `held_out_predictions` makes (equal, non-empty lists: a confidence in [0, 1], a
    predicted and a true class index per photo), else None: figures read from a file are checked before use."""
    if not isinstance(held, dict):
        return None
    cols = [held.get(k) for k in ("confidence", "predicted", "label")]
    if not all(isinstance(c, list) for c in cols) or not cols[0] or len({len(c) for c in cols}) != 1:
        return None
    if not all(_is_number(c) and 0 <= c <= 1 for c in cols[0]):  # NaN fails the range
        return None
    return held if all(_is_number(v) and isinstance(v, int) and v >= 0 for v in cols[1] + cols[2]) else None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def filed_at(held: dict[str, list], threshold: float, predicted: int | None = None) -> Filed:
    """Coverage and accuracy at `threshold` (a photo is filed when its top probability is at least it); with
    `predicted`, among the photos the model puts in that class."""
    conf, pred, label = (np.asarray(held[k]) for k in ("confidence", "predicted", "label"))
    mine = pred == predicted if predicted is not None else np.ones(len(conf), bool)
    filed = mine & (conf >= threshold)
    return Filed(threshold, int(mine.sum()), int(filed.sum()), int((filed & (pred == label)).sum()))


def curve(held: dict[str, list]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The risk-coverage curve: (threshold, coverage, accuracy of those filed) at every distinct confidence, from the
    highest threshold down (a threshold files every photo of one confidence or none of them)."""
    conf, right = np.asarray(held["confidence"]), np.asarray(held["predicted"]) == np.asarray(held["label"])
    order = np.argsort(-conf, kind="stable")
    conf, right = conf[order], right[order]
    filed = np.arange(1, len(conf) + 1)
    last = np.r_[conf[1:] != conf[:-1], True]
    return conf[last], filed[last] / len(conf), (np.cumsum(right) / filed)[last]


def threshold_for(held: dict[str, list], target: float) -> Filed | None:
    """The threshold that files the most photos while those filed are at least `target` accurate (None when no
    threshold reaches it)."""
    thresholds, _, accuracy = curve(held)
    ok = np.nonzero(accuracy >= target)[0]
    return filed_at(held, float(thresholds[ok[-1]])) if len(ok) else None


@dataclass
class Calibration:
    """A fitted temperature and what it does on the split it was fitted on."""

    temperature: float
    split: str
    tta: bool
    n: int
    ece_before: float
    ece_after: float
    """On the images T was fitted on (flattering)."""
    ece_held_out: float
    """T fitted on one half of the split, measured on the other (the honest figure)."""
    nll_before: float
    nll_after: float
    held_out: dict[str, list] | None = None
    """Each image's held-out calibrated confidence, predicted and true class (`held_out_predictions`): the
    risk-coverage curve."""

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        views = "TTA" if self.tta else "one view"
        return (
            f"temperature {self.temperature:.3f} ({views}, fitted on {self.split}, {self.n} images): ECE "
            f"{self.ece_before:.2%} -> {self.ece_after:.2%} ({self.ece_held_out:.2%} held out), NLL "
            f"{self.nll_before:.4f} -> {self.nll_after:.4f}"
        )


def calibrate(logits: torch.Tensor, labels: torch.Tensor, split: str, tta: bool) -> Calibration:
    t = fit_temperature(logits, labels)
    z = logits.double()
    return Calibration(
        temperature=t,
        split=split,
        tta=tta,
        n=len(labels),
        ece_before=ece(torch.softmax(z, 1), labels),
        ece_after=ece(torch.softmax(z / t, 1), labels),
        ece_held_out=held_out_ece(logits, labels),
        nll_before=nll(z, labels),
        nll_after=nll(z, labels, t),
        held_out=held_out_predictions(logits, labels),
    )
