"""The scores a panel of judges gives a set of images, and their tables (the judges themselves:
`heritagelens.judging.judges`).

Every set of images is scored three ways:

1. recognisability: per judge, the fraction classified as the intended class and the mean probability given to it;
2. naturalness: Fréchet distance to real images of the same class in the feature judge's penultimate features, and
   the distance between radially averaged power spectra;
3. diversity: mean pairwise feature distance among the images of a class, relative to that among real images.

Real validation images (the ceiling) and naive gradient ascent (the floor) go through the same code. A panel is a
mapping of judge names to objects with a `model` (`heritagelens.judging.judges.Judge`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..model.network import evaluating
from ..model.precision import for_inference
from .quality import frechet_distance, relative_diversity, spectrum_distance

FEATURE_JUDGE = "robust-cnn"
"""The judge whose penultimate features measure naturalness and diversity."""

HEADLINE_JUDGE = "robust-resnet"
"""The judge whose verdict headlines a gallery: robust, and of another architecture than the CNNs visualized."""


@torch.no_grad()
def judge_outputs(model: nn.Module, images: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, K), penultimate features (N, D)) of uint8 or 0..255 float images (N, 3, H, W). Always in
    float32, so that scores compare across machines, in the memory layout chosen for this one."""
    probs, feats = [], []
    amp = for_inference(model)
    with evaluating(model):
        for i in range(0, len(images), batch):
            x = amp.input(images[i : i + batch].float())
            f = model.pooled(x)
            probs.append(model.head.fc(f).softmax(1))
            feats.append(f)
    return torch.cat(probs), torch.cat(feats)


def recognisability(probs: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """Fraction classified as the intended class and mean probability of it, overall and per class."""
    hit = (probs.argmax(1) == targets).double()
    p = probs.gather(1, targets[:, None])[:, 0].double()
    per_class = {
        classes[k]: {"recognised": float(hit[targets == k].mean()), "mean_prob": float(p[targets == k].mean())}
        for k in targets.unique().tolist()
    }
    return {"recognised": float(hit.mean()), "mean_prob": float(p.mean()), "per_class": per_class}


def score_images(
    images: torch.Tensor,
    targets: torch.Tensor,
    panel: Mapping[str, Any],
    reference: torch.Tensor,
    reference_labels: torch.Tensor,
    classes: list[str],
    ref_feats: torch.Tensor | None = None,
) -> dict:
    """The three scores of `images` (N, 3, H, W) meant to show `targets` (N,), against real `reference` images
    (`ref_feats`: the feature judge's features of them, when computed already)."""
    out: dict = {"n": len(images), "judges": {}}
    for name, judge in panel.items():
        probs, _ = judge_outputs(judge.model, images)
        out["judges"][name] = recognisability(probs, targets, classes)
    _, feats = judge_outputs(panel[FEATURE_JUDGE].model, images)
    if ref_feats is None:
        _, ref_feats = judge_outputs(panel[FEATURE_JUDGE].model, reference)
    per_class = {}
    for k in targets.unique().tolist():
        g, r = targets == k, reference_labels == k
        per_class[classes[k]] = {
            "frechet": frechet_distance(feats[g].numpy(), ref_feats[r].numpy()),
            "spectrum": spectrum_distance(images[g], reference[r]),
            "diversity": relative_diversity(feats[g], ref_feats[r]),
        }
    for key in ("frechet", "spectrum", "diversity"):
        out[key] = float(np.mean([v[key] for v in per_class.values()]))
    out["per_class"] = per_class
    return out


def ceiling_split(labels: torch.Tensor, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of `per_class` real images of each class (scored as the ceiling, as generated images are) and of
    the rest (the reference every set is compared with), so that the ceiling is not compared with itself."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for k in labels.unique().tolist():
        idx = (labels == k).nonzero()[:, 0]
        picked.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    sample = torch.cat(picked).sort().values
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[sample] = False
    return sample, rest.nonzero()[:, 0]


@dataclass
class RealImages:
    """Real validation images split into the ceiling sample (scored like generated images) and the reference (what
    every set is compared with)."""

    ceiling: torch.Tensor
    ceiling_labels: torch.Tensor
    reference: torch.Tensor
    reference_labels: torch.Tensor


def real_images(images: torch.Tensor, labels: torch.Tensor, per_class: int, keep, seed: int = 0) -> RealImages:
    """`per_class` images of each class in `keep` as the ceiling; every image not in the sample as the reference."""
    sample, rest = ceiling_split(labels, per_class, seed)
    sample = sample[torch.isin(labels[sample], torch.as_tensor(keep))]
    return RealImages(images[sample], labels[sample], images[rest], labels[rest])


def gallery_scores(
    sets: dict[str, tuple[torch.Tensor, torch.Tensor]], real: RealImages, panel: Mapping[str, Any], classes: list[str]
) -> dict[str, dict]:
    """Scores of each named set of (images, intended classes), then of the real ceiling, against `real`'s reference."""
    _, ref_feats = judge_outputs(panel[FEATURE_JUDGE].model, real.reference)  # once for every set
    ref = (real.reference, real.reference_labels, classes, ref_feats)
    scored = {name: score_images(images, targets, panel, *ref) for name, (images, targets) in sets.items()}
    scored["real val (ceiling)"] = score_images(real.ceiling, real.ceiling_labels, panel, *ref)
    return scored


def score_rows(sets: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per scored set: recognised fraction per judge, Fréchet distance, spectrum distance,
    diversity."""
    judges = list(next(iter(sets.values()))["judges"])
    header = ["set"] + [f"{j} judge" for j in judges] + [f"FD ({FEATURE_JUDGE})", "spectrum", "diversity"]
    rows = [
        [name]
        + [f"{s['judges'][j]['recognised']:.1%}" for j in judges]
        + [f"{s['frechet']:.1f}", f"{s['spectrum']:.3f}", f"{s['diversity']:.2f}"]
        for name, s in sets.items()
    ]
    return header, rows


def per_class_rows(s: dict, classes: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per class: recognised fraction and mean probability per judge, Fréchet distance,
    diversity."""
    judges = list(s["judges"])
    header = ["class"] + [f"{j} {k}" for j in judges for k in ("rec", "p")] + ["FD", "diversity"]
    rows = []
    for c in (c for c in classes if c in s["per_class"]):
        row = [c]
        for j in judges:
            pc = s["judges"][j]["per_class"][c]
            row += [f"{pc['recognised']:.0%}", f"{pc['mean_prob']:.2f}"]
        rows.append(row + [f"{s['per_class'][c]['frechet']:.1f}", f"{s['per_class'][c]['diversity']:.2f}"])
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Aligned text: the first column to the left, the others to the right, a rule under the header."""
    first = max(len(r[0]) for r in [header, *rows]) + 2
    widths = [max(len(r[i]) for r in [header, *rows]) + 2 for i in range(1, len(header))]
    lines = [f"{r[0]:<{first}}" + "".join(f"{v:>{w}}" for v, w in zip(r[1:], widths)) for r in [header, *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def score_table(sets: dict[str, dict]) -> str:
    return text_table(*score_rows(sets))


def per_class_table(s: dict, classes: list[str]) -> str:
    return text_table(*per_class_rows(s, classes))
