"""The named class-image recipes over `DreamConfig`, and the error the optimization reports."""

from __future__ import annotations

from ..config import DreamConfig
from ..errors import HeritageLensError


class DreamError(HeritageLensError, ValueError):
    """A setting the optimization cannot use, or an optimization that diverged."""


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
