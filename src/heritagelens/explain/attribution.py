"""Where the model looks: occlusion sensitivity (Zeiler & Fergus 2014, section 4.2), and for comparison with the
deconvnet, gradient saliency, guided backpropagation and Grad-CAM.

Occlusion is written here because the paper's maps (the true class's probability and the strongest feature map's
activation as a grey square slides over the image) are not what Captum's `Occlusion` attribution computes. The
three gradient methods come from Captum, which implements them for models built of `nn.ReLU` modules like ours.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.network import HeritageCNN, evaluating, rectified_name
from .deconvnet import record


@dataclass
class OcclusionMaps:
    """Maps (rows, cols) over the occluder's positions, each value measured with the square at that position."""

    probability: torch.Tensor
    """Probability of the target class."""
    feature: torch.Tensor
    """Activation (summed over the map) of the feature map that is strongest on the unoccluded image."""
    predicted: torch.Tensor
    """Class predicted with the square there."""
    channel: int
    size: int
    stride: int


@torch.no_grad()
def occlusion(
    model: HeritageCNN, image: torch.Tensor, target: int, layer: str, size: int = 16, stride: int = 4, batch: int = 256
) -> OcclusionMaps:
    """Slide a `size` px square of the image's mean grey over `image` (3, H, W) in steps of `stride` px."""
    x = image.float()
    H, W = x.shape[-2:]
    tops = list(range(0, H - size + 1, stride))
    lefts = list(range(0, W - size + 1, stride))
    grey = x.mean((1, 2), keepdim=True)
    variants = x.repeat(len(tops) * len(lefts), 1, 1, 1)  # (P, 3, H, W)
    for i, t in enumerate(tops):
        for j, left in enumerate(lefts):
            variants[i * len(lefts) + j, :, t : t + size, left : left + size] = grey
    channel = int(record(model, x[None], layer).feature_map[0].flatten(1).max(1).values.argmax())
    probs, feats = [], []
    with evaluating(model):
        for s in range(0, len(variants), batch):
            v = variants[s : s + batch]
            probs.append(F.softmax(model(v), 1))
            feats.append(record(model, v, layer).feature_map[:, channel].sum((1, 2)))
    p = torch.cat(probs)
    shape = (len(tops), len(lefts))
    return OcclusionMaps(
        p[:, target].reshape(shape), torch.cat(feats).reshape(shape), p.argmax(1).reshape(shape), channel, size, stride
    )


def gradient_maps(
    model: HeritageCNN, images: torch.Tensor, targets: torch.Tensor, layer: str
) -> dict[str, torch.Tensor]:
    """Saliency (|gradient|, Simonyan et al. 2013), guided backpropagation (Springenberg et al. 2014) and Grad-CAM
    (Selvaraju et al. 2017, at `layer`'s ReLU, upsampled) for the `targets` classes, via Captum. Saliency and
    Grad-CAM are (B, H, W); guided backpropagation keeps its colour channels, (B, 3, H, W)."""
    from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam, Saliency

    x = images.detach().float().clone().requires_grad_(True)  # never the caller's tensor
    relu = getattr(model.features, rectified_name(model, layer))
    with evaluating(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")  # Captum removes them after
        saliency = Saliency(model).attribute(x, target=targets, abs=True).amax(1)
        guided = GuidedBackprop(model).attribute(x, target=targets)
        cam = LayerGradCam(model, relu).attribute(x, target=targets, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    return {"saliency": saliency.detach(), "guided_backprop": guided.detach(), "grad_cam": cam.detach()}
