"""The deconvnet checked three ways: literal values worked out by hand, an independent gradient computation, and
a model that is left exactly as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from heritagelens.config import ModelConfig
from heritagelens.deconvnet import DeconvError, project, record
from heritagelens.models import build_model, conv_layer_names


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
