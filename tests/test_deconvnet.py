"""The deconvnet checked three ways: literal values worked out by hand, an independent gradient computation, and
a model that is left exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from heritagelens.config import ModelConfig
from heritagelens.explain.deconvnet import (
    DeconvError,
    project,
    project_top,
    receptive_box,
    record,
    strongest_channels,
    top_activations,
    top_activations_of,
)
from heritagelens.figures import figure2
from heritagelens.model.network import build_model, conv_layer_names


def _identity_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
            m.weight.data.fill_(1.0)
            m.bias.data.zero_()
    model.normalize.mean.zero_()
    model.normalize.std.fill_(1.0)
    return model.eval()


def _image_4x4():
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0] = torch.arange(16.0).reshape(4, 4)
    return x


def test_one_conv_by_hand():
    # y[i, j] = x[i, j] + 2 x[i+1, j+1] on channel 0; its largest value is 10 + 2 * 15 = 40 at (2, 2).
    model = _identity_bn(build_model(ModelConfig(widths=(1,), depths=(1,)), num_classes=2))
    w = torch.zeros(1, 3, 3, 3)
    w[0, 0, 1, 1], w[0, 0, 2, 2] = 1.0, 2.0
    model.features.conv1_1.weight.data = w
    proj, pos = project(model, _image_4x4(), "conv1_1", 0)
    assert pos.tolist() == [[2, 2]]
    expected = torch.zeros(1, 3, 4, 4)
    expected[0, 0, 2, 2], expected[0, 0, 3, 3] = 40.0, 80.0  # transposed filter spreads 40 back: 40 x 1, 40 x 2
    assert torch.equal(proj, expected)


def _two_conv_model():
    """conv1 copies channel 0, pool1 keeps quadrant maxima [[5, 7], [13, 15]] at (1,1) (1,3) (3,1) (3,3);
    conv2 computes p[i, j] - p[i, j-1], giving [[5, 2], [13, 2]]."""
    model = _identity_bn(build_model(ModelConfig(widths=(1, 1), depths=(1, 1)), num_classes=2))
    w1 = torch.zeros(1, 3, 3, 3)
    w1[0, 0, 1, 1] = 1.0
    w2 = torch.zeros(1, 1, 3, 3)
    w2[0, 0, 1, 1], w2[0, 0, 1, 0] = 1.0, -1.0
    model.features.conv1_1.weight.data, model.features.conv2_1.weight.data = w1, w2
    return model


def test_switches_route_the_signal_to_where_the_maximum_was():
    proj, pos = project(_two_conv_model(), _image_4x4(), "conv2_1", 0)
    assert pos.tolist() == [[1, 0]]  # the strongest activation, 13
    expected = torch.zeros(1, 3, 4, 4)
    expected[0, 0, 3, 1] = 13.0  # the pool cell (1, 0) took its maximum from pixel (3, 1)
    assert torch.equal(proj, expected)


def test_rectification_removes_negative_reconstructions():
    # keep the 2 at (0, 1): conv2 transposed gives [[-2, 2], [0, 0]]; unpooling sends -2 to pixel (1, 1) and 2 to
    # (1, 3); the rectification at relu1 then zeroes the -2, where plain backprop would have passed it on.
    proj, _ = project(_two_conv_model(), _image_4x4(), "conv2_1", 0, positions=torch.tensor([[0, 1]]))
    expected = torch.zeros(1, 3, 4, 4)
    expected[0, 0, 1, 3] = 2.0
    assert torch.equal(proj, expected)


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward rectifies the incoming gradient (the deconvnet rule) instead of masking it."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp_min(0)


def _gradient_projection(model, x, layer, channels):
    """Input gradient of each image's strongest chosen activation, ReLU backward replaced by the deconvnet rule,
    scaled by the activation (the deconvnet starts from the activation's value, autograd from 1)."""
    x = x.clone().requires_grad_(True)
    h = model.normalize(x)
    names = [n for n, _ in model.features.named_children()]
    stop = names.index(layer.replace("conv", "relu"))
    for _, m in list(model.features.named_children())[: stop + 1]:
        h = _DeconvReLU.apply(h) if isinstance(m, nn.ReLU) else m(h)
    B, _, H, W = h.shape
    chosen = h[torch.arange(B), channels].reshape(B, -1)
    value, idx = chosen.max(1)
    value.sum().backward()
    return x.grad * value.detach()[:, None, None, None], torch.stack([idx // W, idx % W], 1)


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(widths=(8, 16, 16), depths=(1, 2, 1)),
        ModelConfig(widths=(6, 12), depths=(2, 2), kernel_size=5),
        ModelConfig(widths=(4, 8, 8, 16), depths=(1, 1, 2, 2)),
    ],
)
def test_deconvnet_equals_the_gradient_with_the_deconvnet_relu_rule(cfg):
    torch.manual_seed(0)
    model = build_model(cfg, 10).double()
    for m in model.modules():  # non-trivial batch-norm statistics, so the folding is really tested
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.normalize.mean.fill_(120.0)
    model.normalize.std.fill_(60.0)
    model.eval()
    x = torch.rand(5, 3, 32, 32, dtype=torch.float64) * 255
    for layer in conv_layer_names(model):
        C = getattr(model.features, layer).out_channels
        channels = torch.randint(0, C, (5,))
        proj, pos = project(model, x, layer, channels)
        ref, ref_pos = _gradient_projection(model, x, layer, channels)
        assert torch.equal(pos, ref_pos)
        assert proj.abs().max() > 0
        torch.testing.assert_close(proj, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_visualising_leaves_the_model_exactly_as_it_was():
    torch.manual_seed(1)
    model = build_model(ModelConfig(widths=(8, 16), depths=(1, 1)), 3)
    model.train()
    x = torch.rand(4, 3, 64, 64) * 255
    model.eval()
    before = model(x)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    project(model, x, "conv2_1", 3)
    record(model, x, "conv1_1")
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    model.eval()
    assert torch.equal(model(x), before)


def test_unknown_layer_lists_the_valid_ones():
    model = build_model(ModelConfig(widths=(4, 8), depths=(1, 1)), 3)
    with pytest.raises(DeconvError, match=r"unknown layer 'conv9_1'; conv layers: conv1_1, conv2_1"):
        project(model, torch.zeros(1, 3, 16, 16), "conv9_1", 0)


def test_channel_out_of_range():
    model = build_model(ModelConfig(widths=(4, 8), depths=(1, 1)), 3)
    with pytest.raises(DeconvError, match=r"channel 8 out of range: layer 'conv2_1' has channels 0..7"):
        project(model, torch.zeros(1, 3, 16, 16), "conv2_1", 8)


def test_a_layer_it_cannot_mirror_is_named():
    model = build_model(ModelConfig(widths=(4, 8), depths=(1, 1)), 3)
    model.features.relu1_1 = nn.GELU()
    with pytest.raises(DeconvError, match=r"layer 'relu1_1' \(GELU\) cannot be mirrored"):
        project(model, torch.zeros(1, 3, 16, 16), "conv2_1", 0)


# ------------------------------------------------------------------------------------------- top images, fields
def _random_model(seed=0, cfg=None):
    torch.manual_seed(seed)
    model = build_model(cfg or ModelConfig(widths=(4, 8, 8), depths=(1, 1, 1)), 3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
    return model.eval()


def test_top_activations_match_a_brute_force_ranking():
    model = _random_model()
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    top = top_activations(model, images, "conv2_1", k=9, batch_size=16, precision="fp32")
    fmap = record(model, images.float(), "conv2_1").feature_map  # (N, C, H, W)
    peak = fmap.flatten(2).max(2).values  # (N, C)
    for c in range(fmap.shape[1]):
        expected = peak[:, c].argsort(descending=True)[:9]
        assert top.indices[c].tolist() == expected.tolist()
        torch.testing.assert_close(top.values[c], peak[expected, c])
        r, q = top.positions[c, 0].tolist()
        assert fmap[top.indices[c, 0], c, r, q] == peak[top.indices[c, 0], c]


def test_one_pass_over_several_layers_ranks_as_one_pass_each():
    model = _random_model()
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    tops = top_activations_of(model, images, ["conv3_1", "conv1_1"], k=5, batch_size=16, precision="fp32")
    assert list(tops) == ["conv3_1", "conv1_1"]
    for layer, top in tops.items():
        alone = top_activations(model, images, layer, k=5, batch_size=16, precision="fp32")
        assert top.layer == layer and torch.equal(top.indices, alone.indices)
        assert torch.equal(top.positions, alone.positions) and torch.equal(top.values, alone.values)
    with pytest.raises(DeconvError, match="unknown layer 'conv9_1'"):
        top_activations_of(model, images, ["conv1_1", "conv9_1"])


def test_receptive_field_sizes_follow_the_architecture():
    model = build_model(ModelConfig(), 10)  # 3x3 convs; stages of 1, 2, 2, 2 convs, each closed by 2x2 pooling
    sizes = {
        layer: (lambda b: b[2] - b[0])(receptive_box(model, layer, (0, 0), 64)) for layer in conv_layer_names(model)
    }
    assert sizes == {
        "conv1_1": 3,
        "conv2_1": 8,
        "conv2_2": 12,
        "conv3_1": 22,
        "conv3_2": 30,
        "conv4_1": 50,
        "conv4_2": 66,
    }
    assert receptive_box(model, "conv1_1", (0, 0), 64) == (-1, -1, 2, 2)
    assert receptive_box(model, "conv2_1", (3, 5), 64) == (3, 7, 11, 15)  # centre at pool stride 2: 7.5, 11.5


def test_projection_stays_inside_the_receptive_field():
    model = _random_model(3, ModelConfig(widths=(4, 8, 8), depths=(1, 2, 1)))
    images = torch.rand(6, 3, 64, 64) * 255
    seen_signal = 0
    for layer in conv_layer_names(model):
        proj, pos = project(model, images, layer, torch.arange(6) % 4)
        for b in range(6):
            top, left, bottom, right = receptive_box(model, layer, tuple(pos[b].tolist()), 64)
            outside = proj[b].abs().sum(0).clone()
            outside[max(top, 0) : bottom, max(left, 0) : right] = 0
            assert outside.max() == 0, layer
            seen_signal += int(proj[b].abs().max() > 0)  # a dead channel projects to zero, which is fine
    assert seen_signal >= 12


def test_project_top_and_the_figure():
    model = _random_model()
    images = torch.randint(0, 256, (30, 3, 64, 64), dtype=torch.uint8)
    top = top_activations(model, images, "conv3_1", k=4)
    proj = project_top(model, images, top, [0, 5])
    assert proj.shape == (2, 4, 3, 64, 64)
    single, _ = project(model, images[top.indices[5, 2]][None], "conv3_1", 5, top.positions[5, 2][None])
    torch.testing.assert_close(proj[1, 2], single[0])
    boxes = [[receptive_box(model, "conv3_1", tuple(p), 64) for p in top.positions[c].tolist()] for c in (0, 5)]
    fig = figure2(proj, images[top.indices[[0, 5]]], boxes, [0, 5], "conv3_1", tile_px=20)
    assert fig.mode == "RGB" and fig.width > 4 * 20 and fig.height > 2 * 20
    px = np.asarray(fig)
    assert px.std() > 10  # not a blank canvas


def test_strongest_channels_of_one_image():
    model = _random_model()
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    channels, values, proj, _ = strongest_channels(model, image, "conv2_1", n=3)
    peak = record(model, image[None].float(), "conv2_1").feature_map[0].flatten(1).max(1).values
    assert channels.tolist() == peak.argsort(descending=True)[:3].tolist()
    assert proj.shape == (3, 3, 64, 64)


def test_default_channels_cover_the_classes():
    from heritagelens.explain.deconvnet import TopK
    from heritagelens.explain.views import default_channels

    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    indices = torch.stack([torch.arange(0, 9), torch.arange(10, 19), torch.arange(20, 29), torch.arange(0, 9)])
    top = TopK("x", torch.tensor([[1.0] * 9, [2.0] * 9, [3.0] * 9, [4.0] * 9]), indices, torch.zeros(4, 9, 2))
    assert default_channels(top, labels, 3) == [1, 2, 3]  # class 0: channel 3 beats 0 on strength
    assert default_channels(top, labels, 4) == [0, 1, 2, 3]
