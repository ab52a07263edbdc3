"""Class images by activation maximization (Simonyan et al. 2013 and its regularized successors).

Cut along the concepts of feature visualization (Olah et al. 2017; lucent's layout), one module each: `param` (how
an image is made from the parameters being optimized), `objectives` (what to maximize, callables that add and
scale), `transforms` (random jitter, scale and rotation the image must survive), `render` (the loop) and `recipes`
(the named settings). Everything is importable from here.
Images are (B, 3, H, W) float tensors in pixel units 0..255, the model's input range.
"""

from ..data.images import gaussian_blur
from .objectives import (
    Objective,
    Recording,
    channel,
    class_logit,
    diversity,
    l2,
    one_each,
    penalty,
    per_class,
    recording,
    regularized,
    total_variation,
    unit,
)
from .param import (
    ImageStats,
    Parameterization,
    fourier_image,
    from_pixels,
    image_stats,
    make_param,
    per_sample_randn,
    phase_image,
    pixel_image,
    spectrum_scale,
    to_pixels,
)
from .recipes import DREAM_PRESETS, DreamError, dream_preset
from .render import RenderResult, class_images, dream, render
from .transforms import Transform, compose, jitter, random_affine

__all__ = [
    "DREAM_PRESETS",
    "DreamError",
    "ImageStats",
    "Objective",
    "Parameterization",
    "Recording",
    "RenderResult",
    "Transform",
    "channel",
    "class_images",
    "class_logit",
    "compose",
    "diversity",
    "dream",
    "dream_preset",
    "fourier_image",
    "from_pixels",
    "gaussian_blur",
    "image_stats",
    "jitter",
    "l2",
    "make_param",
    "one_each",
    "penalty",
    "per_class",
    "per_sample_randn",
    "phase_image",
    "pixel_image",
    "random_affine",
    "recording",
    "regularized",
    "render",
    "spectrum_scale",
    "to_pixels",
    "total_variation",
    "unit",
]
