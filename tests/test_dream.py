"""Activation maximization: each piece on tiny tensors with exact values, the render loop on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from heritagelens import dream
from heritagelens.config import ConfigError, DreamConfig, ModelConfig
from heritagelens.model.network import build_model

MEAN, STD = torch.tensor([120.0, 110.0, 100.0]), torch.tensor([60.0, 60.0, 60.0])


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(widths=(4, 8), depths=(1, 1)), 3).eval()


# ---------------------------------------------------------------------------------------- parameterizations
def test_spectrum_scale_is_one_over_frequency():
    s = dream.spectrum_scale(4, 4)
    assert s.shape == (4, 3)
    assert s[0, 0] == 1.0 and s[0, 1] == pytest.approx(1.0) and s[0, 2] == pytest.approx(0.5)
    assert s[1, 1] == pytest.approx(1 / math.sqrt(2)) and s[2, 0] == pytest.approx(0.5)


def test_to_pixels_stays_in_the_data_range_and_starts_at_the_mean():
    m, s = MEAN.reshape(1, 3, 1, 1), STD.reshape(1, 3, 1, 1)
    mid = dream.to_pixels(torch.zeros(1, 3, 2, 2), m, s)
    torch.testing.assert_close(mid[0, :, 0, 0], MEAN)
    extreme = dream.to_pixels(torch.tensor([-1e4, 1e4]).reshape(1, 1, 2, 1).expand(1, 3, 2, 1), m, s)
    torch.testing.assert_close(extreme[0, :, 0, 0], (MEAN - 3 * STD).clamp_min(0))
    torch.testing.assert_close(extreme[0, :, 1, 0], (MEAN + 3 * STD).clamp_max(255))


def test_from_pixels_inverts_to_pixels_inside_the_data_range():
    m, s = MEAN.reshape(1, 3, 1, 1), STD.reshape(1, 3, 1, 1)
    images = torch.tensor([10.0, 60.0, 120.0, 250.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    back = dream.to_pixels(dream.from_pixels(images, m, s), m, s)
    low, high = (m - 3 * s).clamp_min(0), (m + 3 * s).clamp_max(255)
    torch.testing.assert_close(back, images.clamp(low + 0.5, high - 0.5), atol=0.4, rtol=0)


def test_pixel_image_starts_from_a_given_image():
    photo = torch.full((2, 3, 8, 8), 100.0)
    p = dream.pixel_image([0, 1], 8, MEAN, STD, sd=0.0, init=photo)
    torch.testing.assert_close(p.image(), photo, atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", ["pixel", "fourier", "phase"])
def test_parameterizations_make_images_in_range_with_gradients(kind):
    if kind == "pixel":
        p = dream.pixel_image([0, 1], 16, MEAN, STD)
    elif kind == "fourier":
        p = dream.fourier_image([0, 1], 16, MEAN, STD, colour=torch.eye(3) * 0.5)
    else:
        p = dream.phase_image([0, 1], torch.rand(3, 16, 9) + 0.1, MEAN, STD)
    x = p.image()
    assert x.shape == (2, 3, 16, 16) and x.min() >= 0 and x.max() <= 255
    x.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in p.params)


def test_phase_image_in_decorrelated_colour_mixes_components_by_the_colour_matrix():
    mag = torch.rand(3, 8, 5) + 0.5
    colour = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.0, -0.2], [0.5, -0.3, 0.1]])
    mag, colour = mag.double(), colour.double()  # double: the sigmoid round trip is then exact to 1e-6
    mean, std = torch.full((3,), 127.5).double(), torch.full((3,), 42.5).double()  # range 0..255, centred
    plain = dream.phase_image([3], mag, mean, std)
    mixed = dream.phase_image([3], mag, mean, std, colour=colour)
    m, s = mean.reshape(1, 3, 1, 1), std.reshape(1, 3, 1, 1)
    a, b = dream.from_pixels(plain.image(), m, s), dream.from_pixels(mixed.image(), m, s)
    expected = torch.einsum("ij,bjhw->bihw", colour, a)
    inside = (a.abs() < 5).all(1, keepdim=True) & (b.abs() < 5)  # from_pixels clips the sigmoid's far tails
    assert inside.float().mean() > 0.9
    torch.testing.assert_close(b[inside], expected[inside], rtol=1e-6, atol=1e-6)


def test_phase_image_keeps_the_magnitude_spectrum():
    mag = torch.rand(3, 8, 5) + 0.5
    p = dream.phase_image([3], mag, MEAN, STD)
    x = torch.fft.irfftn(mag * torch.exp(1j * p.params[0].detach()), s=(8, 8))
    spec = torch.fft.rfftn(x, s=(8, 8)).abs()[0]
    torch.testing.assert_close(spec[..., 1:4], mag[..., 1:4], rtol=1e-4, atol=1e-5)  # inner columns: no symmetry


def test_a_batch_starts_as_its_samples_would_one_at_a_time():
    both = dream.pixel_image([5, 9], 8, MEAN, STD).params[0]
    assert torch.equal(both[1], dream.pixel_image([9], 8, MEAN, STD).params[0][0])


# ------------------------------------------------------------------------------------------------ transforms
def test_jitter_rolls_the_whole_batch_by_one_shift():
    x = torch.arange(2 * 3 * 5 * 5.0).reshape(2, 3, 5, 5)
    out = dream.jitter(2)(x, _g(1))
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=_g(1)))
    assert torch.equal(out, torch.roll(x, (dy, dx), (2, 3)))
    assert torch.equal(dream.jitter(0)(x, _g()), x)


def test_affine_identity_and_quarter_turn():
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(dream.random_affine()(x, _g()), x)
    turned = dream.random_affine(degrees=[90.0])(x, _g())
    assert any(torch.allclose(turned, torch.rot90(x, k, (2, 3)), atol=1e-5) for k in (1, -1))


def test_gaussian_blur_exact_values():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    out = dream.gaussian_blur(x, 1.0)
    k = torch.exp(-(torch.arange(-3, 4.0) ** 2) / 2)
    k = k / k.sum()
    torch.testing.assert_close(out[0, 0, 1:8, 1:8], k[:, None] * k[None, :])
    assert out.sum().item() == pytest.approx(1.0)
    flat = torch.full((1, 3, 6, 6), 7.0)
    torch.testing.assert_close(dream.gaussian_blur(flat, 2.0), flat)
    assert torch.equal(dream.gaussian_blur(x, 0.0), x)


# ------------------------------------------------------------------------------------------------ objectives
def _rec(images=None, logits=None, acts=None):
    return dream.Recording(
        images if images is not None else torch.zeros(2, 3, 4, 4),
        logits if logits is not None else torch.zeros(2, 3),
        acts or {},
    )


def test_objectives_combine():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    obj = dream.class_logit(1) - 0.5 * dream.class_logit(2)
    torch.testing.assert_close(obj(_rec(logits=logits)), torch.tensor([2.0 - 1.5, 5.0 - 3.0]))
    per_image = dream.class_logit(torch.tensor([0, 2]))
    torch.testing.assert_close(per_image(_rec(logits=logits)), torch.tensor([1.0, 6.0]))
    a = torch.arange(2 * 2 * 2 * 2.0).reshape(2, 2, 2, 2)
    torch.testing.assert_close(dream.channel("conv1_1", 1)(_rec(acts={"conv1_1": a})), torch.tensor([5.5, 13.5]))


def test_one_objective_per_image_and_the_centre_unit():
    a = torch.arange(2 * 2 * 3 * 3.0).reshape(2, 2, 3, 3)
    rec = _rec(acts={"conv1_1": a})
    torch.testing.assert_close(dream.unit("conv1_1", 1)(rec), torch.tensor([13.0, 31.0]))
    both = dream.one_each([dream.channel("conv1_1", 0), dream.unit("conv1_1", 1)], torch.tensor([1, 0]))
    torch.testing.assert_close(both(rec), torch.tensor([13.0, 22.0]))  # image 0: unit of channel 1; 1: channel 0
    assert both.layers == frozenset(["conv1_1"])


def test_penalties_exact_values():
    x = torch.zeros(1, 3, 4, 4)
    x[..., 2:] = 255.0  # left half black, right half white: one vertical edge
    tv = dream.total_variation(_rec(images=x))
    assert tv.item() == pytest.approx(1 / 3)  # one of three horizontal neighbour pairs differs by 1; no vertical ones
    assert dream.l2(_rec(images=x)).item() == pytest.approx(0.25)
    assert dream.penalty(dream.l2, "l2")(_rec(images=x)).item() == pytest.approx(-0.25)


def test_diversity_is_minus_one_for_identical_images_and_higher_for_different_ones():
    same = torch.rand(1, 4, 3, 3).expand(3, 4, 3, 3)
    torch.testing.assert_close(dream.diversity("x")(_rec(acts={"x": same})), torch.full((3,), -1.0))
    different = torch.rand(3, 4, 3, 3)
    assert (dream.diversity("x")(_rec(acts={"x": different})) > -1.0).all()


# ---------------------------------------------------------------------------------------------------- render
def test_render_improves_the_objective_and_leaves_the_model_as_it_was():
    model = _model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = dream.class_logit(2) + 0.1 * dream.channel("conv2_1", 3)
    res = dream.render(model, obj, dream.pixel_image([0, 1], 32, MEAN, STD), dream.jitter(2), steps=30, lr=0.1)
    assert res.images.shape == (2, 3, 32, 32) and res.images.dtype == torch.uint8
    assert res.scores[-1] > res.scores[0] + 0.1
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(not m._forward_hooks for m in model.modules())


def test_same_seed_same_images_and_batched_equals_one_at_a_time():
    model = _model(1)

    def run(classes, seeds, seed=0):
        p = dream.fourier_image(seeds, 32, MEAN, STD)
        t = dream.compose([dream.jitter(2), dream.random_affine([0.9, 1.0, 1.1], [-5.0, 0.0, 5.0])])
        return dream.render(model, dream.class_logit(torch.tensor(classes)), p, t, steps=10, seed=seed).images

    both = run([0, 2], [7, 8])
    assert torch.equal(both, run([0, 2], [7, 8]))
    assert torch.equal(both[0], run([0], [7])[0]) and torch.equal(both[1], run([2], [8])[0])
    assert not torch.equal(both, run([0, 2], [7, 8], seed=1))


def test_divergence_stops_with_a_clear_message():
    nan = dream.Objective(lambda r: r.logits[:, 0] * float("nan"), "broken")
    with pytest.raises(dream.DreamError, match="diverged at step 0 .objective broken is NaN"):
        dream.render(_model(), nan, dream.pixel_image([0], 16, MEAN, STD), steps=5)
    with pytest.raises(dream.DreamError, match="steps must be at least 1"):
        dream.render(_model(), dream.class_logit(0), dream.pixel_image([0], 16, MEAN, STD), steps=-3)


def test_recording_releases_hooks_on_error():
    model = _model()
    with pytest.raises(RuntimeError), dream.recording(model, frozenset(["conv1_1"])):
        raise RuntimeError
    assert all(not m._forward_hooks for m in model.modules() if isinstance(m, nn.ReLU))


# ------------------------------------------------------------------------------------------- stats, presets
def test_image_stats():
    torch.manual_seed(0)
    imgs = (torch.rand(20, 3, 8, 8) * 255).to(torch.uint8)
    st = dream.image_stats(imgs, batch=7)
    x = imgs.float()
    torch.testing.assert_close(st.mean, x.mean((0, 2, 3)))
    z = (x - st.mean[None, :, None, None]) / st.std[None, :, None, None]
    cov = torch.cov(z.permute(1, 0, 2, 3).reshape(3, -1))
    k = (st.colour @ st.colour.T)[0, 0] / cov[0, 0]
    torch.testing.assert_close(st.colour @ st.colour.T, cov * k, rtol=1e-4, atol=1e-5)
    assert st.colour.norm(dim=0).max() == pytest.approx(1.0)
    torch.testing.assert_close(st.magnitude, torch.fft.rfftn(z, dim=(2, 3)).abs().mean(0), rtol=1e-4, atol=1e-4)
    w = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(st.colour), z)  # decorrelated components: uncorrelated
    wcov = torch.cov(w.permute(1, 0, 2, 3).reshape(3, -1))
    torch.testing.assert_close(wcov, torch.diag(wcov.diagonal()), atol=1e-4, rtol=0)
    torch.testing.assert_close(st.colour_magnitude, torch.fft.rfftn(w, dim=(2, 3)).abs().mean(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "bad", [dict(steps=-3), dict(tv=float("nan")), dict(param="wavelet"), dict(lr=0.0), dict(diversity=-1.0)]
)
def test_nonsensical_dream_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        DreamConfig(**bad)
    with pytest.raises(dream.DreamError, match="unknown dream preset 'pretty'; known: default, naive, fourier, maco"):
        dream.dream_preset("pretty")


@pytest.mark.parametrize("preset", list(dream.DREAM_PRESETS))
def test_every_preset_raises_the_class_scores(preset):
    model = _model(2)
    stats = dream.image_stats((torch.rand(10, 3, 32, 32) * 255).to(torch.uint8))
    cfg = dream.dream_preset(preset, steps=25, diversity=0.1)
    res = dream.class_images(model, [0, 2], 2, cfg, stats)
    assert res.images.shape == (4, 3, 32, 32) and res.scores[-1] > res.scores[0]
