"""What the network sees, as images: the deconvnet's figure-2 grids over a split, per-image views beside the other
explanation methods, and feature evolution. Plain functions that compute and return figures (and their indexes);
the web app shows them, and `heritagelens.jobs` writes them to disk."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..data import dataset
from ..figures import (
    comparison_figure,
    crop,
    evolution_figure,
    explanation_panels,
    figure2,
    per_image_view,
    projection_to_rgb,
)
from ..model.inference import probabilities
from ..model.network import HeritageCNN, conv_layer_names
from .attribution import gradient_maps, occlusion
from .deconvnet import TopK, check_channels, project_top, receptive_box, strongest_channels, top_activations


def default_channels(top, labels: torch.Tensor, n: int) -> list[int]:
    """`n` channels that between them cover the classes: in turn for each class, the channel not yet chosen whose
    top images hold the most images of that class (ties to the stronger channel). Sorted by channel number."""
    counts = torch.stack([(labels[top.indices] == k).sum(1) for k in range(int(labels.max()) + 1)], 1)  # (C, K)
    score = counts.float() + top.values.mean(1, keepdim=True) / (top.values.max() + 1e-12) * 0.5
    chosen: list[int] = []
    while len(chosen) < min(n, len(score)):
        k = len(chosen) % score.shape[1]
        s = score[:, k].clone()
        s[chosen] = float("-inf")
        chosen.append(int(s.argmax()))
    return sorted(chosen)


def top9_figure(
    model: HeritageCNN,
    split: dataset.Split,
    layer: str,
    channels: list[int] | None = None,
    k: int = 9,
    n_default: int = 16,
    top: TopK | None = None,
) -> tuple[Image.Image, dict]:
    """Figure 2 of Zeiler & Fergus for `layer` over every image of `split`, and its index (every channel's top-k);
    `top`, when given, is that layer's `top_activations` over `split`, computed before."""
    top = top or top_activations(model, split.images, layer, k=k)
    C = top.values.shape[0]
    check_channels(channels or [], C, layer)
    chosen = channels or default_channels(top, split.labels, n_default)
    proj = project_top(model, split.images, top, chosen)
    size = split.images.shape[-1]
    boxes = [[receptive_box(model, layer, tuple(p), size) for p in top.positions[c].tolist()] for c in chosen]
    fig = figure2(proj, split.images[top.indices[chosen]], boxes, chosen, layer)
    index = {
        "layer": layer,
        "shown_channels": chosen,
        "shown_because": "given" if channels else "in turn per class, the channel whose top images are most of it",
        "channels": {
            str(c): [
                {"file": split.files[i], "activation": round(float(v), 4), "position": p}
                for i, v, p in zip(top.indices[c].tolist(), top.values[c].tolist(), top.positions[c].tolist())
            ]
            for c in range(C)
        },
    }
    return fig, index


def evolution(snapshots: list[tuple[int, HeritageCNN]], split: dataset.Split, layer: str, channels: list[int]):
    """For each snapshot (epoch, model): the projection of each channel's strongest activation over `split`,
    cropped to its receptive field; the figure and its index."""
    cells: list[list] = [[] for _ in channels]
    index: dict[str, list] = {str(c): [] for c in channels}
    for epoch, model in snapshots:
        top = top_activations(model, split.images, layer, k=1)
        check_channels(channels, top.values.shape[0], layer)
        proj = project_top(model, split.images, top, channels)[:, 0]  # (n, 3, H, W)
        for row, (c, p) in enumerate(zip(channels, proj)):
            box = receptive_box(model, layer, tuple(top.positions[c, 0].tolist()), split.images.shape[-1])
            cells[row].append(crop(projection_to_rgb(p), box))
            index[str(c)].append(
                {
                    "epoch": epoch,
                    "file": split.files[int(top.indices[c, 0])],
                    "activation": round(float(top.values[c, 0]), 4),
                }
            )
    return evolution_figure(cells, channels, [e for e, _ in snapshots], layer), index


def image_view(
    model: HeritageCNN, image: torch.Tensor, layers: list[str], channels: list[int] | None = None, n: int = 9
) -> tuple[Image.Image, dict]:
    """Projections of one image (3, H, W) uint8: at each layer, `channels` or the `n` strongest channels."""
    rows, index = [], {}
    for layer in layers:
        ch, values, proj, pos = strongest_channels(model, image, layer, n, channels)
        rows.append((layer, ch.tolist(), proj))
        index[layer] = [
            {"channel": c, "activation": round(v, 4), "position": p}
            for c, v, p in zip(ch.tolist(), values.tolist(), pos.tolist())
        ]
    return per_image_view(image, rows), index


@dataclass
class Explanation:
    """Why a model gave one image its class: every map of the comparison figure, as tensors at the image's size
    (occlusion's at its grid of positions)."""

    target: int
    """The class explained (the predicted one unless asked for another)."""
    predicted: int
    probability: float
    """The target's probability: calibrated when a temperature was given (`calibrated`)."""
    calibrated: bool
    layer: str
    channel: int
    """The strongest channel of `layer`: the one the deconvnet projects and occlusion's feature map follows."""
    maps: dict[str, torch.Tensor]
    """'deconvnet' and 'guided_backprop' (3, H, W); 'saliency' and 'grad_cam' (H, W); 'occlusion_probability'
    (the target's probability with each patch greyed) and 'occlusion_feature' (the channel's activation), (h, w)."""
    occlusion: dict[str, int]
    """The occluding patch's size and stride, in pixels."""


def explain(
    model: HeritageCNN,
    image: torch.Tensor,
    layer: str | None = None,
    target: int | None = None,
    temperature: float | None = None,
) -> Explanation:
    """The deconvnet projection of the strongest channel of `layer` (default: the deepest conv layer), saliency,
    guided backprop, Grad-CAM and both occlusion maps of one uint8 image (3, H, W), for class `target` (default:
    the predicted one)."""
    layer = layer or conv_layer_names(model)[-1]
    probs = probabilities(model, image[None], temperature)[0]
    predicted = int(probs.argmax())
    target = predicted if target is None else target
    channels, _, proj, _ = strongest_channels(model, image, layer, 1)
    maps = {k: v[0] for k, v in gradient_maps(model, image[None], torch.tensor([target]), layer).items()}
    occ = occlusion(model, image, target, layer)
    maps = {"deconvnet": proj[0], **maps, "occlusion_probability": occ.probability, "occlusion_feature": occ.feature}
    return Explanation(
        target,
        predicted,
        float(probs[target]),
        temperature is not None,
        layer,
        int(channels[0]),
        maps,
        {"size": occ.size, "stride": occ.stride},
    )


def comparison(
    model: HeritageCNN,
    image: torch.Tensor,
    classes: list[str],
    layer: str,
    target: int | None = None,
    temperature: float | None = None,
    photo: np.ndarray | None = None,
) -> tuple[Image.Image, dict]:
    """The deconvnet beside saliency, guided backprop, Grad-CAM and occlusion for one image (3, H, W) uint8, all
    for `target` (default: the predicted class) at `layer` (its strongest channel): `explain`, drawn. The
    probability it quotes is the calibrated one `predict` and `sort` give when `temperature` is the checkpoint's,
    and says 'uncalibrated' when it is None. `photo` (RGB (H, W, 3) at the photo's own resolution) is what the heat
    maps are drawn over (default: the model's input)."""
    e = explain(model, image, layer, target, temperature)
    kind = "" if e.calibrated else ", uncalibrated"
    title = (
        f"target {classes[e.target]} ({e.probability:.1%}{kind}); predicted {classes[e.predicted]}; "
        f"deconvnet and occlusion feature: {layer} channel {e.channel}"
    )
    m = e.maps
    panels = explanation_panels(
        image, m["deconvnet"], m, m["occlusion_probability"], m["occlusion_feature"], classes[e.target]
    )
    fig = comparison_figure(image, title, panels, photo)
    index = {
        "target": classes[e.target],
        "probability": round(e.probability, 4),
        "calibrated": e.calibrated,
        "layer": layer,
        "channel": e.channel,
        "occlusion": {**e.occlusion, "min_probability": round(float(m["occlusion_probability"].min()), 4)},
    }
    return fig, index
