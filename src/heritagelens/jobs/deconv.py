"""The deconvnet's figures on disk, each with a JSON index: figure-2 grids over the train split, one image's view
beside the other explanation methods, and feature evolution over a run's snapshots."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from ..data import images
from ..data.split import train_split
from ..explain.deconvnet import DeconvError, top_activations, top_activations_of
from ..explain.views import comparison, default_channels, evolution, image_view, top9_figure
from ..figures import (
    png_bytes,
)
from ..files import atomic_write_bytes, atomic_write_json
from ..model.card import check_classes
from ..model.checkpoint import load_model, temperature
from ..model.network import conv_layer_names
from ..model.trained import Trained, trained
from ..progress import bar, say


def top9_path(out_dir: Path | str, layer: str, channels: list[int] | None = None) -> Path:
    """`deconv-top9-<layer>.png` (the strongest channels, as the main job draws it), or `...-ch3-17.png` for the
    channels chosen."""
    chosen = "-ch" + "-".join(map(str, channels)) if channels else ""
    return Path(out_dir) / f"deconv-top9-{layer}{chosen}.png"


def image_view_paths(out_dir: Path | str, image_path: Path | str) -> list[Path]:
    """`deconv-<photo>-<key>.png` and `compare-<photo>-<key>.png`: the key (6 hex digits of the photo's full path)
    keeps two cards' `IMG_0001.jpg` apart."""
    key = hashlib.sha256(str(Path(image_path).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:6]
    return [Path(out_dir) / f"{kind}-{Path(image_path).stem}-{key}.png" for kind in ("deconv", "compare")]


def write_top9(
    checkpoint: Trained | Path | str,
    layers: list[str],
    out_dir: Path | str,
    channels: list[int] | None = None,
    root: Path | str | None = None,
) -> list[Path]:
    """Figure-2 grids (`top9_path`) and indexes (`.json`) for each layer, over the train split (at `root` when
    given); `checkpoint` is a model or the checkpoint that holds one."""
    t = trained(checkpoint, root)
    say(f"deconv: {t.path}, the top 9 of every channel of {', '.join(layers)} over its train split")
    model, split = t.model, t.train_split()
    say(f"train split: {len(split.labels)} photos, one pass for every layer, then {len(layers)} figure(s)")
    tops = top_activations_of(model, split.images, layers, progress="top 9")  # one pass for every layer
    written = []
    for layer in layers:
        fig, index = top9_figure(model, split, layer, channels, top=tops[layer])
        out = top9_path(out_dir, layer, channels)
        atomic_write_bytes(png_bytes(fig), out)
        atomic_write_json(index, out.with_suffix(".json"))
        written.append(out)
    return written


def write_evolution(
    run: Path | str, layer: str, out_dir: Path | str, channels: list[int] | None = None, root: Path | str | None = None
) -> Path:
    """`deconv-evolution-<layer>.png` from a run folder's `epoch-N.pt` snapshots and its `last.pt`."""
    run = Path(run)
    files = sorted(run.glob("epoch-*.pt"), key=lambda f: int(f.stem.split("-")[1])) + [run / "last.pt"]
    if len(files) < 2 or not files[-1].exists():
        raise DeconvError(f"{run}: no epoch-N.pt snapshots (train with --set 'train.snapshot_epochs=[1,5,10]')")
    say(f"deconv: {run}, {layer} over {len(files)} snapshots")
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


INDEX = "deconv-index.csv"
"""What `deconv --image FOLDER` writes beside the figures: one row per photo, in `INDEX_COLUMNS`."""
INDEX_COLUMNS = ("photo", "class", "probability", "calibrated", "deconv", "compare", "problem")


def write_image_view(
    checkpoint: Path | str,
    image_path: Path | str,
    out_dir: Path | str,
    layers: list[str] | None = None,
    channels: list[int] | None = None,
    target: str | None = None,
) -> list[Path]:
    """`deconv-<photo>-<key>.png` (every layer's strongest projections) and `compare-<photo>-<key>.png` (the
    deconvnet beside the gradient methods and occlusion), each with a JSON index (`image_view_paths`)."""
    say(f"deconv: {checkpoint}, projections of {image_path} and the comparison maps (occlusion takes seconds)")
    loaded = _loaded(checkpoint, target)
    return _image_view(loaded, image_path, out_dir, layers, channels, target)[0]


def write_image_views(
    checkpoint: Path | str,
    photos: list[Path],
    out_dir: Path | str,
    layers: list[str] | None = None,
    channels: list[int] | None = None,
    target: str | None = None,
) -> Path:
    """`write_image_view` for each of `photos` (the model loaded once) and `deconv-index.csv` beside the figures:
    per photo, its class, the probability `predict` gives it, both figures, or why it could not be read (the others
    go on). Returns the index's path."""
    say(f"deconv: {checkpoint}, projections and comparison maps of {len(photos)} photo(s) (seconds each)")
    loaded = _loaded(checkpoint, target)
    rows = []
    with bar(len(photos), "deconv") as shown:
        for photo in photos:
            try:
                written, index = _image_view(loaded, photo, out_dir, layers, channels, target)
                row = {
                    "photo": str(photo),
                    "class": index["target"],
                    "probability": index["probability"],
                    "calibrated": index["calibrated"],
                    "deconv": written[0].name,
                    "compare": written[1].name,
                    "problem": "",
                }
            except images.DataError as e:
                row = dict.fromkeys(INDEX_COLUMNS, "") | {
                    "photo": str(photo),
                    "problem": str(e).removeprefix(f"{photo}: "),
                }
            rows.append(row)
            shown.update(1)
    text = io.StringIO()
    writer = csv.DictWriter(text, INDEX_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    path = Path(out_dir) / INDEX
    atomic_write_bytes(text.getvalue().encode("utf-8", "surrogateescape"), path)
    return path


def _loaded(checkpoint: Path | str, target: str | None) -> tuple:
    model, classes, ckpt = load_model(checkpoint)
    if target is not None and target not in classes:
        raise DeconvError(f"unknown class '{target}'; classes: {', '.join(classes)}")
    return model, classes, temperature(ckpt, tta=False)  # the probability `predict` and `sort` give


def _image_view(
    loaded: tuple, image_path: Path | str, out_dir: Path | str, layers: list[str] | None, channels, target
) -> tuple[list[Path], dict]:
    """Both figures of one photo and their JSON; (paths, the comparison's index)."""
    model, classes, t = loaded
    image = torch.from_numpy(images.decode(image_path))
    layers = layers or conv_layer_names(model)
    fig, index = image_view(model, image, layers, channels)
    out, out2 = image_view_paths(out_dir, image_path)
    atomic_write_bytes(png_bytes(fig), out)
    atomic_write_json({"image": str(image_path), "layers": index}, out.with_suffix(".json"))
    photo = np.asarray(images.for_display(image_path))  # the heat maps over the photo at its own resolution
    fig, index = comparison(model, image, classes, layers[-1], classes.index(target) if target else None, t, photo)
    atomic_write_bytes(png_bytes(fig), out2)
    atomic_write_json({"image": str(image_path), **index}, out2.with_suffix(".json"))
    return [out, out2], index
