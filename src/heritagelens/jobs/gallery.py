"""Class images on disk: galleries of classes or channels, scored by the judges beside the naive-ascent floor and the
real-image ceiling, and the scores of any folder of images."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..config import DreamConfig
from ..data import dataset, images
from ..data.split import train_split
from ..dream import DreamError, channel, class_images, dream, dream_preset, image_stats, one_each, unit
from ..explain.deconvnet import check_channels
from ..figures import (
    gallery,
    png_bytes,
)
from ..files import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..judging.judges import score_sets
from ..judging.scores import HEADLINE_JUDGE, per_class_table, score_table
from ..model.checkpoint import load_model
from ..model.network import HeritageCNN, conv_layer_names
from ..model.trained import Trained, trained
from ..progress import say


@dataclass
class Gallery:
    """What `write_dream` wrote: the figure's path, the recipe and scores (as in its JSON) and the score tables."""

    png: Path
    meta: dict
    text: str = ""
    """The score tables, as in `dream-<label>.txt` (empty when not scored)."""


def dream_stem(out_dir: Path | str, label: str, class_names: list[str] | None = None) -> Path:
    """Where `write_dream` writes (add .png, .json, .txt, or nothing for the images' folder): `dream-<label>` for
    every class, `dream-<label>-<class>` for one or a few."""
    return Path(out_dir) / "-".join(["dream", label, *(class_names or [])])


def feature_dream_path(out_dir: Path | str, label: str, layer: str, channels: list[int], centre: bool) -> Path:
    """`dream-<label>-<layer>-ch3-17.png` (`-centre` for the centre unit)."""
    return Path(out_dir) / f"dream-{label}-{layer}-ch{'-'.join(map(str, channels))}{'-centre' if centre else ''}.png"


MAX_SAMPLES = 256
"""The most images per class or channel one `dream` makes (they are optimised in one batch)."""


def check_samples(samples: int) -> None:
    if not 1 <= samples <= MAX_SAMPLES:
        raise DreamError(f"--samples must be at least 1 and at most {MAX_SAMPLES}, not {samples}")


def write_dream(
    checkpoint: Trained | Path | str,
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
    standard_model: HeritageCNN | Path | str | None = None,
    progress: bool = True,
    floor_samples: int | None = None,
) -> Gallery:
    """A gallery of `samples` class images per class and, with `score`, its quality report beside the naive-ascent
    floor and the real-image ceiling, under `dream_stem`: `.png` (upscaled), `.json` (recipe and scores), `.txt`
    (score tables) and the images at 64 px as `<stem>/<class>-<i>.png`, none left from an earlier gallery. With
    `init_image`, every image starts from that photograph instead of noise. The floor is naive ascent on the same
    model with as many steps, `floor_samples` images per class (default: `samples`); `standard_model` adds naive
    ascent on that (non-robust) model as a second floor."""
    what = f"{', '.join(class_names)}" if class_names else "every class"
    t = trained(checkpoint, root)
    say(f"dream: {t.path}, {samples} image(s) of {what}, preset {label}" + (", then scored" if score else ""))
    model, classes, cfg = t.model, t.classes, t.config
    names = class_names or classes
    for n in names:
        if n not in classes:
            raise DreamError(f"unknown class '{n}'; classes: {', '.join(classes)}")
    check_samples(samples)
    prep = t.prepared()
    stats = image_stats(prep.split.images[prep.train_idx])
    ks = [classes.index(n) for n in names]
    init = start_images(init_image, len(ks) * samples)
    t0 = time.perf_counter()
    result = class_images(model, ks, samples, dream_cfg, stats, seed, init)
    seconds = time.perf_counter() - t0
    stem = dream_stem(out_dir, label, class_names)
    for old in stem.glob("*-*.png") if stem.is_dir() else []:  # an earlier gallery's images (its own names only)
        if old.stem.rpartition("-")[0] in classes:
            old.unlink()
    stem.with_name(stem.name + ".txt").unlink(missing_ok=True)  # an unscored gallery has no score tables
    write_images(result.images, [f"{n}-{i}" for n in names for i in range(samples)], stem)
    meta = {
        "preset": label,
        "config": dataclasses.asdict(dream_cfg),
        "model": str(t.path),
        "classes": names,
        "samples": samples,
        "seed": seed,
        "from_image": str(init_image) if init_image else None,
        "seconds": round(seconds, 2),
        "final_objective": result.scores[-1],
    }
    titles, text = names, ""
    if score:
        say(f"scoring {len(result.images)} image(s) with the judges, beside naive ascent and real photos")
        sets = {f"{label} (this gallery)": (result.images, torch.tensor(ks).repeat_interleave(samples))}
        floors = {"naive ascent (floor)": model} | ({"naive, standard model": standard_model} if standard_model else {})
        sets |= naive_floors(floors, ks, floor_samples or samples, dream_cfg.steps, stats, seed)
        scores, panel = score_sets(sets, cfg.data, classes, samples, seed, judges_dir, judge_extra, progress, like=prep)
        meta["scores"] = scores
        meta["judges"] = {n: str(j.path) for n, j in panel.items()}
        mine = scores[f"{label} (this gallery)"]
        verdict = mine["judges"][HEADLINE_JUDGE]["per_class"]
        titles = [f"{n}: {HEADLINE_JUDGE} judge {verdict[n]['recognised']:.0%}" for n in names]
        text = score_table(scores) + "\n\nper class, this gallery:\n" + per_class_table(mine, classes)
        atomic_write_text(text + "\n", stem.with_name(stem.name + ".txt"))
    fig = gallery(result.images, titles, samples, title=f"class images, preset {label}, seed {seed}")
    png = atomic_write_bytes(png_bytes(fig), stem.with_name(stem.name + ".png"))
    atomic_write_json(meta, png.with_suffix(".json"))
    return Gallery(png, meta, text)


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
        return torch.from_numpy(images.decode(path))[None].expand(n, -1, -1, -1)
    except images.DataError as e:
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
    centre of the map), `samples` each: `feature_dream_path` and its `.json`."""
    check_samples(samples)
    say(f"dream: {checkpoint}, {samples} image(s) of each of {layer} channel(s) {', '.join(map(str, channels))}")
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
    out = atomic_write_bytes(png_bytes(fig), feature_dream_path(out_dir, label, layer, channels, centre_unit))
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
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in images.IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DreamError(f"{folder}: no images (looked for {', '.join(sorted(images.IMAGE_SUFFIXES))})")
    labels = []
    by_length = sorted(classes, key=len, reverse=True)  # 'dome(inner)' before a shorter class it starts with
    for f in files:
        name = f.parent.name if f.parent.name in classes else next((c for c in by_length if f.stem.startswith(c)), None)
        if name is None:
            raise DreamError(f"{f}: no class in its folder or file name (classes: {', '.join(classes)})")
        labels.append(classes.index(name))
    pixels, bad = images.decode_many(files)
    if bad:
        raise DreamError(f"{bad[0][0]}: {bad[0][1]}")
    return torch.from_numpy(pixels), torch.tensor(labels), [str(f) for f in files]


def score_folder(
    folder: Path | str,
    data_cfg,
    judges_dir: Path | str | None = None,
    seed: int = 0,
    judge_extra: list[str] = (),
    progress: bool = True,
) -> dict:
    """Scores of the images in `folder` and, beside them, of as many real validation images per class."""

    classes = dataset.list_classes(Path(data_cfg.root), "train")
    pixels, labels, files = folder_images(folder, classes)
    per_class = int(torch.bincount(labels).max())
    name = Path(folder).name
    sets, panel = score_sets(
        {name: (pixels, labels)}, data_cfg, classes, per_class, seed, judges_dir, judge_extra, progress
    )
    text = score_table(sets) + "\n\nper class:\n" + per_class_table(sets[name], classes)
    return {"files": files, "scores": sets, "judges": {n: str(j.path) for n, j in panel.items()}, "text": text}
