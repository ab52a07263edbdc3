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

from ..errors import HeritageLensError
from ..model.network import HeritageCNN, conv_layer_names, evaluating, rectified_name
from ..model.precision import for_model
from ..progress import bar

MIRRORED = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d)


class DeconvError(HeritageLensError, ValueError):
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


def check_channels(channels: list[int], n_channels: int, layer: str) -> None:
    """Raise `DeconvError` naming the first of `channels` that `layer` (with `n_channels` channels) does not have."""
    for c in channels:
        if not 0 <= c < n_channels:
            raise DeconvError(f"channel {c} out of range: layer '{layer}' has channels 0..{n_channels - 1}")


def layers_up_to(model: HeritageCNN, layer: str) -> list[tuple[str, nn.Module]]:
    """`features` layers from the input to the chosen conv layer's ReLU (its rectified feature map), inclusive."""
    check_mirrorable(model)
    convs = conv_layer_names(model)
    if layer not in convs:
        raise DeconvError(f"unknown layer '{layer}'; conv layers: {', '.join(convs)}")
    relu = rectified_name(model, layer)
    if relu is None:
        raise DeconvError(f"layer '{layer}' has no ReLU after it")
    layers = list(model.features.named_children())
    return layers[: [n for n, _ in layers].index(relu) + 1]


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
    check_channels(channels.tolist(), C, layer)
    if positions is None:
        positions = strongest_positions(rec.feature_map, channels)
    signal = keep_one(rec.feature_map, channels, positions)
    return project_down(model, rec, signal), positions


# ------------------------------------------------------------------------------------------- receptive fields


def receptive_box(model: HeritageCNN, layer: str, position: tuple[int, int], image_size: int) -> tuple[int, ...]:
    """(top, left, bottom, right) in input pixels of the receptive field of `position` in `layer`'s feature map,
    not clipped to the image (so crops keep one size per layer)."""
    size, jump, start = 1.0, 1.0, 0.5  # field size, distance between neighbours, centre of unit 0 (input pixels)
    for _, m in layers_up_to(model, layer):
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p = (_pair(getattr(m, a))[0] for a in ("kernel_size", "stride", "padding"))
            d = _pair(m.dilation)[0]
            size += (d * (k - 1)) * jump
            start += ((d * (k - 1)) / 2 - p) * jump
            jump *= s
    half = size / 2
    cy, cx = start + position[0] * jump, start + position[1] * jump
    return (round(cy - half), round(cx - half), round(cy + half), round(cx + half))


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, tuple) else (v, v)


# ------------------------------------------------------------------------------------------------- top images


@dataclass
class TopK:
    """The images that excite each channel of a layer most: all (C, k), best first."""

    layer: str
    values: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    """(C, k, 2) row and column of the maximum in the feature map."""


@torch.no_grad()
def top_activations(
    model: HeritageCNN, images: torch.Tensor, layer: str, k: int = 9, batch_size: int = 512, precision: str = "auto"
) -> TopK:
    """For every channel of `layer`, the `k` images (rows of `images`) with the largest activation anywhere, found in
    one pass over `images` (N, 3, H, W) uint8, ranked in the mode `precision` resolves to
    (`heritagelens.model.precision`; the projections themselves are always computed in float32)."""
    return top_activations_of(model, images, [layer], k, batch_size, precision)[layer]


@torch.no_grad()
def top_activations_of(
    model: HeritageCNN,
    images: torch.Tensor,
    layers: list[str],
    k: int = 9,
    batch_size: int = 512,
    precision: str = "auto",
    progress: str | None = None,
) -> dict[str, TopK]:
    """`top_activations` of several layers, all from one forward pass over `images` (the deepest layer's);
    `progress` names a bar over the images (`heritagelens.progress`)."""
    ends = {layer: len(layers_up_to(model, layer)) - 1 for layer in layers}  # validates names before the long pass
    modules = [m for _, m in layers_up_to(model, max(ends, key=ends.get))]
    best: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    amp = for_model(model, precision)
    with evaluating(model), bar(len(images), progress) as shown:
        for s in range(0, len(images), batch_size):
            x = amp.input(images[s : s + batch_size].float())
            shown.update(len(x))
            with amp.autocast():
                h, maps = model.normalize(x.to(model.normalize.std.dtype)), {}
                for i, m in enumerate(modules):  # no pooling switches: only the ranking is needed here
                    h = m(h)
                    maps.update({layer: h.float() for layer, end in ends.items() if end == i})
            for layer, fmap in maps.items():  # (B, C, H, W)
                B, C, H, W = fmap.shape
                v, flat = fmap.reshape(B, C, H * W).max(2)  # (B, C)
                pos = torch.stack([flat // W, flat % W], 2)  # (B, C, 2)
                idx = torch.arange(s, s + B)[:, None].expand(B, C)
                if layer in best:
                    bv, bi, bp = best[layer]
                    v, idx, pos = torch.cat([bv, v]), torch.cat([bi, idx]), torch.cat([bp, pos])
                top = v.topk(min(k, len(v)), dim=0)  # (k, C)
                at = top.indices
                best[layer] = top.values, idx.gather(0, at), pos.gather(0, at[..., None].expand(-1, -1, 2))
    out = {}
    for layer in layers:  # in the order asked for
        v, i, p = best[layer]
        out[layer] = TopK(layer, v.T.contiguous(), i.T.contiguous(), p.permute(1, 0, 2).contiguous())
    return out


@torch.no_grad()
def project_top(model: HeritageCNN, images: torch.Tensor, top: TopK, channels: list[int], batch_size: int = 256):
    """Deconvnet projections (len(channels), k, 3, H, W) of each chosen channel's top images, at their maxima."""
    idx = top.indices[channels]  # (n, k)
    n, k = idx.shape
    ch = torch.tensor(channels).repeat_interleave(k)
    pos = top.positions[channels].reshape(n * k, 2)
    flat_idx = idx.reshape(-1)
    out = []
    for s in range(0, n * k, batch_size):
        proj, _ = project(
            model, images[flat_idx[s : s + batch_size]], top.layer, ch[s : s + batch_size], pos[s : s + batch_size]
        )
        out.append(proj)
    return torch.cat(out).reshape(n, k, *images.shape[1:])


@torch.no_grad()
def strongest_channels(
    model: HeritageCNN, image: torch.Tensor, layer: str, n: int = 9, channels: list[int] | None = None
) -> tuple[torch.Tensor, ...]:
    """For one image (3, H, W): the `n` channels of `layer` with the largest activation (or the given `channels`),
    their peak activations, their projections (n, 3, H, W) and the peaks' positions."""
    fmap = record(model, image[None].float(), layer).feature_map[0]  # (C, H, W)
    peaks = fmap.flatten(1).max(1).values
    if channels:
        check_channels(channels, len(fmap), layer)
        chosen = torch.tensor(channels)
    else:
        chosen = peaks.topk(min(n, len(fmap))).indices
    proj, pos = project(model, image[None].expand(len(chosen), -1, -1, -1), layer, chosen)
    return chosen, peaks[chosen], proj, pos
