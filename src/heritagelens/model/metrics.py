"""Evaluation: accuracy, per-class and averaged precision/recall/F1, the confusion matrix, the surest mistakes.

Metrics come from scikit-learn; this module only arranges them. Every result names the split it came from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


@dataclass
class Mistake:
    file: str
    true: str
    predicted: str
    confidence: float


@dataclass
class EvalResult:
    split: str
    """Which images: 'val' (group-aware validation carved from train/), 'test' (the official test split), ..."""
    n: int
    accuracy: float
    tta: bool
    classes: list[str]
    per_class: dict[str, dict[str, float]]
    macro: dict[str, float]
    weighted: dict[str, float]
    confusion: list[list[int]]
    """Rows are true classes, columns predicted classes."""
    mistakes: list[Mistake]
    calibration: dict | None = None
    """With a calibrated checkpoint: its temperature, where it was fitted, and the expected calibration error on
    these images before and after dividing the logits by it (see `heritagelens.model.calibration`)."""
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    """(file, problem) of the split's files that could not be read: not counted in any figure."""
    held_out: str = ""
    """Which photos, where the split's name does not say: what the source-held-out split holds out, the outside
    photos' folder."""
    interval: list[float] | None = None
    """The accuracy's 95% interval [low, high] (Wilson score): where the accuracy on more photos like these lies."""
    folder: str = ""
    """For a split outside the data root (the outside photos): the folder `mistakes[].file` is relative to."""

    @property
    def name(self) -> str:
        """The split's name with what it holds out, as every printed accuracy says it."""
        return f"{self.split} [{self.held_out}]" if self.held_out else self.split

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """Per-class table, averages and accuracy as aligned text."""
        w = max(12, *(len(c) for c in self.classes))
        lines = [f"{'class':<{w}}  precision  recall     f1  support"]
        for c in self.classes:
            m = self.per_class[c]
            lines.append(f"{c:<{w}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {int(m['support']):7d}")
        for name, m in (("macro avg", self.macro), ("weighted avg", self.weighted)):
            lines.append(f"{name:<{w}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {self.n:7d}")
        lines.append(
            f"accuracy on {self.name} ({self.n} images{', TTA' if self.tta else ''}): {self.accuracy:.4f}"
            + (f", 95% interval {interval_text(self.interval)}" if self.interval else "")
        )
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} file(s) of {self.split} could not be read and are not counted:")
            lines += [f"  {f}: {problem}" for f, problem in self.unreadable]
        if self.calibration:
            lines.append(calibration_line(self.calibration))
        return "\n".join(lines)

    def report(self) -> str:
        """The metrics table, the confusion matrix and the surest mistakes, as `eval-<split>.txt` holds them."""
        return "\n\n".join([self.table(), self.confusion_table(), self.mistakes_table()])

    def mistakes_table(self, k: int = 8) -> str:
        wrong = self.n - sum(self.confusion[i][i] for i in range(len(self.classes)))
        lines = [f"surest mistakes (of {wrong}): probability, true -> predicted, file"]
        lines += [f"  {m.confidence:.3f}  {m.true} -> {m.predicted}  {m.file}" for m in self.mistakes[:k]]
        return "\n".join(lines)

    def confusion_table(self) -> str:
        short = [c[:6] for c in self.classes]
        w = max(len(c) for c in self.classes)
        lines = [" " * (w + 2) + " ".join(f"{s:>6}" for s in short) + "   <- predicted"]
        for c, row in zip(self.classes, self.confusion):
            lines.append(f"{c:<{w}}  " + " ".join(f"{v:6d}" for v in row))
        return "\n".join(lines)


def wilson_interval(right: int, n: int, z: float = 1.96) -> list[float]:
    """The Wilson score interval of an accuracy of `right` of `n` (95% for z = 1.96): unlike the normal
    approximation it stays inside [0, 1] and is honest for a few photos or an accuracy near 1."""
    if n == 0:
        return [0.0, 1.0]
    p, zz = right / n, z * z
    centre = (p + zz / (2 * n)) / (1 + zz / n)
    half = z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n)) / (1 + zz / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def interval_text(interval: list[float]) -> str:
    """'90.2%-94.1%'."""
    return f"{interval[0]:.1%}-{interval[1]:.1%}"


def accuracy_lines(results) -> str:
    """One line per evaluated split (`EvalResult`s): its accuracy, on which photos, with its 95% interval."""
    return "\n".join(
        f"accuracy on {r.name}: {r.accuracy:.4f} (95% interval {interval_text(r.interval)}, {r.n} photos)"
        for r in results
    )


def calibration_line(c: dict) -> str:
    held = f", {c['ece_held_out']:.2%} with T fitted on the other half" if c.get("ece_held_out") is not None else ""
    return (
        f"expected calibration error on {c['split']}: {c['ece_before']:.2%} -> {c['ece_after']:.2%} with temperature "
        f"{c['temperature']:.3f} (fitted on {c['fitted_on']}{held})"
    )


def evaluate_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    split: str,
    files: list[str] | None = None,
    tta: bool = False,
    n_mistakes: int = 16,
) -> EvalResult:
    """Every metric of one split from the model's logits (N, C) and the true labels (N,)."""
    y = labels.numpy()
    probs = torch.softmax(logits.float(), 1)
    pred = probs.argmax(1).numpy()
    ks = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=ks, zero_division=0)
    per_class = {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(classes)
    }
    avgs = {}
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(y, pred, labels=ks, average=avg, zero_division=0)
        avgs[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    cm = confusion_matrix(y, pred, labels=ks)
    return EvalResult(
        split=split,
        n=len(y),
        accuracy=float((pred == y).mean()) if len(y) else float("nan"),
        interval=wilson_interval(int((pred == y).sum()), len(y)),
        tta=tta,
        classes=list(classes),
        per_class=per_class,
        macro=avgs["macro"],
        weighted=avgs["weighted"],
        confusion=cm.tolist(),
        mistakes=confident_mistakes(probs, labels, classes, files, n_mistakes),
    )


def confident_mistakes(
    probs: torch.Tensor, labels: torch.Tensor, classes: list[str], files: list[str] | None, k: int
) -> list[Mistake]:
    """The `k` wrong predictions made with the highest probability, surest first."""
    conf, pred = probs.max(1)
    wrong = torch.nonzero(pred != labels).flatten()
    order = wrong[conf[wrong].argsort(descending=True)][:k]
    return [
        Mistake(files[i] if files else str(i), classes[labels[i]], classes[pred[i]], round(float(conf[i]), 4))
        for i in order.tolist()
    ]
