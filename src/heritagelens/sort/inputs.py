"""How a photo becomes the model's input when sorting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..config import IMAGE_SIZE
from ..data.images import read_rgb

VIEWS = ("whole", "centre", "multi")
"""How a photo becomes the 64 px input: 'whole' resizes the whole frame (as the dataset's images were made),
'centre' crops the central square first, 'multi' averages the probabilities of the whole frame and five crops of
80% of it (centre and corners). Chosen by measurement: see BENCHMARKS.md."""
DEFAULT_VIEW = "whole"


def views(im: Image.Image, how: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """The model inputs (V, 3, size, size) uint8 for one upright RGB photo."""
    w, h = im.size

    def box(fw: float, fh: float, ax: float, ay: float) -> tuple[int, int, int, int]:
        """A box `fw` x `fh` of the frame, its left/top at fraction `ax`/`ay` of the free space."""
        bw, bh = max(1, round(w * fw)), max(1, round(h * fh))
        x0, y0 = round((w - bw) * ax), round((h - bh) * ay)
        return x0, y0, x0 + bw, y0 + bh

    if how == "whole":
        boxes = [(0, 0, w, h)]
    elif how == "centre":
        side = min(w, h)
        boxes = [box(side / w, side / h, 0.5, 0.5)]
    elif how == "multi":
        boxes = [(0, 0, w, h)] + [box(0.8, 0.8, ax, ay) for ax, ay in ((0.5, 0.5), (0, 0), (1, 0), (0, 1), (1, 1))]
    else:
        raise ValueError(f"unknown view '{how}'; known: {', '.join(VIEWS)}")
    out = [im.resize((size, size), Image.Resampling.BICUBIC, box=b, reducing_gap=2.0) for b in boxes]
    return np.stack([np.asarray(v, dtype=np.uint8).transpose(2, 0, 1) for v in out])


def load(path: Path, how: str) -> np.ndarray:
    """`views` of the photo at `path` (decoded at reduced scale when large, as `images.open_image` decodes it: the
    'whole' view is `images.decode`'s pixels); raises `DataError`."""
    return views(read_rgb(path, at_least=2 * IMAGE_SIZE), how)
