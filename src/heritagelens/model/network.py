"""The CNN family: plain stages of conv, batch norm, ReLU and max-pooling, with stable, printable layer names.

Built only from `nn.Conv2d`, `nn.BatchNorm2d`, `nn.ReLU` and `nn.MaxPool2d` modules so that every layer can be
named, hooked and mirrored by the deconvnet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..config import IMAGE_SIZE, ModelConfig


class Normalize(nn.Module):
    """Maps uint8-range pixels (0..255, any float dtype) to roughly zero mean and unit variance per channel."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, 3, 1, 1).float())
        self.register_buffer("std", std.reshape(1, 3, 1, 1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class HeritageCNN(nn.Module):
    """`features` (stages of conv-bn-relu, each ending in max-pooling) then `head` (global pool, dropout, linear).

    Input: images with pixel values 0..255, shape (B, 3, 64, 64). Output: logits (B, num_classes).
    """

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        # Dataset statistics are filled in by training; these placeholders are mid-grey with a wide spread.
        self.normalize = Normalize(torch.full((3,), 127.5), torch.full((3,), 64.0))
        layers = _feature_layers(cfg) if cfg.arch == "plain" else _residual_layers(cfg)
        self.features = nn.Sequential(layers)
        self.head = nn.Sequential(
            OrderedDict(
                pool=nn.AdaptiveMaxPool2d(1) if cfg.head_pool == "max" else nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                dropout=nn.Dropout(cfg.dropout),
                fc=nn.Linear(cfg.widths[-1], num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """What the linear head sees of images `x` (B, widths[-1]): the pooled last feature map, before dropout."""
        return self.head.flatten(self.head.pool(self.features(self.normalize(x))))


def _feature_layers(cfg: ModelConfig) -> OrderedDict[str, nn.Module]:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c_in = 3
    for s, (width, depth) in enumerate(zip(cfg.widths, cfg.depths), start=1):
        for i in range(1, depth + 1):
            layers[f"conv{s}_{i}"] = nn.Conv2d(c_in, width, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False)
            layers[f"bn{s}_{i}"] = nn.BatchNorm2d(width)
            layers[f"relu{s}_{i}"] = nn.ReLU()
            c_in = width
        layers[f"pool{s}"] = nn.MaxPool2d(2)
    return layers


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (batch norm uses its running statistics, dropout is off) for the block; the old mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class ResidualBlock(nn.Module):
    """Two 3x3 conv-bn layers with an identity (or 1x1 conv) shortcut, then ReLU (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, k: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, k, padding=k // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.shortcut(x))


def _residual_layers(cfg: ModelConfig) -> OrderedDict[str, nn.Module]:
    """A small ResNet: a conv stem, then per stage `depth` residual blocks and 2x2 max-pooling."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["stem"] = nn.Conv2d(3, cfg.widths[0], cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False)
    layers["stem_bn"] = nn.BatchNorm2d(cfg.widths[0])
    layers["stem_relu"] = nn.ReLU()
    c_in = cfg.widths[0]
    for s, (width, depth) in enumerate(zip(cfg.widths, cfg.depths), start=1):
        for i in range(1, depth + 1):
            layers[f"block{s}_{i}"] = ResidualBlock(c_in, width, cfg.kernel_size)
            c_in = width
        layers[f"pool{s}"] = nn.MaxPool2d(2)
    return layers


def build_model(cfg: ModelConfig, num_classes: int) -> HeritageCNN:
    return HeritageCNN(cfg, num_classes)


def with_classes(model: HeritageCNN, old: list[str], new: list[str]) -> tuple[HeritageCNN, list[str]]:
    """`model` (which tells `old` apart) made to tell `new` apart: every feature layer and the input normalization
    kept, a class of `new` that `old` names keeps its row of the linear head, the others get freshly initialized
    rows (from torch's current seed). Returns the new model and the classes that kept their rows."""
    adapted = build_model(model.cfg, len(new)).to(next(model.parameters()).device)
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("head.fc.")}
    adapted.load_state_dict(weights, strict=False)
    kept = [c for c in new if c in old]
    with torch.no_grad():
        for c in kept:
            adapted.head.fc.weight[new.index(c)] = model.head.fc.weight[old.index(c)]
            adapted.head.fc.bias[new.index(c)] = model.head.fc.bias[old.index(c)]
    return adapted, kept


@torch.no_grad()
def pooled_features(model: HeritageCNN, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """What the linear head sees of uint8 images (N, 3, 64, 64): the pooled last feature map (N, widths[-1]), in
    float32 on the CPU, the model in eval mode."""
    device = next(model.parameters()).device
    with evaluating(model):
        batches = (images[i : i + batch_size].to(device).float() for i in range(0, len(images), batch_size))
        parts = [model.pooled(x) for x in batches]
    return torch.cat(parts).float().cpu()


def conv_layer_names(model: HeritageCNN) -> list[str]:
    return [name for name, m in model.features.named_children() if isinstance(m, nn.Conv2d)]


def rectified_name(model: HeritageCNN, layer: str) -> str | None:
    """The name of the ReLU that rectifies conv `layer`'s output in `model.features` (the feature map the deconvnet
    projects, class images record and Grad-CAM weighs), or None when `layer` is no conv layer or has no ReLU after it.
    """
    names = [n for n, _ in model.features.named_children()]
    if layer not in conv_layer_names(model):
        return None
    after = names[names.index(layer) :]
    return next((n for n in after if isinstance(getattr(model.features, n), nn.ReLU)), None)


def layer_table(model: HeritageCNN, image_size: int = IMAGE_SIZE) -> list[tuple[str, str, tuple[int, ...], int]]:
    """(name, type, output shape without batch, parameter count) for every layer, in forward order. A feature layer
    is named as `--layer` and `conv_layer_names` name it (`conv3_2`), a head layer as `head.<name>`."""
    rows = []
    x = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad(), evaluating(model):
        x = model.normalize(x)
        for part in ("features", "head"):
            for name, m in getattr(model, part).named_children():
                x = m(x)
                n_params = sum(p.numel() for p in m.parameters())
                shown = name if part == "features" else f"{part}.{name}"
                rows.append((shown, type(m).__name__, tuple(x.shape[1:]), n_params))
    return rows
