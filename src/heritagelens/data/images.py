"""Photos to pixels: any image Pillow reads, upright, in RGB, at the size the models take, with one clear line naming
the file when it cannot be read. No PyTorch here, so that a prediction from an exported model starts fast."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..config import IMAGE_SIZE
from ..errors import HeritageLensError

if TYPE_CHECKING:
    import torch

MAX_PIXELS = 120_000_000
"""Larger images are refused (JPEGs are decoded at reduced size first, so this rarely bites)."""
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""File name endings taken for images when a folder is scanned (dataset folders take every file)."""


class DataError(HeritageLensError):
    """A problem with the data on disk; the message is one line naming the file and the problem."""


def image_files(folder: Path | str) -> list[Path]:
    """Every image file under `folder` (by suffix, `IMAGE_SUFFIXES`), in path order."""
    return sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def open_image(path: Path | str, size: int = IMAGE_SIZE) -> Image.Image:
    """Open any image Pillow reads, apply EXIF rotation, convert to RGB and resize to `size` x `size`: the one
    decode behind every command, so that a photo gets one probability whichever command is asked (a large JPEG is
    decoded at the scale `sort` decodes it, at least twice `size` on each side, before the resize).

    Raises `DataError` naming the file when it is empty, truncated, not an image or too large.
    """
    return read_rgb(path, 2 * size).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)


def for_display(path: Path | str, longest: int = 512) -> Image.Image:
    """The photo in RGB, upright, at its own shape and at most `longest` px on its long side: what a figure draws
    heat maps over."""
    im = read_rgb(path, longest // 2)
    im.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    return im


def read_rgb(path: Path | str, at_least: int = IMAGE_SIZE) -> Image.Image:
    """Any image Pillow reads, upright (EXIF rotation applied) and in RGB; a JPEG much larger than `at_least` px is
    decoded at 1/2 to 1/8 scale, never below `at_least` on either side. Raises `DataError` naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below decides
            with Image.open(path) as im:
                im.draft("RGB", (at_least, at_least))  # JPEG: decode at reduced scale when much larger than needed
                if im.width * im.height > MAX_PIXELS:
                    raise DataError(f"{path}: image too large ({im.width}x{im.height} px)")
                turn = _ORIENTATION.get(im.getexif().get(0x0112))
                small = to_rgb(shrink(im, at_least))
                return small.transpose(turn) if turn is not None else small
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except PermissionError:
        raise DataError(f"{path}: cannot read this file (permission denied)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an image") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read") from None
    except Image.DecompressionBombError:
        raise DataError(f"{path}: image too large (decompression bomb limit)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt or truncated image ({e})") from None


_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation tag -> the transpose that puts the image upright."""


def shrink(im: Image.Image, at_least: int) -> Image.Image:
    """`im` decoded and, when it is more than twice as large as needed on its short side, reduced by an integer
    factor (box averages) before any conversion, never below 2 x `at_least`: a 100-megapixel 16-bit PNG then costs
    its own decoded size once (200 MB), not the float copies a conversion at full size would make (3 GB and more)."""
    im.load()
    k = min(im.width, im.height) // (2 * at_least)
    if k < 2:
        return im
    if im.mode in ("1", "P"):
        return im.convert("L" if im.mode == "1" else "RGBA").reduce(k)
    if im.mode.startswith("I;16"):  # Pillow cannot reduce it: box averages a band of rows at a time
        h, w, step = im.height // k * k, im.width // k * k, 32 * k
        bands = (np.asarray(im.crop((0, top, w, min(top + step, h)))) for top in range(0, h, step))
        rows = [b.reshape(-1, k, w // k, k).mean(axis=(1, 3), dtype=np.float32) for b in bands]
        return Image.fromarray(np.rint(np.concatenate(rows)).astype(np.uint16))  # mode I;16
    return im.reduce(k)


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB from any mode: alpha composited on white, palettes expanded, 16-bit and float scaled to 8 bits."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if im.mode.startswith("I;16") or a.max() > 255 else (0.0, 255.0)
        if im.mode == "F":
            lo, hi = float(a.min()), float(max(a.max(), a.min() + 1e-12))
        im = Image.fromarray(np.clip((a - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
        return bg
    return im.convert("RGB")


def decode(path: Path | str) -> np.ndarray:
    """One image as a (3, 64, 64) uint8 array (`heritagelens.decode` gives it as a tensor)."""
    return np.asarray(open_image(path), dtype=np.uint8).transpose(2, 0, 1).copy()


def decode_many(files: list[Path], workers: int = 4) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode `files` in parallel. Returns (N, 3, 64, 64) uint8 with zeros for failures, and (file, problem) pairs."""
    out = np.zeros((len(files), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    bad: list[tuple[str, str]] = []

    def one(i: int):
        try:
            out[i] = decode(files[i])
        except DataError as e:
            bad.append((str(files[i]), str(e).removeprefix(f"{files[i]}: ")))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(len(files))))
    return out, sorted(bad)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), edges extended; sigma 0 returns x. Shared by the training's
    sharpness augmentation and the class images' blur steps."""
    import math

    import torch
    import torch.nn.functional as F

    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x)
    C = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.reshape(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
