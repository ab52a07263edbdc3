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

import numpy as np
import torch
import torch.nn.functional as F

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
            out.append({
                "lo": float(edges[k]), "hi": float(edges[k + 1]), "count": int(m.sum()),
                "confidence": float(conf[m].double().mean()), "accuracy": float(right[m].mean()),
            })  # fmt: skip
    return out


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [0.05, 20] minimising the negative log-likelihood of softmax(logits / T) (a 1-D convex search)."""
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        return 1.0
    z = logits.double()
    r = minimize_scalar(lambda log_t: nll(z, labels, float(np.exp(log_t))), bounds=(np.log(0.05), np.log(20)),
                        method="bounded", options={"xatol": 1e-5})  # fmt: skip
    return float(np.exp(r.x))


def held_out_ece(logits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """ECE of temperatures fitted on one random half and applied to the other, both ways, pooled."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    halves = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    pooled = []
    for fit_on, test_on in (halves, halves[::-1]):
        t = fit_temperature(logits[fit_on], labels[fit_on])
        pooled.append(torch.softmax(logits[test_on].double() / t, 1))
    return ece(torch.cat(pooled), labels[torch.cat([halves[1], halves[0]])])


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
        temperature=t, split=split, tta=tta, n=len(labels),
        ece_before=ece(torch.softmax(z, 1), labels), ece_after=ece(torch.softmax(z / t, 1), labels),
        ece_held_out=held_out_ece(logits, labels), nll_before=nll(z, labels), nll_after=nll(z, labels, t),
    )  # fmt: skip
