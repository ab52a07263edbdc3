from __future__ import annotations

import numpy as np
import pytest
import torch

from heritagelens.judging import quality


def _fd_by_eigenvalues(a, b):
    """Independent computation: Tr((S_a S_b)^(1/2)) = sum of sqrt of the eigenvalues of S_a^(1/2) S_b S_a^(1/2)."""
    mu = a.mean(0) - b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    return mu @ mu + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()


def test_frechet_distance_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (400, 5))
    b = rng.normal(0.5, 2, (300, 5)) @ rng.normal(size=(5, 5))
    assert quality.frechet_distance(a, b) == pytest.approx(_fd_by_eigenvalues(a, b), rel=1e-6)


def test_frechet_distance_of_identical_sets_is_zero_and_of_shifted_means_is_the_squared_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 4))
    assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert quality.frechet_distance(a, a + np.array([3.0, 0, 0, 4.0])) == pytest.approx(25.0, rel=1e-6)


def test_frechet_distance_from_a_single_image_is_its_distance_to_the_mean_plus_the_spread():
    rng = np.random.default_rng(2)
    b = rng.normal(size=(50, 3))
    one = np.array([[1.0, -2.0, 0.5]])  # one sample: a Gaussian with no spread (numpy's covariance would be NaN)
    expected = ((one[0] - b.mean(0)) ** 2).sum() + np.trace(np.cov(b, rowvar=False))
    assert quality.frechet_distance(one, b) == pytest.approx(expected, rel=1e-6)


def test_radial_power_spectrum_of_a_pure_frequency():
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    wave = torch.cos(2 * torch.pi * 4 * xx / 16)  # 4 cycles across: all power at radius 4
    spec = quality.radial_power_spectrum(wave.expand(2, 3, 16, 16))
    assert spec.shape == (8,) and int(spec.argmax()) == 4
    assert spec[torch.arange(8) != 4].abs().max() < 1e-6 * spec[4]


def test_spectrum_distance_is_zero_for_the_same_images_and_grows_with_noise():
    real = torch.rand(8, 3, 32, 32) * 255
    assert quality.spectrum_distance(real, real) == 0.0
    smooth = torch.nn.functional.avg_pool2d(real, 5, 1, 2)
    assert quality.spectrum_distance(smooth, real) > 0.2


def test_diversity_exact_values():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert quality.mean_pairwise_distance(f) == 5.0
    assert quality.mean_pairwise_distance(f[:1]) == 0.0
    assert quality.relative_diversity(f / 5, f) == pytest.approx(0.2)
