"""Class images by activation maximization (Simonyan et al. 2013 and its regularized successors).

Cut along the concepts of feature visualization (Olah et al. 2017; lucent's layout):
parameterization (how an image is made from the parameters being optimized), objective (what to maximize, callables
that add and scale), transforms (random jitter, scale and rotation the image must survive), and the render loop.
Images are (B, 3, H, W) float tensors in pixel units 0..255, the model's input range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import DreamConfig
from .errors import HeritageLensError
from .precision import for_model

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class DreamError(HeritageLensError, ValueError):
    """A setting the optimization cannot use, or an optimization that diverged."""


# ---------------------------------------------------------------------------------------------- parameterizations


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


# ----------------------------------------------------------------------------------------------------- transforms


def jitter(d: int) -> Transform:
    """Shift by up to `d` px in x and y (wrapping round), the same shift for the whole batch."""

    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        dy, dx = (int(v) for v in torch.randint(-d, d + 1, (2,), generator=g))
        return torch.roll(x, (dy, dx), (2, 3))

    return t


def random_affine(scales: Sequence[float] = (1.0,), degrees: Sequence[float] = (0.0,)) -> Transform:
    """Scale by one of `scales` and rotate by one of `degrees` about the centre (bilinear, reflection at the edges)."""

    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = scales[int(torch.randint(len(scales), (1,), generator=g))]
        a = math.radians(degrees[int(torch.randint(len(degrees), (1,), generator=g))])
        theta = torch.tensor([[math.cos(a) / s, -math.sin(a) / s, 0.0], [math.sin(a) / s, math.cos(a) / s, 0.0]])
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3).to(x), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    return t


def compose(transforms: Sequence[Transform]) -> Transform:
    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for f in transforms:
            x = f(x, g)
        return x

    return t


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), edges extended; sigma 0 returns x."""
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x)
    C = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.reshape(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


# ----------------------------------------------------------------------------------------------------- objectives


class Objective:
    """A per-image score to maximize, (B,), from the model's outputs and recorded activations; objectives add,
    subtract and scale, so `class_logit(3) - 0.5 * class_logit(5)` is an objective."""

    def __init__(self, fn: Callable[[Recording], torch.Tensor], name: str, layers: frozenset[str] = frozenset()):
        self.fn, self.name, self.layers = fn, name, layers

    def __call__(self, rec: Recording) -> torch.Tensor:
        return self.fn(rec)

    def __add__(self, other: Objective) -> Objective:
        return Objective(lambda r: self(r) + other(r), f"{self.name} + {other.name}", self.layers | other.layers)

    def __sub__(self, other: Objective) -> Objective:
        return self + (-1.0) * other

    def __rmul__(self, k: float) -> Objective:
        return Objective(lambda r: k * self(r), f"{k:g} * {self.name}", self.layers)

    __mul__ = __rmul__


@dataclass
class Recording:
    """What one forward pass exposes to objectives."""

    images: torch.Tensor
    logits: torch.Tensor
    activations: dict[str, torch.Tensor]


def class_logit(k: int | torch.Tensor) -> Objective:
    """The unnormalized score of class `k` (one class, or one per image), as Simonyan et al. recommend."""
    return Objective(
        lambda r: r.logits.gather(1, torch.as_tensor(k).expand(len(r.logits))[:, None].long())[:, 0], f"logit[{k}]"
    )


def channel(layer: str, c: int) -> Objective:
    """Mean activation of channel `c` of feature layer `layer` (a name from `heritagelens layers`)."""
    return Objective(lambda r: r.activations[layer][:, c].mean((1, 2)), f"{layer}:{c}", frozenset([layer]))


def unit(layer: str, c: int) -> Objective:
    """Activation of channel `c` of `layer` at the centre of its map: one neuron, with one receptive field."""

    def fn(r: Recording) -> torch.Tensor:
        a = r.activations[layer]
        return a[:, c, a.shape[2] // 2, a.shape[3] // 2]

    return Objective(fn, f"{layer}:{c}@centre", frozenset([layer]))


def one_each(objectives: list[Objective], which: torch.Tensor) -> Objective:
    """Image b gets objective `objectives[which[b]]`: several channels, or several classes, in one batch."""

    def fn(r: Recording) -> torch.Tensor:
        return torch.stack([o(r) for o in objectives], 1).gather(1, which[:, None])[:, 0]

    layers = frozenset().union(*(o.layers for o in objectives))
    return Objective(fn, "one each of " + ", ".join(o.name for o in objectives), layers)


def diversity(layer: str) -> Objective:
    """Olah et al.'s diversity term: minus the mean cosine similarity of each image's Gram matrix at `layer` to the
    others' (images of one batch pushed apart in style)."""

    def fn(r: Recording) -> torch.Tensor:
        a = r.activations[layer]
        B, C = a.shape[:2]
        flat = a.reshape(B, C, -1)
        gram = F.normalize((flat @ flat.transpose(1, 2)).reshape(B, -1), dim=1)
        sim = gram @ gram.T
        return -(sim.sum(1) - sim.diagonal()) / max(B - 1, 1)

    return Objective(fn, f"diversity({layer})", frozenset([layer]))


def total_variation(r: Recording) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per image, in 0..1 units (Mahendran & Vedaldi)."""
    x = r.images / 255.0
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))


def l2(r: Recording) -> torch.Tensor:
    """Mean squared distance of pixels from mid-grey, per image, in 0..1 units (Simonyan et al.'s L2 penalty)."""
    return ((r.images / 255.0 - 0.5) ** 2).mean((1, 2, 3))


def penalty(fn: Callable[[Recording], torch.Tensor], name: str) -> Objective:
    """A regularizer as an objective to maximize: minus the penalty."""
    return Objective(lambda r: -fn(r), name)


# ----------------------------------------------------------------------------------------------------- recording


@contextmanager
def recording(model: nn.Module, layers: frozenset[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks on the rectified outputs of `layers` (conv names), always removed on exit."""
    acts: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for layer in layers:
            relu = getattr(model.features, layer.replace("conv", "relu"), None)
            if relu is None:
                raise DreamError(f"unknown layer '{layer}'")
            handles.append(relu.register_forward_hook(lambda m, i, o, name=layer: acts.__setitem__(name, o.float())))
        yield acts
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------------------------- render


@dataclass
class RenderResult:
    images: torch.Tensor
    """(B, 3, H, W) uint8."""
    scores: list[float]
    """The objective's mean over the batch at every step."""


def render(
    model: nn.Module,
    objective: Objective,
    param: Parameterization,
    transform: Transform | None = None,
    steps: int = 200,
    lr: float = 0.05,
    blur_every: int = 0,
    blur_sigma: float = 0.0,
    seed: int = 0,
    precision: str = "auto",
) -> RenderResult:
    """Maximize `objective` over `param`'s images by Adam, each step through a random `transform`.

    The model is used in eval mode with its weights frozen for the duration and left as it was. Stops with
    `DreamError` if the objective becomes NaN or infinite. The model runs in the mode `precision` resolves to
    (`heritagelens.precision`: bfloat16 autocast only where that is fastest; the parameters and the optimizer stay in
    float32).
    """
    if steps < 1 or not lr > 0:
        raise DreamError(f"steps must be at least 1 and lr positive (got steps={steps}, lr={lr})")
    g = torch.Generator().manual_seed(seed)
    amp = for_model(model, precision)
    opt = torch.optim.Adam(param.params, lr=lr)
    transform = transform or (lambda x, g: x)
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    scores = []
    try:
        with recording(model, objective.layers) as acts:
            for step in range(steps):
                images = param.image()
                with amp.autocast():
                    logits = model(amp.input(transform(images, g))).float()
                score = objective(Recording(images, logits, acts))
                if not torch.isfinite(score).all():
                    raise DreamError(f"the optimization diverged at step {step} (objective {objective.name} is NaN)")
                opt.zero_grad(set_to_none=True)
                (-score.sum()).backward()
                opt.step()
                scores.append(score.mean().item())
                if blur_every and (step + 1) % blur_every == 0:
                    _blur_in_place(param, blur_sigma)
    finally:
        model.train(was_training)
        for p, r in zip(model.parameters(), grads):
            p.requires_grad_(r)
    with torch.no_grad():
        return RenderResult(param.image().round().clamp(0, 255).to(torch.uint8), scores)


def _blur_in_place(param: Parameterization, sigma: float) -> None:
    """Yosinski et al.'s periodic Gaussian blur, applied to pixel parameters (other parameterizations are smooth)."""
    with torch.no_grad():
        for p in param.params:
            if p.ndim == 4:
                p.copy_(gaussian_blur(p, sigma))


# ------------------------------------------------------------------------------------------ data and presets


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


DREAM_PRESETS: dict[str, dict] = {
    "default": {},  # MACO in decorrelated colour with the diversity term: chosen by measurement (BENCHMARKS.md)
    "naive": dict(param="pixel", jitter=0, scales=(1.0,), degrees=(0.0,), diversity=0.0),
    "fourier": dict(param="fourier", tv=0.5, diversity=0.0),
    "maco": dict(param="phase", diversity=0.0),
}
"""Named recipes over `DreamConfig`'s defaults. 'naive' is plain gradient ascent on pixels (Simonyan et al.), the
floor every gallery is scored against; 'fourier' and 'maco' are the measured alternatives."""


def dream_preset(name: str, **overrides) -> DreamConfig:
    """The class-image recipe `name` ('default', 'naive', 'fourier' or 'maco': `DREAM_PRESETS`), with `overrides` of
    its `DreamConfig` fields."""
    if name not in DREAM_PRESETS:
        raise DreamError(f"unknown dream preset '{name}'; known: {', '.join(DREAM_PRESETS)}")
    return DreamConfig(**{**DREAM_PRESETS[name], **overrides})


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


def regularized(objective: Objective, cfg: DreamConfig, model: nn.Module, groups: int, samples: int) -> Objective:
    """`objective` plus the recipe's penalties, and its diversity term within each group of `samples` images."""
    from .models import conv_layer_names

    if cfg.tv:
        objective = objective + cfg.tv * penalty(total_variation, "tv")
    if cfg.l2:
        objective = objective + cfg.l2 * penalty(l2, "l2")
    if cfg.diversity and samples > 1:
        layer = cfg.diversity_layer or conv_layer_names(model)[-2]
        objective = objective + cfg.diversity * per_class(diversity(layer), groups, samples)
    return objective


def dream(
    model: nn.Module,
    objective: Objective,
    groups: Sequence[int],
    samples: int,
    cfg: DreamConfig,
    stats: ImageStats,
    seed: int = 0,
    init: torch.Tensor | None = None,
) -> RenderResult:
    """len(groups) x `samples` images maximizing `objective` (plus the recipe's penalties, and its diversity term
    within each group) in one batch, through the recipe's jitter, scale and rotation; from `init` (pixels, one per
    image) when given. Each image's seed depends on its group id and sample number only, so a group's images do not
    depend on which other groups share the batch."""
    seeds = [seed * 100_003 + int(g) * 1000 + i for g in groups for i in range(samples)]
    param = make_param(cfg, seeds, stats, init)
    transform = compose([jitter(cfg.jitter), random_affine(cfg.scales, cfg.degrees)])
    objective = regularized(objective, cfg, model, len(groups), samples)
    return render(model, objective, param, transform, cfg.steps, cfg.lr, cfg.blur_every, cfg.blur_sigma, seed)


def class_images(
    model: nn.Module,
    classes: list[int],
    samples: int,
    cfg: DreamConfig,
    stats: ImageStats,
    seed: int = 0,
    init: torch.Tensor | None = None,
) -> RenderResult:
    """`samples` images of each class in `classes`, all optimized in one batch; rows class-major."""
    targets = torch.tensor(classes).repeat_interleave(samples)
    return dream(model, class_logit(targets), classes, samples, cfg, stats, seed, init)


def per_class(objective: Objective, n_classes: int, samples: int) -> Objective:
    """Apply a batch-coupled objective (diversity) within each class's samples only."""

    def fn(r: Recording) -> torch.Tensor:
        parts = []
        for k in range(n_classes):
            sl = slice(k * samples, (k + 1) * samples)
            sub = Recording(r.images[sl], r.logits[sl], {n: a[sl] for n, a in r.activations.items()})
            parts.append(objective(sub))
        return torch.cat(parts)

    return Objective(fn, objective.name, objective.layers)
