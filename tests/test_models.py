from __future__ import annotations

import pytest
import torch
from torch import nn

from heritagelens.config import ConfigError, ModelConfig
from heritagelens.model.network import build_model, conv_layer_names, layer_table


def test_layer_names_are_stable_and_complete():
    m = build_model(ModelConfig(widths=(8, 16), depths=(1, 2)), num_classes=10)
    names = [n for n, _ in m.features.named_children()]
    assert names == [
        "conv1_1",
        "bn1_1",
        "relu1_1",
        "pool1",
        "conv2_1",
        "bn2_1",
        "relu2_1",
        "conv2_2",
        "bn2_2",
        "relu2_2",
        "pool2",
    ]
    assert conv_layer_names(m) == ["conv1_1", "conv2_1", "conv2_2"]
    assert all(isinstance(getattr(m.features, n), nn.ReLU) for n in names if n.startswith("relu"))
    assert all(isinstance(getattr(m.features, n), nn.MaxPool2d) for n in names if n.startswith("pool"))


def test_layer_table_shapes_and_parameter_counts():
    m = build_model(ModelConfig(widths=(8, 16), depths=(1, 1), kernel_size=3), num_classes=5)
    rows = {name: (shape, n) for name, _, shape, n in layer_table(m)}
    assert rows["conv1_1"] == ((8, 64, 64), 3 * 8 * 9)
    assert rows["bn1_1"] == ((8, 64, 64), 16)
    assert rows["pool1"] == ((8, 32, 32), 0)
    assert rows["pool2"] == ((16, 16, 16), 0)
    assert rows["head.fc"] == ((5,), 16 * 5 + 5)
    assert sum(n for _, n in rows.values()) == sum(p.numel() for p in m.parameters())


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    m = build_model(ModelConfig(widths=(8, 16, 16), depths=(1, 1, 2), dropout=0.3, head_pool="avg"), 4)
    x = torch.rand(6, 3, 64, 64) * 255
    nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 2, 3, 0, 1])).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "bad",
    [
        dict(widths=(8,), depths=(1, 1)),
        dict(kernel_size=4),
        dict(dropout=1.0),
        dict(head_pool="sum"),
        dict(widths=(), depths=()),
    ],
)
def test_bad_model_configs_are_refused(bad):
    with pytest.raises(ConfigError):
        ModelConfig(**bad)


def test_resnet_judge_architecture_trains_and_is_not_mirrorable():
    from heritagelens.explain.deconvnet import DeconvError, check_mirrorable

    torch.manual_seed(0)
    m = build_model(ModelConfig(arch="resnet", widths=(8, 16), depths=(2, 1)), 4)
    rows = {name: shape for name, _, shape, _ in layer_table(m)}
    assert rows["block1_2"] == (8, 64, 64) and rows["block2_1"] == (16, 32, 32)
    nn.functional.cross_entropy(m(torch.rand(3, 3, 64, 64) * 255), torch.tensor([0, 1, 3])).backward()
    assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(DeconvError, match=r"layer 'block1_1' \(ResidualBlock\) cannot be mirrored"):
        check_mirrorable(m)
