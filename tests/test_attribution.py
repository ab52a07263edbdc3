"""Occlusion checked against direct forward passes; the gradient methods against autograd and Captum's own
deconvolution against ours."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from heritagelens.config import ModelConfig
from heritagelens.explain.attribution import gradient_maps, occlusion
from heritagelens.explain.deconvnet import project, record
from heritagelens.model.network import build_model


def _model(seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(widths=(4, 8, 8), depths=(1, 1, 1)), 3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
    return model.eval()


def test_occlusion_maps_match_forward_passes_with_the_square_in_place():
    model, image = _model(), torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    occ = occlusion(model, image, target=2, layer="conv3_1", size=16, stride=8)
    assert occ.probability.shape == (7, 7) and occ.feature.shape == (7, 7)
    x = image.float().clone()
    x[:, 8:24, 40:56] = image.float().mean((1, 2), keepdim=True)  # the square at row 1, column 5
    with torch.no_grad():
        p = F.softmax(model(x[None]), 1)[0, 2]
        f = record(model, x[None], "conv3_1").feature_map[0, occ.channel].sum()
    torch.testing.assert_close(occ.probability[1, 5], p)
    torch.testing.assert_close(occ.feature[1, 5], f)
    fmap = record(model, image[None].float(), "conv3_1").feature_map[0]
    assert occ.channel == int(fmap.flatten(1).max(1).values.argmax())


def test_saliency_and_guided_backprop_match_autograd():
    model, images = _model(1), torch.rand(2, 3, 32, 32) * 255
    targets = torch.tensor([0, 2])
    maps = gradient_maps(model, images, targets, "conv3_1")
    x = images.clone().requires_grad_(True)
    model(x)[torch.arange(2), targets].sum().backward()
    torch.testing.assert_close(maps["saliency"], x.grad.abs().amax(1))
    assert maps["guided_backprop"].shape == (2, 3, 32, 32) and maps["grad_cam"].shape == (2, 32, 32)
    assert maps["grad_cam"].min() >= 0
    assert all(not m._backward_hooks and not m._forward_hooks for m in model.modules())  # Captum cleaned up


def test_captum_neuron_deconvolution_agrees_with_our_deconvnet():
    from captum.attr import NeuronDeconvolution

    model, images = _model(2).double(), torch.rand(3, 3, 32, 32, dtype=torch.float64) * 255
    for layer, relu in (("conv2_1", model.features.relu2_1), ("conv3_1", model.features.relu3_1)):
        proj, pos = project(model, images, layer, 1)
        act = record(model, images, layer).feature_map
        for b in range(3):
            r, q = pos[b].tolist()
            theirs = NeuronDeconvolution(model, relu).attribute(images[b : b + 1], neuron_selector=(1, r, q))
            torch.testing.assert_close(proj[b], theirs[0] * act[b, 1, r, q], rtol=1e-6, atol=1e-9)


def test_the_comparison_draws_each_map_with_its_colour_bar_and_the_heat_maps_over_the_photo(monkeypatch):
    """Four maps (saliency, Grad-CAM, both occlusions), four colour bars; given the photo at its own shape (a red
    300 x 100 frame), the input panel and the Grad-CAM overlay show it, not the grey 64 px input."""
    import numpy as np

    from heritagelens import figures
    from heritagelens.explain.views import comparison

    torch.manual_seed(0)
    model = build_model(ModelConfig(widths=(8, 16, 16, 16), depths=(1, 1, 1, 1)), 3).eval()
    image = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    drawn, real = [], figures.figure_image
    monkeypatch.setattr(figures, "figure_image", lambda fig: drawn.append(fig) or real(fig))
    photo = np.zeros((100, 300, 3), np.uint8)
    photo[..., 0] = 255
    plain, _ = comparison(model, image, ["a", "b", "c"], "conv4_1", temperature=None)
    over, _ = comparison(model, image, ["a", "b", "c"], "conv4_1", temperature=None, photo=photo)
    for fig in drawn:
        bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert len(fig.axes) == 7 + 4 and len(bars) == 4
    titles = [ax.get_title() for ax in drawn[1].axes]
    assert "input (300 x 100 px)" in titles
    red = lambda im: int(((np.asarray(im)[..., 0] > 200) & (np.asarray(im)[..., 1] < 80)).sum())  # noqa: E731
    assert red(plain) < 50 < 2000 < red(over)
    gradcam = drawn[1].axes[titles.index("Grad-CAM")]
    assert gradcam.images[0].get_array().shape[:2] == (100, 300)  # the photo under the map, at its resolution
