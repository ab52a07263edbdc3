"""A model's predictions: logits with or without test-time augmentation, and calibrated probabilities, computed in
float32 in the memory layout chosen for the machine, or in a mode named by `train.precision`
(`heritagelens.model.precision.for_inference`). Every command that predicts goes through here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data import images as _images
from ..progress import bar
from .network import evaluating
from .precision import for_inference


def decode(path) -> torch.Tensor:
    """One photo as the models take it, a (3, 64, 64) uint8 tensor, decoded as every command decodes it (any format
    Pillow reads, upright, in RGB); raises `images.DataError` naming the file. `decode(p)[None]` is a batch of one."""
    return torch.from_numpy(_images.decode(path))


CPU_BATCH = 32
"""Images a forward pass takes at once on a CPU: measured on the bundled model (2-core AVX2 EPYC, channels-last
fp32) at 300 images/s against 176 for batches of 256 (`bench/inference_batch.py`)."""


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The views averaged at test time: the image, its mirror, and both shifted by 2 px (reflect-filled)."""
    shifted = F.pad(x, (2, 2, 2, 2), mode="reflect")[:, :, 4:, 4:]
    return [x, x.flip(3), shifted, shifted.flip(3)]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    tta: bool = False,
    batch_size: int | None = None,
    precision: str = "auto",
    progress: str | None = None,
) -> torch.Tensor:
    """Logits (N, classes) in float32 on the CPU for uint8 images (N, 3, 64, 64), computed on the model's device in
    eval mode and in float32 ('auto') or the mode `precision` names; the model's mode is restored. A numpy array
    is taken as well. `progress` names a bar over the photos (`heritagelens.progress`). Batches of `batch_size`
    (default: 32 on a CPU, where a batch that stays in the caches runs 1.5 to 2 times faster than 256; 256 on a GPU)."""
    images = torch.as_tensor(images)
    if images.dim() != 4:
        shape = tuple(images.shape)
        raise ValueError(f"images of shape {shape}: expected a batch (N, 3, H, W); one image is image[None]")
    out = []
    device, amp = next(model.parameters()).device, for_inference(model, precision)
    batch_size = batch_size or (CPU_BATCH if device.type == "cpu" else 256)
    with evaluating(model), bar(len(images), progress) as shown:
        for s in range(0, len(images), batch_size):
            x = amp.input(images[s : s + batch_size].to(device).float())
            views = tta_views(x) if tta else [x]
            with amp.autocast():
                out.append(torch.stack([model(v).float() for v in views]).mean(0).cpu())
            shown.update(len(x))
    return torch.cat(out) if out else torch.zeros(0)


def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, tta: bool = False, precision: str = "auto"
) -> float:
    if len(images) == 0:
        return float("nan")
    return (predict_logits(model, images, tta, precision=precision).argmax(1) == labels).float().mean().item()


def probabilities(
    model: nn.Module,
    images: torch.Tensor,
    temperature: float | None = None,
    tta: bool = False,
    precision: str = "auto",
) -> torch.Tensor:
    """Class probabilities (N, classes), float64, of uint8 images: the softmax of the logits divided by the
    checkpoint's calibrated `temperature` (`checkpoint.temperature`; None: uncalibrated)."""
    logits = predict_logits(model, images, tta=tta, precision=precision).double()
    return torch.softmax(logits / (temperature or 1.0), 1)
