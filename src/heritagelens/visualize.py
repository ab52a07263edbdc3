"""Figures on disk, each with a JSON index: deconvnet figure-2 grids over the train split, per-image views and
comparisons, feature evolution, and class-image galleries."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import torch
from PIL import Image

from . import data
from .attribution import gradient_maps, occlusion
from .checkpoint import check_classes, load_model
from .config import Config
from .deconvnet import DeconvError, check_channels, project_top, receptive_box, strongest_channels, top_activations
from .figures import comparison_figure, crop, evolution_figure, figure2, per_image_view, projection_to_rgb
from .io import atomic_write_bytes, atomic_write_json
from .models import HeritageCNN, conv_layer_names
from .train import predict_logits


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def train_split(ckpt: dict, root: Path | str | None = None) -> data.Split:
    """The train split of `root`, or of the data the checkpoint's model was trained on."""
    cfg = Config.from_dict(ckpt["config"])
    return data.load_split(root or cfg.data.root, "train", cache_dir=cfg.data.cache_dir or None)


def default_channels(top, labels: torch.Tensor, n: int) -> list[int]:
    """`n` channels that between them cover the classes: in turn for each class, the channel not yet chosen whose
    top images hold the most images of that class (ties to the stronger channel). Sorted by channel number."""
    counts = torch.stack([(labels[top.indices] == k).sum(1) for k in range(int(labels.max()) + 1)], 1)  # (C, K)
    score = counts.float() + top.values.mean(1, keepdim=True) / (top.values.max() + 1e-12) * 0.5
    chosen: list[int] = []
    while len(chosen) < min(n, len(score)):
        k = len(chosen) % score.shape[1]
        s = score[:, k].clone()
        s[chosen] = float("-inf")
        chosen.append(int(s.argmax()))
    return sorted(chosen)


def top9_figure(
    model: HeritageCNN,
    split: data.Split,
    layer: str,
    channels: list[int] | None = None,
    k: int = 9,
    n_default: int = 16,
) -> tuple[Image.Image, dict]:
    """Figure 2 of Zeiler & Fergus for `layer` over every image of `split`, and its index (every channel's top-k)."""
    top = top_activations(model, split.images, layer, k=k)
    C = top.values.shape[0]
    check_channels(channels or [], C, layer)
    chosen = channels or default_channels(top, split.labels, n_default)
    proj = project_top(model, split.images, top, chosen)
    size = split.images.shape[-1]
    boxes = [[receptive_box(model, layer, tuple(p), size) for p in top.positions[c].tolist()] for c in chosen]
    fig = figure2(proj, split.images[top.indices[chosen]], boxes, chosen, layer)
    index = {
        "layer": layer,
        "shown_channels": chosen,
        "shown_because": "given" if channels else "in turn per class, the channel whose top images are most of it",
        "channels": {
            str(c): [
                {"file": split.files[i], "activation": round(float(v), 4), "position": p}
                for i, v, p in zip(top.indices[c].tolist(), top.values[c].tolist(), top.positions[c].tolist())
            ]
            for c in range(C)
        },
    }
    return fig, index


def write_top9(
    checkpoint: Path | str,
    layers: list[str],
    out_dir: Path | str,
    channels: list[int] | None = None,
    root: Path | str | None = None,
) -> list[Path]:
    """Figure-2 grids (`deconv-top9-<layer>.png`) and indexes (`.json`) for each layer, over the train split."""
    model, classes, ckpt = load_model(checkpoint)
    split = train_split(ckpt, root)
    check_classes(classes, split.classes, checkpoint)
    written = []
    for layer in layers:
        fig, index = top9_figure(model, split, layer, channels)
        out = Path(out_dir) / f"deconv-top9-{layer}.png"
        atomic_write_bytes(png_bytes(fig), out)
        atomic_write_json(index, out.with_suffix(".json"))
        written.append(out)
    return written


def evolution(snapshots: list[tuple[int, HeritageCNN]], split: data.Split, layer: str, channels: list[int]):
    """For each snapshot (epoch, model): the projection of each channel's strongest activation over `split`,
    cropped to its receptive field; the figure and its index."""
    cells: list[list] = [[] for _ in channels]
    index: dict[str, list] = {str(c): [] for c in channels}
    for epoch, model in snapshots:
        top = top_activations(model, split.images, layer, k=1)
        check_channels(channels, top.values.shape[0], layer)
        proj = project_top(model, split.images, top, channels)[:, 0]  # (n, 3, H, W)
        for row, (c, p) in enumerate(zip(channels, proj)):
            box = receptive_box(model, layer, tuple(top.positions[c, 0].tolist()), split.images.shape[-1])
            cells[row].append(crop(projection_to_rgb(p), box))
            index[str(c)].append(
                {
                    "epoch": epoch,
                    "file": split.files[int(top.indices[c, 0])],
                    "activation": round(float(top.values[c, 0]), 4),
                }
            )
    return evolution_figure(cells, channels, [e for e, _ in snapshots], layer), index


def write_evolution(
    run: Path | str, layer: str, out_dir: Path | str, channels: list[int] | None = None, root: Path | str | None = None
) -> Path:
    """`deconv-evolution-<layer>.png` from a run folder's `epoch-N.pt` snapshots and its `last.pt`."""
    run = Path(run)
    files = sorted(run.glob("epoch-*.pt"), key=lambda f: int(f.stem.split("-")[1])) + [run / "last.pt"]
    if len(files) < 2 or not files[-1].exists():
        raise DeconvError(f"{run}: no epoch-N.pt snapshots (train with --set 'train.snapshot_epochs=[1,5,10]')")
    snapshots = []
    for f in files:
        model, classes, ckpt = load_model(f)
        snapshots.append((int(ckpt["epoch"]), model))
    split = train_split(ckpt, root)
    check_classes(classes, split.classes, files[-1])
    if not channels:  # the final model's class-covering channels, as in figure 2
        channels = default_channels(top_activations(snapshots[-1][1], split.images, layer), split.labels, 8)
    fig, index = evolution(snapshots, split, layer, channels)
    out = Path(out_dir) / f"deconv-evolution-{layer}.png"
    atomic_write_bytes(png_bytes(fig), out)
    atomic_write_json({"layer": layer, "channels": index}, out.with_suffix(".json"))
    return out


def image_view(
    model: HeritageCNN, image: torch.Tensor, layers: list[str], channels: list[int] | None = None, n: int = 9
) -> tuple[Image.Image, dict]:
    """Projections of one image (3, H, W) uint8: at each layer, `channels` or the `n` strongest channels."""
    rows, index = [], {}
    for layer in layers:
        ch, values, proj, pos = strongest_channels(model, image, layer, n, channels)
        rows.append((layer, ch.tolist(), proj))
        index[layer] = [
            {"channel": c, "activation": round(v, 4), "position": p}
            for c, v, p in zip(ch.tolist(), values.tolist(), pos.tolist())
        ]
    return per_image_view(image, rows), index


def comparison(
    model: HeritageCNN, image: torch.Tensor, classes: list[str], layer: str, target: int | None = None
) -> tuple[Image.Image, dict]:
    """The deconvnet beside saliency, guided backprop, Grad-CAM and occlusion for one image (3, H, W) uint8, all
    for `target` (default: the predicted class) at `layer` (its strongest channel)."""
    probs = torch.softmax(predict_logits(model, image[None], bf16=False), 1)[0]
    target = int(probs.argmax()) if target is None else target
    channels, _, proj, _ = strongest_channels(model, image, layer, 1)
    maps = {k: v[0] for k, v in gradient_maps(model, image[None], torch.tensor([target]), layer).items()}
    occ = occlusion(model, image, target, layer)
    title = (
        f"target {classes[target]} (p={probs[target]:.2f}); predicted {classes[int(probs.argmax())]}; "
        f"deconvnet and occlusion feature: {layer} channel {int(channels[0])}"
    )
    fig = comparison_figure(image, title, proj[0], maps, occ.probability, occ.feature, classes[target])
    index = {
        "target": classes[target],
        "probability": round(float(probs[target]), 4),
        "layer": layer,
        "channel": int(channels[0]),
        "occlusion": {
            "size": occ.size,
            "stride": occ.stride,
            "min_probability": round(float(occ.probability.min()), 4),
        },
    }
    return fig, index


def write_image_view(
    checkpoint: Path | str,
    image_path: Path | str,
    out_dir: Path | str,
    layers: list[str] | None = None,
    channels: list[int] | None = None,
    target: str | None = None,
) -> list[Path]:
    """`deconv-<image>.png` (every layer's strongest projections) and `compare-<image>.png` (the deconvnet beside
    the gradient methods and occlusion), each with a JSON index."""
    model, classes, _ = load_model(checkpoint)
    if target is not None and target not in classes:
        raise DeconvError(f"unknown class '{target}'; classes: {', '.join(classes)}")
    image = torch.from_numpy(data.decode(image_path))
    layers = layers or conv_layer_names(model)
    fig, index = image_view(model, image, layers, channels)
    out = Path(out_dir) / f"deconv-{Path(image_path).stem}.png"
    atomic_write_bytes(png_bytes(fig), out)
    atomic_write_json({"image": str(image_path), "layers": index}, out.with_suffix(".json"))
    fig, index = comparison(model, image, classes, layers[-1], classes.index(target) if target else None)
    out2 = Path(out_dir) / f"compare-{Path(image_path).stem}.png"
    atomic_write_bytes(png_bytes(fig), out2)
    atomic_write_json({"image": str(image_path), **index}, out2.with_suffix(".json"))
    return [out, out2]


def write_dream(
    checkpoint: Path | str,
    class_names: list[str] | None,
    out_dir: Path | str,
    preset: str = "fourier",
    samples: int = 4,
    seed: int = 0,
    root: Path | str | None = None,
    overrides: dict | None = None,
) -> Path:
    """`dream-<preset>.png` (a gallery of `samples` images per class, upscaled) and `dream-<preset>.json`; the
    images themselves as `dream-<preset>/<class>-<i>.png` at 64 px."""
    from .dream import DreamError, class_images, dream_preset, image_stats
    from .figures import gallery

    model, classes, ckpt = load_model(checkpoint)
    names = class_names or classes
    for n in names:
        if n not in classes:
            raise DreamError(f"unknown class '{n}'; classes: {', '.join(classes)}")
    if samples < 1:
        raise DreamError(f"--samples must be at least 1, not {samples}")
    cfg = dream_preset(preset, **(overrides or {}))
    split = train_split(ckpt, root)
    result = class_images(model, [classes.index(n) for n in names], samples, cfg, image_stats(split.images), seed)
    out = Path(out_dir)
    for k, n in enumerate(names):
        for i in range(samples):
            im = Image.fromarray(result.images[k * samples + i].permute(1, 2, 0).numpy())
            atomic_write_bytes(png_bytes(im), out / f"dream-{preset}" / f"{n}-{i}.png")
    fig = gallery(result.images, names, samples, title=f"class images, preset {preset}, seed {seed}")
    atomic_write_bytes(png_bytes(fig), out / f"dream-{preset}.png")
    atomic_write_json(
        {
            "preset": preset,
            "config": dataclasses.asdict(cfg),
            "classes": names,
            "samples": samples,
            "seed": seed,
            "final_objective": result.scores[-1],
        },
        out / f"dream-{preset}.json",
    )
    return out / f"dream-{preset}.png"
