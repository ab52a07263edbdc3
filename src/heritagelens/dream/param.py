"""Parameterizations: how an image is made from the parameters being optimized (pixels, a 1/f-scaled Fourier
spectrum in decorrelated colour, or MACO's phase over the data's magnitude spectrum), and the data statistics they
need."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..config import DreamConfig


@dataclass
class Parameterization:
    """Tensors to optimize and the function that turns them into images (B, 3, H, W) in 0..255."""

    params: list[torch.Tensor]
    image: Callable[[], torch.Tensor]


def to_pixels(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Unbounded values (B, 3, H, W) to pixels kept inside the data's range: a sigmoid around the data's mean."""
    low, high = (mean - 3 * std).clamp_min(0), (mean + 3 * std).clamp_max(255)
    centre = torch.logit(((mean - low) / (high - low)).clamp(0.01, 0.99))
    return low + (high - low) * torch.sigmoid(x + centre)


def per_sample_randn(seeds: Sequence[int], *shape: int) -> torch.Tensor:
    """(len(seeds), *shape) normal noise, each sample from its own seed: a batch starts exactly as its samples
    would one at a time."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def from_pixels(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_pixels`: the unbounded values that give `images` (B, 3, H, W) in 0..255, pixels outside
    the data's range moved just inside it."""
    low, high = (mean - 3 * std).clamp_min(0), (mean + 3 * std).clamp_max(255)
    centre = torch.logit(((mean - low) / (high - low)).clamp(0.01, 0.99))
    return torch.logit(((images.float() - low) / (high - low)).clamp(0.002, 0.998)) - centre


def pixel_image(
    seeds: Sequence[int],
    size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    sd: float = 0.1,
    init: torch.Tensor | None = None,
) -> Parameterization:
    """One free parameter per pixel (Simonyan et al. 2013); one image per seed, from noise, or from `init` images
    (B, 3, H, W) in 0..255 plus that noise."""
    m, s = mean.reshape(1, 3, 1, 1), std.reshape(1, 3, 1, 1)
    x = per_sample_randn(seeds, 3, size, size) * sd
    if init is not None:
        x = x + from_pixels(init, m, s)
    x.requires_grad_(True)
    return Parameterization([x], lambda: to_pixels(x, m, s))


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """1 / f^decay_power over the rFFT frequencies of an h x w image (h, w // 2 + 1); the DC term gets 1."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    f = torch.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0 / max(h, w)
    return 1.0 / (f * max(h, w)) ** decay_power


def fourier_image(
    seeds: Sequence[int],
    size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    colour: torch.Tensor | None = None,
    decay_power: float = 1.0,
    sd: float = 0.01,
) -> Parameterization:
    """Olah et al. 2017: the image's Fourier coefficients scaled by 1/f (so all frequencies learn at similar rates),
    then colours decorrelated by `colour` (3, 3), the square root of the data's colour covariance, normalized."""
    H = W = size
    spec = (per_sample_randn(seeds, 3, H, W // 2 + 1, 2) * sd).requires_grad_(True)
    scale = spectrum_scale(H, W, decay_power)
    m, s = mean.reshape(1, 3, 1, 1), std.reshape(1, 3, 1, 1)

    def image() -> torch.Tensor:
        x = torch.fft.irfftn(torch.view_as_complex(spec) * scale, s=(H, W), norm="ortho") * math.sqrt(H * W) / 4
        if colour is not None:
            x = torch.einsum("ij,bjhw->bihw", colour, x)
        return to_pixels(x, m, s)

    return Parameterization([spec], image)


def phase_image(
    seeds: Sequence[int],
    magnitude: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    colour: torch.Tensor | None = None,
) -> Parameterization:
    """MACO (Fel et al. 2023): only the phase is optimized; the magnitude spectrum (3, H, W // 2 + 1) stays that of
    natural images (here: the mean spectrum of the training images). With `colour` (3, 3), the three channels are
    the data's decorrelated colour components (and `magnitude` their spectrum), mixed back into RGB: colours then
    vary together as in photographs instead of each channel taking its own phase."""
    H = W = magnitude.shape[-2]
    phase = per_sample_randn(seeds, 3, H, W // 2 + 1).requires_grad_(True)  # any start: the phase wraps
    m, s = mean.reshape(1, 3, 1, 1), std.reshape(1, 3, 1, 1)

    def image() -> torch.Tensor:
        x = torch.fft.irfftn(magnitude * torch.exp(1j * phase), s=(H, W))
        x = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True).clamp_min(1e-8)
        if colour is not None:
            x = torch.einsum("ij,bjhw->bihw", colour, x)
        return to_pixels(x, m, s)

    return Parameterization([phase], image)


@dataclass
class ImageStats:
    """What the parameterizations take from the training images: per-channel mean and std (pixel units), the square
    root of the colour correlation (3, 3), and the mean magnitude spectrum (3, H, W // 2 + 1) of standardized images
    and of their decorrelated colour components (`colour` inverted)."""

    mean: torch.Tensor
    std: torch.Tensor
    colour: torch.Tensor
    magnitude: torch.Tensor
    colour_magnitude: torch.Tensor


def image_stats(images: torch.Tensor, batch: int = 1024) -> ImageStats:
    """Statistics of uint8 images (N, 3, H, W)."""
    x = images.float()
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    z = ((x - mean[None, :, None, None]) / std[None, :, None, None]).permute(1, 0, 2, 3).reshape(3, -1)
    u, s, _ = torch.linalg.svd(torch.cov(z))
    colour = u @ torch.diag(s.sqrt())
    colour = colour / colour.norm(dim=0).max()  # as lucent: the largest colour direction has unit length
    mags, cmags = [], []
    inverse = torch.linalg.inv(colour)
    for i in range(0, len(x), batch):
        zi = (x[i : i + batch] - mean[None, :, None, None]) / std[None, :, None, None]
        mags.append(torch.fft.rfftn(zi, dim=(2, 3)).abs().sum(0))
        cmags.append(torch.fft.rfftn(torch.einsum("ij,bjhw->bihw", inverse, zi), dim=(2, 3)).abs().sum(0))
    return ImageStats(mean, std, colour, torch.stack(mags).sum(0) / len(x), torch.stack(cmags).sum(0) / len(x))


def make_param(
    cfg: DreamConfig, seeds: Sequence[int], stats: ImageStats, init: torch.Tensor | None = None
) -> Parameterization:
    """The recipe's parameterization, one image per seed; starting from `init` images (pixels) when given, which
    the pixel parameterization represents exactly (the others start from noise)."""
    size = stats.magnitude.shape[-2]
    if init is not None or cfg.param == "pixel":
        return pixel_image(seeds, size, stats.mean, stats.std, init=init)
    if cfg.param == "fourier":
        return fourier_image(seeds, size, stats.mean, stats.std, colour=stats.colour)
    if cfg.param == "phase-colour":
        return phase_image(seeds, stats.colour_magnitude, stats.mean, stats.std, colour=stats.colour)
    return phase_image(seeds, stats.magnitude, stats.mean, stats.std)
