"""Figures as plain functions that return PIL images; writing them to disk is the caller's business."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw

from .model.calibration import curve, ece, filed_at, reliability

if TYPE_CHECKING:
    from .model.metrics import EvalResult

BACKGROUND = (255, 255, 255)
NEUTRAL = 128


def png_bytes(im: Image.Image) -> bytes:
    """The image encoded as PNG."""
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def pyplot():
    """matplotlib's pyplot, on the Agg backend (figures rendered to images, never to a window): imported on first use,
    so that commands that draw nothing never load matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_image(fig) -> Image.Image:
    """A matplotlib figure rendered to an RGB image; the figure is closed."""
    plt = pyplot()

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def projection_to_rgb(p: torch.Tensor) -> np.ndarray:
    """A projection (3, H, W) as uint8 (H, W, 3): zero is mid-grey, the largest magnitude reaches black or white."""
    scale = p.abs().max().clamp_min(1e-12)
    return (127.5 + 127.5 * (p / scale)).clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def image_to_rgb(x: torch.Tensor) -> np.ndarray:
    """uint8 (3, H, W) pixels as (H, W, 3)."""
    return x.clamp(0, 255).byte().permute(1, 2, 0).numpy()


def crop(rgb: np.ndarray, box: tuple[int, ...], fill: int = NEUTRAL) -> np.ndarray:
    """The (top, left, bottom, right) box of an (H, W, 3) image, filled with `fill` where it leaves the image."""
    top, left, bottom, right = box
    H, W, _ = rgb.shape
    out = np.full((bottom - top, right - left, 3), fill, dtype=np.uint8)
    t, lft, b, r = max(top, 0), max(left, 0), min(bottom, H), min(right, W)
    if t < b and lft < r:
        out[t - top : b - top, lft - left : r - left] = rgb[t:b, lft:r]
    return out


def tile(cells: list[np.ndarray], cols: int, size: int, gap: int = 2) -> np.ndarray:
    """Cells resized to `size` x `size` and laid out in rows of `cols` with `gap` px of white between them."""
    rows = (len(cells) + cols - 1) // cols
    out = np.full((rows * size + (rows - 1) * gap, cols * size + (cols - 1) * gap, 3), 255, dtype=np.uint8)
    for i, c in enumerate(cells):
        r, q = divmod(i, cols)
        im = np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.NEAREST))
        out[r * (size + gap) : r * (size + gap) + size, q * (size + gap) : q * (size + gap) + size] = im
    return out


def labelled(panel: np.ndarray, text: str, height: int = 14) -> np.ndarray:
    """The panel with a line of text above it."""
    im = Image.new("RGB", (panel.shape[1], panel.shape[0] + height), BACKGROUND)
    im.paste(Image.fromarray(panel), (0, height))
    ImageDraw.Draw(im).text((2, 1), text, fill=(0, 0, 0))
    return np.asarray(im)


def grid(panels: list[np.ndarray], cols: int, gap: int = 10, title: str = "") -> Image.Image:
    """Panels of possibly different sizes in rows of `cols`, with an optional title line."""
    h = max(p.shape[0] for p in panels)
    w = max(p.shape[1] for p in panels)
    rows = (len(panels) + cols - 1) // cols
    top = 20 if title else 0
    im = Image.new("RGB", (cols * w + (cols + 1) * gap, top + rows * h + (rows + 1) * gap), BACKGROUND)
    for i, p in enumerate(panels):
        r, q = divmod(i, cols)
        im.paste(Image.fromarray(p), (gap + q * (w + gap), top + gap + r * (h + gap)))
    if title:
        ImageDraw.Draw(im).text((gap, 4), title, fill=(0, 0, 0))
    return im


def figure2(
    projections: torch.Tensor,
    images: torch.Tensor,
    boxes: list[list[tuple[int, ...]]],
    channels: list[int],
    layer: str,
    tile_px: int = 40,
    cols: int = 4,
) -> Image.Image:
    """Zeiler & Fergus figure 2 for one layer: per channel, the deconvnet projections of its top images (left 3x3)
    beside the receptive-field patches of those images (right 3x3).

    Args:
        projections: (n, k, 3, H, W) projections; images: (n, k, 3, H, W) uint8 source images.
        boxes: per channel, per image, the receptive-field box (top, left, bottom, right).
    """
    panels = []
    for c, projs, imgs, bxs in zip(channels, projections, images, boxes):
        side = int(np.ceil(np.sqrt(len(projs))))
        left = tile([crop(projection_to_rgb(p), b) for p, b in zip(projs, bxs)], side, tile_px)
        right = tile([crop(image_to_rgb(x), b) for x, b in zip(imgs, bxs)], side, tile_px)
        sep = np.full((left.shape[0], 6, 3), 255, dtype=np.uint8)
        panels.append(labelled(np.concatenate([left, sep, right], 1), f"{layer} channel {c}"))
    return grid(
        panels,
        min(cols, len(panels)),
        title=f"{layer}: top-{projections.shape[1]} images per channel, "
        "deconvnet projections (left) and receptive-field patches (right)",
    )


def evolution_figure(
    cells: list[list[np.ndarray]], channels: list[int], epochs: list[int], layer: str, tile_px: int = 56
) -> Image.Image:
    """Zeiler & Fergus figure 4: one row per channel, one column per training epoch; `cells[row][col]` (H, W, 3)."""
    panels = [labelled(tile(row, len(row), tile_px), f"{layer} channel {c}") for c, row in zip(channels, cells)]
    heading = "epochs " + ", ".join(map(str, epochs))
    return grid(panels, 1, title=f"{layer}: strongest projection over the train split at {heading}")


def per_image_view(
    image: torch.Tensor, rows: list[tuple[str, list[int], torch.Tensor]], tile_px: int = 64
) -> Image.Image:
    """One image and, for each layer, the projections of its strongest channels, one row per layer.

    Args:
        image: (3, H, W) uint8.
        rows: (layer, channels, projections (n, 3, H, W)) per layer.
    """
    panels = [labelled(tile([image_to_rgb(image)], 1, tile_px), "input")]
    for layer, channels, projs in rows:
        cells = [projection_to_rgb(p) for p in projs]
        panels.append(labelled(tile(cells, len(cells), tile_px), f"{layer}: channels {', '.join(map(str, channels))}"))
    return grid(panels, 1, title="deconvnet projections of the strongest channels per layer")


@dataclass
class Panel:
    """One view of an image as a comparison figure shows it: an RGB image (H, W, 3) or a map (H, W) in a colour map."""

    title: str
    image: np.ndarray
    cmap: str | None = None
    over_input: bool = False
    """Drawn half-transparent over the input image (a heat map)."""
    limits: tuple[float, float] | None = None
    """A fixed colour range (probabilities: 0 to 1); None scales to the map's own range."""
    is_input: bool = False
    """The model's input: replaced by the photo at its own resolution when the figure is given one."""


def explanation_panels(
    image: torch.Tensor,
    deconv: torch.Tensor,
    maps: dict[str, torch.Tensor],
    occ_probability: torch.Tensor,
    occ_feature: torch.Tensor,
    occ_label: str,
) -> list[Panel]:
    """The image, the deconvnet projection of its strongest deepest feature, saliency, guided backpropagation,
    Grad-CAM over the image, and the two occlusion maps of Zeiler & Fergus section 4.2."""
    return [
        Panel("input", image_to_rgb(image), is_input=True),
        Panel("deconvnet", projection_to_rgb(deconv)),
        Panel("saliency |grad|", maps["saliency"].numpy(), "gray"),
        Panel("guided backprop", projection_to_rgb(maps["guided_backprop"])),
        Panel("Grad-CAM", maps["grad_cam"].numpy(), "jet", over_input=True),
        Panel(f"occlusion: p({occ_label})", occ_probability.numpy(), "RdBu", limits=(0.0, 1.0)),
        Panel("occlusion: strongest feature", occ_feature.numpy(), "viridis"),
    ]


def comparison_figure(
    image: torch.Tensor, title: str, panels: list[Panel], photo: np.ndarray | None = None
) -> Image.Image:
    """The panels of one image side by side, each map with its colour bar. With `photo` (the photo at its own
    resolution, RGB (H, W, 3)), the input is shown as that photo and the heat maps are laid over it, stretched from
    the model's square input back to the photo's shape (the input is the whole frame resized to a square)."""
    plt = pyplot()

    base = image_to_rgb(image) if photo is None else photo
    fig, axes = plt.subplots(1, len(panels), figsize=(2.1 * len(panels), 3.0), dpi=100)
    for ax, p in zip(axes, panels):
        if p.is_input and photo is not None:
            ax.imshow(photo)
            ax.set_title(f"input ({photo.shape[1]} x {photo.shape[0]} px)", fontsize=8)
            ax.axis("off")
            continue
        extent = None
        if p.over_input:
            ax.imshow(base)
            extent = (-0.5, base.shape[1] - 0.5, base.shape[0] - 0.5, -0.5)
        vmin, vmax = p.limits or (None, None)
        shown = ax.imshow(
            p.image,
            cmap=p.cmap,
            alpha=0.5 if p.over_input else None,
            vmin=vmin,
            vmax=vmax,
            extent=extent,
            interpolation="bilinear" if extent else "antialiased",
        )
        if p.cmap is not None:  # a map: what its colours mean
            bar = fig.colorbar(shown, ax=ax, orientation="horizontal", fraction=0.06, pad=0.04)
            bar.ax.tick_params(labelsize=6)
            bar.locator = plt.MaxNLocator(3)
            bar.update_ticks()
        ax.set_title(p.title, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return figure_image(fig)


def gallery(images: torch.Tensor, labels: list[str], samples: int, scale: int = 2, title: str = "") -> Image.Image:
    """Class images (n * samples, 3, H, W) uint8, one labelled panel of `samples` images per class (at most four
    to a row), panels two to a row, upscaled `scale` times (bicubic)."""
    size = images.shape[-1] * scale
    panels = []
    for k, label in enumerate(labels):
        cells = [image_to_rgb(x) for x in images[k * samples : (k + 1) * samples]]
        big = [np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.BICUBIC)) for c in cells]
        panels.append(labelled(tile(big, min(samples, 4), size), label))
    return grid(panels, min(len(panels), 2), title=title)


# ---------------------------------------------------------------------------------- evaluation and training


def confusion_figure(result: EvalResult):
    """The confusion matrix as a matplotlib figure, counts in cells and row-normalised colour."""
    plt = pyplot()

    cm = np.array(result.confusion)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    n = len(result.classes)
    ax.set_xticks(range(n), result.classes, rotation=45, ha="right")
    ax.set_yticks(range(n), result.classes)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"{result.split}: accuracy {result.accuracy:.3f} on {result.n} images" + (" (TTA)" if result.tta else "")
    )
    fig.tight_layout()
    return fig


def reliability_figure(logits: torch.Tensor, labels: torch.Tensor, temperature: float, title: str):
    """Reliability diagrams before and after scaling: accuracy per confidence bin against the diagonal."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), dpi=110, sharey=True)
    for ax, t, name in ((axes[0], 1.0, "before"), (axes[1], temperature, f"after (T = {temperature:.2f})")):
        probs = torch.softmax(logits.double() / t, 1)
        bins = reliability(probs, labels)
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        for b in bins:
            width = b["hi"] - b["lo"]
            ax.bar(b["lo"], b["accuracy"], width=width, align="edge", color="#4c72b0", edgecolor="white")
            gap_lo, gap_hi = sorted((b["accuracy"], b["confidence"]))
            ax.bar(b["lo"], gap_hi - gap_lo, bottom=gap_lo, width=width, align="edge", color="#dd8452", alpha=0.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top class probability)")
        ax.set_title(f"{name}: ECE {ece(probs, labels):.2%}")
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def risk_coverage_figure(held: dict[str, list], classes: list[str], threshold: float = 0.5, title: str = ""):
    """Left: the accuracy of the photos filed against the share filed, as the confidence threshold falls, thresholds
    marked; right: per predicted class, the share filed and their accuracy at `threshold`."""
    plt = pyplot()

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=110, gridspec_kw={"width_ratios": [1, 1.3]})
    thresholds, coverage, accuracy = curve(held)
    a.plot(coverage, accuracy, color="#4c72b0")
    for t in (0.9, 0.7, 0.5, 0.3):
        f = filed_at(held, t)
        if f.filed:
            a.plot(f.coverage, f.accuracy, "o", color="#dd8452")
            a.annotate(f"{t:.1f}", (f.coverage, f.accuracy), textcoords="offset points", xytext=(4, -12), fontsize=8)
    a.set_xlabel("share of photos filed (coverage)")
    a.set_ylabel("accuracy of the photos filed")
    a.set_xlim(0, 1.02)
    a.set_title("as the threshold falls (marked)")
    per = [filed_at(held, threshold, predicted=k) for k in range(len(classes))]
    x = np.arange(len(classes))
    b.bar(x - 0.2, [f.coverage for f in per], width=0.4, label="share filed", color="#4c72b0")
    b.bar(x + 0.2, [f.accuracy or 0 for f in per], width=0.4, label="accuracy of those filed", color="#55a868")
    b.set_xticks(x, classes, rotation=45, ha="right", fontsize=8)
    b.set_ylim(0, 1.05)
    b.set_title(f"per predicted class, at {threshold:.2f}")
    b.legend(fontsize=8, loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def curves_figure(rows: list[dict]) -> Image.Image:
    """Training loss, and training and validation accuracy, per epoch (rows as in `metrics.csv`)."""
    plt = pyplot()

    epoch = [int(r["epoch"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=100)
    a.plot(epoch, [float(r["train_loss"]) for r in rows], marker=".")
    a.set(xlabel="epoch", ylabel="training loss", title="training loss (augmented batches)")
    b.plot(epoch, [float(r["train_acc"]) for r in rows], marker=".", label="training (augmented)")
    b.plot(epoch, [float(r["val_acc"]) for r in rows], marker=".", label="val: group-aware validation")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy per epoch", ylim=(0, 1))
    b.legend(loc="lower right")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_image(fig)
