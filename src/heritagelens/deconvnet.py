"""The deconvnet of Zeiler & Fergus (2014, section 2.1): project one activation of a trained CNN back to pixels.

The forward pass records the max-pooling switches. One activation of one channel at one layer is kept and every other
activation is zeroed; the signal then goes back down through the mirrored layers: max-unpooling with the recorded
switches, rectification (a ReLU applied to the reconstruction), and convolution with the transposed trained filters,
batch norm folded in (in eval mode it scales each channel). Biases play no part, as in the paper.

No hooks are used: the forward pass walks the model's `features` layers itself, so the model is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .models import HeritageCNN, conv_layer_names, evaluating

MIRRORED = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d)


class DeconvError(ValueError):
    """A layer, channel or model the deconvnet cannot handle; the message says which and what is valid."""


@dataclass
class Recorded:
    """What the forward pass keeps for the way back: each layer's input size and each pool's switches."""

    layers: list[tuple[str, nn.Module]]
    input_sizes: list[torch.Size]
    switches: dict[int, torch.Tensor]
    feature_map: torch.Tensor
    """(B, C, H, W): the rectified output of the chosen conv layer (after its batch norm and ReLU)."""


def check_mirrorable(model: nn.Module) -> None:
    """Raise `DeconvError` naming the first layer of `model.features` the deconvnet cannot mirror."""
    for name, m in model.features.named_children():
        if not isinstance(m, MIRRORED):
            raise DeconvError(f"layer '{name}' ({type(m).__name__}) cannot be mirrored by the deconvnet")
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise DeconvError(f"layer '{name}' is a grouped conv, which the deconvnet does not mirror")


def layers_up_to(model: HeritageCNN, layer: str) -> list[tuple[str, nn.Module]]:
    """`features` layers from the input to the chosen conv layer's ReLU (its rectified feature map), inclusive."""
    check_mirrorable(model)
    convs = conv_layer_names(model)
    if layer not in convs:
        raise DeconvError(f"unknown layer '{layer}'; conv layers: {', '.join(convs)}")
    layers = list(model.features.named_children())
    start = [n for n, _ in layers].index(layer)
    end = next((i for i in range(start, len(layers)) if isinstance(layers[i][1], nn.ReLU)), None)
    if end is None:
        raise DeconvError(f"layer '{layer}' has no ReLU after it")
    return layers[: end + 1]


def record(model: HeritageCNN, x: torch.Tensor, layer: str) -> Recorded:
    """Forward pass from pixels (B, 3, H, W), 0..255, to `layer`'s feature map, keeping the pooling switches."""
    layers = layers_up_to(model, layer)
    sizes, switches = [], {}
    with evaluating(model):
        h = model.normalize(x.to(model.normalize.std.dtype))
        for i, (_, m) in enumerate(layers):
            sizes.append(h.shape)
            if isinstance(m, nn.MaxPool2d):
                h, switches[i] = F.max_pool2d(
                    h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True
                )
            else:
                h = m(h)
    return Recorded(layers, sizes, switches, h)


def keep_one(feature_map: torch.Tensor, channels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """A copy of `feature_map` (B, C, H, W) with every activation zeroed but channel `channels[b]` at `positions[b]`."""
    out = torch.zeros_like(feature_map)
    b = torch.arange(len(feature_map))
    out[b, channels, positions[:, 0], positions[:, 1]] = feature_map[b, channels, positions[:, 0], positions[:, 1]]
    return out


def strongest_positions(feature_map: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """(B, 2) row and column of the largest activation of `channels[b]` in each image's feature map."""
    B, _, H, W = feature_map.shape
    flat = feature_map[torch.arange(B), channels].reshape(B, H * W)
    idx = flat.argmax(1)
    return torch.stack([idx // W, idx % W], 1)


def project_down(model: HeritageCNN, rec: Recorded, signal: torch.Tensor) -> torch.Tensor:
    """Take `signal` (shaped like `rec.feature_map`) back through the mirrored layers to pixel space (B, 3, H, W)."""
    for i in range(len(rec.layers) - 1, -1, -1):
        _, m = rec.layers[i]
        size = rec.input_sizes[i]
        if isinstance(m, nn.ReLU):
            signal = F.relu(signal)  # rectification of the reconstruction
        elif isinstance(m, nn.MaxPool2d):
            signal = F.max_unpool2d(signal, rec.switches[i], m.kernel_size, m.stride, m.padding, output_size=size[-2:])
        elif isinstance(m, nn.BatchNorm2d):
            signal = signal * bn_scale(m)[None, :, None, None]  # batch norm folded: a per-channel scale in eval
        elif isinstance(m, nn.Conv2d):
            signal = conv_transpose(signal, m, size)
    return signal / model.normalize.std  # the input normalisation is the first layer: mirror it too


def bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """The per-channel factor of an eval-mode batch norm, gamma / sqrt(running variance + eps)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    return scale * bn.weight if bn.affine else scale


def conv_transpose(signal: torch.Tensor, conv: nn.Conv2d, input_size: torch.Size) -> torch.Tensor:
    """Convolve with the transposed filters of `conv` (no bias), giving back a map of the conv's input size."""
    out = F.conv_transpose2d(signal, conv.weight, None, conv.stride, conv.padding, 0, conv.groups, conv.dilation)
    pad_h, pad_w = input_size[-2] - out.shape[-2], input_size[-1] - out.shape[-1]
    if pad_h or pad_w:  # strided convs can lose the last rows; put them back as zeros
        out = F.pad(out, (0, pad_w, 0, pad_h))
    return out


@torch.no_grad()
def project(
    model: HeritageCNN,
    images: torch.Tensor,
    layer: str,
    channels: torch.Tensor | int,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deconvnet projections of one activation per image.

    Args:
        model: a trained model; it is used in eval mode and left in the mode it was in, unchanged.
        images: (B, 3, H, W) pixels 0..255 (any dtype).
        layer: a conv layer name (`heritagelens layers` lists them); its rectified output is projected.
        channels: one channel for all images, or (B,) channels.
        positions: (B, 2) row and column in the feature map; None takes each image's strongest activation.

    Returns:
        (projections (B, 3, H, W) in float32 pixel units, positions (B, 2) used).
    """
    rec = record(model, images, layer)
    C = rec.feature_map.shape[1]
    channels = torch.as_tensor(channels).expand(len(images)).long()
    if len(channels) and (channels.min() < 0 or channels.max() >= C):
        bad = channels[(channels < 0) | (channels >= C)][0].item()
        raise DeconvError(f"channel {bad} out of range: layer '{layer}' has channels 0..{C - 1}")
    if positions is None:
        positions = strongest_positions(rec.feature_map, channels)
    signal = keep_one(rec.feature_map, channels, positions)
    return project_down(model, rec, signal), positions
