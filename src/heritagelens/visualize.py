"""Figures on disk, each with a JSON index: deconvnet figure-2 grids over the train split, per-image views and
comparisons, feature evolution, and class-image galleries."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from . import data
from .attribution import gradient_maps, occlusion
from .checkpoint import check_classes, load_model
from .config import Config, DreamConfig
from .deconvnet import (
    DeconvError,
    TopK,
    check_channels,
    project_top,
    receptive_box,
    strongest_channels,
    top_activations,
    top_activations_of,
)
from .dream import DreamError, channel, class_images, dream, dream_preset, image_stats, one_each, unit
from .figures import (
    comparison_figure,
    crop,
    evolution_figure,
    explanation_panels,
    figure2,
    gallery,
    per_image_view,
    png_bytes,
    projection_to_rgb,
)
from .files import atomic_write_bytes, atomic_write_json, atomic_write_text
from .inference import probabilities
from .judges import score_sets
from .models import HeritageCNN, conv_layer_names
from .scores import HEADLINE_JUDGE, per_class_table, score_table
from .split import checkpoint_split


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
    top: TopK | None = None,
) -> tuple[Image.Image, dict]:
    """Figure 2 of Zeiler & Fergus for `layer` over every image of `split`, and its index (every channel's top-k);
    `top`, when given, is that layer's `top_activations` over `split`, computed before."""
    top = top or top_activations(model, split.images, layer, k=k)
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
    tops = top_activations_of(model, split.images, layers)  # one pass over the split for every layer
    written = []
    for layer in layers:
        fig, index = top9_figure(model, split, layer, channels, top=tops[layer])
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
    probs = probabilities(model, image[None])[0]
    target = int(probs.argmax()) if target is None else target
    channels, _, proj, _ = strongest_channels(model, image, layer, 1)
    maps = {k: v[0] for k, v in gradient_maps(model, image[None], torch.tensor([target]), layer).items()}
    occ = occlusion(model, image, target, layer)
    title = (
        f"target {classes[target]} (p={probs[target]:.2f}); predicted {classes[int(probs.argmax())]}; "
        f"deconvnet and occlusion feature: {layer} channel {int(channels[0])}"
    )
    panels = explanation_panels(image, proj[0], maps, occ.probability, occ.feature, classes[target])
    fig = comparison_figure(image, title, panels)
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


@dataclass
class Gallery:
    """What `write_dream` wrote: the figure's path, the recipe and scores (as in its JSON) and the score tables."""

    png: Path
    meta: dict
    text: str = ""
    """The score tables, as in `dream-<label>.txt` (empty when not scored)."""


def write_dream(
    checkpoint: Path | str,
    class_names: list[str] | None,
    out_dir: Path | str,
    dream_cfg: DreamConfig,
    label: str = "default",
    samples: int = 4,
    seed: int = 0,
    root: Path | str | None = None,
    score: bool = True,
    judges_dir: Path | str | None = None,
    judge_extra: list[str] = (),
    init_image: Path | str | None = None,
    standard_model: Path | str | None = None,
    progress: bool = True,
    floor_samples: int | None = None,
) -> Gallery:
    """A gallery of `samples` class images per class and, with `score`, its quality report beside the naive-ascent
    floor and the real-image ceiling: `dream-<label>.png` (upscaled), `dream-<label>.json` (recipe and scores),
    `dream-<label>.txt` (score tables) and the images at 64 px as `dream-<label>/<class>-<i>.png`. With
    `init_image`, every image starts from that photograph instead of noise. The floor is naive ascent on the same
    model with as many steps, `floor_samples` images per class (default: `samples`); `standard_model` adds naive
    ascent on that (non-robust) model as a second floor."""
    model, classes, ckpt = load_model(checkpoint)
    names = class_names or classes
    for n in names:
        if n not in classes:
            raise DreamError(f"unknown class '{n}'; classes: {', '.join(classes)}")
    if samples < 1:
        raise DreamError(f"--samples must be at least 1, not {samples}")
    cfg, prep = checkpoint_split(ckpt, checkpoint, root)
    stats = image_stats(prep.split.images[prep.train_idx])
    ks = [classes.index(n) for n in names]
    init = start_images(init_image, len(ks) * samples)
    t0 = time.perf_counter()
    result = class_images(model, ks, samples, dream_cfg, stats, seed, init)
    seconds = time.perf_counter() - t0
    out = Path(out_dir)
    write_images(result.images, [f"{n}-{i}" for n in names for i in range(samples)], out / f"dream-{label}")
    meta = {
        "preset": label,
        "config": dataclasses.asdict(dream_cfg),
        "model": str(checkpoint),
        "classes": names,
        "samples": samples,
        "seed": seed,
        "from_image": str(init_image) if init_image else None,
        "seconds": round(seconds, 2),
        "final_objective": result.scores[-1],
    }
    titles, text = names, ""
    if score:
        sets = {f"{label} (this gallery)": (result.images, torch.tensor(ks).repeat_interleave(samples))}
        floors = {"naive ascent (floor)": model} | ({"naive, standard model": standard_model} if standard_model else {})
        sets |= naive_floors(floors, ks, floor_samples or samples, dream_cfg.steps, stats, seed)
        scores, panel = score_sets(sets, cfg.data, classes, samples, seed, judges_dir, judge_extra, progress)
        meta["scores"] = scores
        meta["judges"] = {n: str(j.path) for n, j in panel.items()}
        mine = scores[f"{label} (this gallery)"]
        verdict = mine["judges"][HEADLINE_JUDGE]["per_class"]
        titles = [f"{n}: {HEADLINE_JUDGE} judge {verdict[n]['recognised']:.0%}" for n in names]
        text = score_table(scores) + "\n\nper class, this gallery:\n" + per_class_table(mine, classes)
        atomic_write_text(text + "\n", out / f"dream-{label}.txt")
    fig = gallery(result.images, titles, samples, title=f"class images, preset {label}, seed {seed}")
    atomic_write_bytes(png_bytes(fig), out / f"dream-{label}.png")
    atomic_write_json(meta, out / f"dream-{label}.json")
    return Gallery(out / f"dream-{label}.png", meta, text)


def write_images(images: torch.Tensor, names: list[str], folder: Path) -> None:
    """Each (3, H, W) uint8 image as `folder/<name>.png`."""
    for image, name in zip(images, names):
        atomic_write_bytes(png_bytes(Image.fromarray(image.permute(1, 2, 0).numpy())), folder / f"{name}.png")


def naive_floors(
    models: dict[str, HeritageCNN | Path | str], ks: list[int], samples: int, steps: int, stats, seed: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Naive gradient ascent on each named model (or checkpoint), `samples` images of each class in `ks` with the
    same budget of `steps` as the gallery they are the floor of: name -> (images, intended classes)."""

    naive = dream_preset("naive", steps=steps)
    out = {}
    for name, m in models.items():
        m = load_model(m)[0] if isinstance(m, (str, Path)) else m
        out[name] = (
            class_images(m, ks, samples, naive, stats, seed).images,
            torch.tensor(ks).repeat_interleave(samples),
        )
    return out


def start_images(path: Path | str | None, n: int) -> torch.Tensor | None:
    """The image at `path` (any size and format, made 64 px), `n` times, as the start of an optimization."""
    if path is None:
        return None
    try:
        return torch.from_numpy(data.decode(path))[None].expand(n, -1, -1, -1)
    except data.DataError as e:
        raise DreamError(str(e)) from None


def write_feature_dream(
    checkpoint: Path | str,
    layer: str,
    channels: list[int],
    out_dir: Path | str,
    dream_cfg: DreamConfig,
    label: str = "default",
    samples: int = 4,
    seed: int = 0,
    root: Path | str | None = None,
    centre_unit: bool = False,
    init_image: Path | str | None = None,
) -> Path:
    """Images maximizing channels of `layer` (their mean activation, or with `centre_unit` the one neuron at the
    centre of the map), `samples` each: `dream-<label>-<layer>.png` and `.json`."""
    model, classes, ckpt = load_model(checkpoint)
    convs = conv_layer_names(model)
    if layer not in convs:
        raise DreamError(f"unknown layer '{layer}'; conv layers: {', '.join(convs)}")
    check_channels(channels, getattr(model.features, layer).out_channels, layer)
    stats = image_stats(train_split(ckpt, root).images)
    which = torch.arange(len(channels)).repeat_interleave(samples)  # (B,) the channel each image serves
    objective = one_each([(unit if centre_unit else channel)(layer, c) for c in channels], which)
    result = dream(model, objective, channels, samples, dream_cfg, stats, seed, start_images(init_image, len(which)))
    names = [f"{layer}:{c}" + (" centre" if centre_unit else "") for c in channels]
    fig = gallery(result.images, names, samples, title=f"{layer}, preset {label}, seed {seed}")
    out = Path(out_dir) / f"dream-{label}-{layer}.png"
    atomic_write_bytes(png_bytes(fig), out)
    meta = {"layer": layer, "channels": channels, "unit": "centre" if centre_unit else "mean", "samples": samples}
    meta |= {"seed": seed, "preset": label, "config": dataclasses.asdict(dream_cfg), "final": result.scores[-1]}
    atomic_write_json(meta, out.with_suffix(".json"))
    return out


def folder_images(folder: Path | str, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images under `folder` whose class is their parent folder's name or their file name's prefix
    (`gargoyle-3.png`, as `dream` writes them): (uint8 (N, 3, 64, 64), labels (N,), files)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DreamError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in data.IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DreamError(f"{folder}: no images (looked for {', '.join(sorted(data.IMAGE_SUFFIXES))})")
    labels = []
    by_length = sorted(classes, key=len, reverse=True)  # 'dome(inner)' before a shorter class it starts with
    for f in files:
        name = f.parent.name if f.parent.name in classes else next((c for c in by_length if f.stem.startswith(c)), None)
        if name is None:
            raise DreamError(f"{f}: no class in its folder or file name (classes: {', '.join(classes)})")
        labels.append(classes.index(name))
    images, bad = data.decode_many(files)
    if bad:
        raise DreamError(f"{bad[0][0]}: {bad[0][1]}")
    return torch.from_numpy(images), torch.tensor(labels), [str(f) for f in files]


def score_folder(
    folder: Path | str,
    data_cfg,
    judges_dir: Path | str | None = None,
    seed: int = 0,
    judge_extra: list[str] = (),
    progress: bool = True,
) -> dict:
    """Scores of the images in `folder` and, beside them, of as many real validation images per class."""

    classes = data.list_classes(Path(data_cfg.root), "train")
    images, labels, files = folder_images(folder, classes)
    per_class = int(torch.bincount(labels).max())
    name = Path(folder).name
    sets, panel = score_sets(
        {name: (images, labels)}, data_cfg, classes, per_class, seed, judges_dir, judge_extra, progress
    )
    text = score_table(sets) + "\n\nper class:\n" + per_class_table(sets[name], classes)
    return {"files": files, "scores": sets, "judges": {n: str(j.path) for n, j in panel.items()}, "text": text}
