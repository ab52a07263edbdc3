"""How good generated class images are: naturalness and diversity measured against real images.

Pure functions on feature matrices and images; which features (a judge's penultimate layer) is the caller's choice.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows `a` (n, d) and `b` (m, d):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    from scipy.linalg import sqrtm

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = _covariance(a), _covariance(b)
    with warnings.catch_warnings():  # few samples give singular covariances: expected, and handled below
        warnings.simplefilter("ignore")
        covmean = sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():  # near-singular covariances: regularize slightly, as is customary
        eye = np.eye(len(s_a)) * 1e-6
        covmean = sqrtm((s_a + eye) @ (s_b + eye))
    covmean = np.real(covmean)
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))
    return max(d, 0.0)


def _covariance(x: np.ndarray) -> np.ndarray:
    """Sample covariance of rows `x` (n, d); a single row spreads nowhere: zeros (numpy would give NaN)."""
    return np.atleast_2d(np.cov(x, rowvar=False)) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))


def radial_power_spectrum(images: torch.Tensor, bins: int | None = None) -> torch.Tensor:
    """Mean power at each spatial frequency radius (bins,), of grey images made from (N, 3, H, W) pixels."""
    x = images.float().mean(1)
    x = x - x.mean((1, 2), keepdim=True)
    power = torch.fft.fftshift(torch.fft.fft2(x).abs() ** 2, dim=(1, 2)).mean(0)  # (H, W)
    H, W = power.shape
    yy, xx = torch.meshgrid(torch.arange(H) - H // 2, torch.arange(W) - W // 2, indexing="ij")
    r = torch.sqrt(yy.float() ** 2 + xx.float() ** 2).round().long()
    bins = bins or min(H, W) // 2
    keep = r < bins
    total = torch.zeros(bins).index_add_(0, r[keep], power[keep])
    count = torch.zeros(bins).index_add_(0, r[keep], torch.ones_like(power[keep]))
    return total / count.clamp_min(1)


def spectrum_distance(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Mean absolute difference of the log10 radial power spectra (0 when the spectra agree)."""
    g, r = radial_power_spectrum(generated)[1:], radial_power_spectrum(real)[1:]  # without the DC term
    return float((torch.log10(g + 1e-8) - torch.log10(r + 1e-8)).abs().mean())


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean Euclidean distance between distinct rows of (n, d) features; 0 for fewer than two rows."""
    n = len(features)
    if n < 2:
        return 0.0
    d = torch.cdist(features.double(), features.double())
    return float(d.sum() / (n * (n - 1)))


def relative_diversity(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Mean pairwise feature distance among generated samples over that among real images (1 = as diverse)."""
    return mean_pairwise_distance(generated) / max(mean_pairwise_distance(real), 1e-12)
