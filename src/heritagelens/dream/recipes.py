"""The named class-image recipes (`config.DREAM_PRESETS`) as settings, and the error the optimization reports."""

from __future__ import annotations

import dataclasses

from ..config import DREAM_PRESETS, Config, DreamConfig
from ..errors import HeritageLensError


class DreamError(HeritageLensError, ValueError):
    """A setting the optimization cannot use, or an optimization that diverged."""


def dream_preset(name: str, **overrides) -> DreamConfig:
    """The class-image recipe `name` (`config.DREAM_PRESETS`: 'default', 'naive', 'fourier' or 'maco'), with
    `overrides` of its `DreamConfig` fields."""
    if name not in DREAM_PRESETS:
        raise DreamError(f"unknown dream preset '{name}'; known: {', '.join(DREAM_PRESETS)}")
    return dataclasses.replace(Config().override(DREAM_PRESETS[name]).dream, **overrides)
