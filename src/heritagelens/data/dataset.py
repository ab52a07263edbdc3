"""The AHE dataset on disk: layout checks, the split decoded to one uint8 tensor (photos decoded by `images`), the
decode cache, and the group-aware split.

Layout: `<root>/train/<class>/*` and optionally `<root>/test/<class>/*`. Class names are the sorted folder names.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import IMAGE_SIZE
from ..files import atomic_save, file_sha256, safe_load
from .classes import class_name_problem
from .images import DataError, decode_many, open_image

CACHE_VERSION = 1
SPLITS = ("train", "test")


@dataclass
class Split:
    """One split decoded: images (N, 3, 64, 64) uint8, labels (N,) int64, and the file behind each row."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str]
    classes: list[str]
    bad: list[tuple[str, str]] = field(default_factory=list)
    """(file, problem) for files that could not be decoded and were skipped."""


# ---------------------------------------------------------------------------------------------------------- layout


def folder_entries(folder: Path) -> list[Path]:
    """What `folder` holds; one line naming it when it cannot be read (permissions, a file system gone)."""
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise DataError(f"{folder}: cannot read this folder ({e.strerror or e})") from None


def list_classes(root: Path, split: str = "train") -> list[str]:
    """Sorted class folder names of `root/split`, checked to be a usable layout."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such directory")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    d = root / split
    if not d.is_dir():
        raise DataError(f"{d}: missing; expected the layout <root>/train/<class>/*.jpg")
    classes = sorted(p.name for p in folder_entries(d) if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{d}: no class folders; expected <root>/{split}/<class>/*.jpg")
    for c in classes:
        if problem := class_name_problem(c):
            raise DataError(f"{d / c}: the class folder's name {problem}; rename the folder")
    return classes


def list_files(root: Path, split: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Every file of `root/split/<class>/` in sorted order with its class index.

    Raises `DataError` for an empty class folder or a class folder that is not among `classes`.
    """
    d = Path(root) / split
    found = sorted(p.name for p in folder_entries(d) if p.is_dir() and not p.name.startswith("."))
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DataError(
            f"{d / unknown[0]}: class '{unknown[0]}' is not one of the model's classes ({', '.join(classes)})"
        )
    files, labels = [], []
    for i, c in enumerate(classes):
        if not (d / c).is_dir():
            continue  # a test split may lack a class; the train split never does (its classes come from it)
        members = sorted(p for p in folder_entries(d / c) if p.is_file() and not p.name.startswith("."))
        if not members:
            raise DataError(f"{d / c}: empty class folder")
        files += members
        labels += [i] * len(members)
    return files, labels


def has_split(root: Path, split: str) -> bool:
    return (Path(root) / split).is_dir()


OUTSIDE_FOLDERS = ("../shared/data/ahe64-outside",)
"""Where photos from other sources are looked for, after `<root>-outside` beside the data root."""


def find_outside(setting: str, root: Path | str, classes: list[str]) -> Path | None:
    """The folder of outside photos (`DataConfig.outside`): the `setting` when it names one, None for 'none', else
    the first of `<root>-outside` beside the data root and `OUTSIDE_FOLDERS` whose class folders are all among
    `classes` (photos of another taxonomy are not this model's outside photos); None when none is."""
    if setting == "none":
        return None
    if setting:
        return Path(setting)
    root = Path(root)

    def fits(folder: Path) -> bool:
        found = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
        return bool(found) and found <= set(classes)

    candidates = (root.parent / f"{root.name}-outside", *map(Path, OUTSIDE_FOLDERS))
    return next((p for p in candidates if p.is_dir() and fits(p)), None)


def load_folder(
    folder: Path | str, classes: list[str], on_bad_file: str = "skip", cache_dir: Path | str | None = None
) -> Split:
    """A folder of class folders (`folder/<class>/*`, each class one of `classes`, any of them may be missing)
    decoded as one split; its files are named relative to the folder's parent, so they start with its name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: {'not a directory' if folder.exists() else 'no such directory'}")
    if (folder / "train").is_dir():
        raise DataError(
            f"{folder}: a dataset root (it holds train/); give a folder of class folders, such as its test/"
        )
    if not any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir()):
        raise DataError(f"{folder}: no class folders; expected {folder}/<class>/*.jpg")
    return load_split(folder.parent, folder.name, classes, on_bad_file, cache_dir)


# ----------------------------------------------------------------------------------------------------------- cache


def _cache_key(root: Path, files: list[Path], labels: list[int]) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{IMAGE_SIZE}".encode())
    for f, y in zip(files, labels):
        st = f.stat()
        h.update(f"{f.relative_to(root)}|{y}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def default_cache_dir(root: Path) -> Path:
    d = Path(root) / ".heritagelens-cache"
    if os.access(root, os.W_OK):
        return d
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "heritagelens"


def load_split(
    root: Path | str,
    split: str = "train",
    classes: list[str] | None = None,
    on_bad_file: str = "skip",
    cache_dir: Path | str | None = None,
) -> Split:
    """Decode a whole split into memory, through an on-disk cache keyed by file names, sizes and mtimes.

    Unreadable files are dropped with their problem listed in `Split.bad`, or raise `DataError` when
    `on_bad_file == 'stop'`.
    """
    root = Path(root)
    classes = classes or list_classes(root, "train")
    if not has_split(root, split):
        raise DataError(f"{root / split}: missing split folder")
    files, labels = list_files(root, split, classes)
    cache = Path(cache_dir) if cache_dir else default_cache_dir(root)
    cache_file = cache / f"{split}-{_cache_key(root, files, labels)}.pt"
    result = _read_cache(cache_file, classes)
    if result is None:
        result = _decode_split(root, files, labels, classes)
        try:
            atomic_save(
                {
                    "images": result.images,
                    "labels": result.labels,
                    "files": result.files,
                    "bad": [list(b) for b in result.bad],
                },
                cache_file,
            )
        except OSError:
            pass  # caching is an optimisation: a read-only disk still loads
    if result.bad and on_bad_file == "stop":
        f, problem = result.bad[0]
        raise DataError(
            f"{f}: {problem} ({len(result.bad)} unreadable file(s) in {root / split}; see 'heritagelens data check')"
        )
    return result


def _read_cache(cache_file: Path, classes: list[str]) -> Split | None:
    if not cache_file.exists():
        return None
    try:
        d = safe_load(cache_file)
        return Split(d["images"], d["labels"], d["files"], classes, [tuple(b) for b in d["bad"]])
    except Exception:
        return None  # a damaged cache is rebuilt


def _decode_split(root: Path, files: list[Path], labels: list[int], classes: list[str]) -> Split:
    arr, bad = decode_many(files)
    bad_set = {f for f, _ in bad}
    keep = [i for i, f in enumerate(files) if str(f) not in bad_set]
    images = torch.from_numpy(arr[keep])
    y = torch.tensor([labels[i] for i in keep], dtype=torch.int64)
    return Split(images, y, [str(files[i].relative_to(root)) for i in keep], classes, bad)


# ------------------------------------------------------------------------------------------------------ data check


@dataclass
class CheckReport:
    """What `heritagelens data check` found."""

    root: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> files
    sizes: Counter
    modes: Counter
    bad: list[tuple[str, str]]
    duplicates: list[list[str]]  # groups of byte-identical files
    cross_class: list[list[str]]  # duplicate groups that span classes
    problems: list[str]  # layout problems that make the data unusable
    ignored: list[str] = field(default_factory=list)  # "path: why" of entries that are neither class nor image

    @property
    def usable(self) -> bool:
        return not self.problems

    def text(self) -> str:
        """The report as every face shows it: a table of files per class and split, then what is odd."""
        splits = list(self.counts)
        lines = [f"data root: {self.root}", f"{'class':<18}" + "".join(f"{s:>8}" for s in splits)]
        for c in sorted({c for counts in self.counts.values() for c in counts}):
            lines.append(f"{c:<18}" + "".join(f"{self.counts[s].get(c, 0):>8}" for s in splits))
        lines.append(f"{'total':<18}" + "".join(f"{sum(self.counts[s].values()):>8}" for s in splits))
        lines.append("sizes: " + ", ".join(f"{k} ({v})" for k, v in self.sizes.most_common(8)))
        lines.append("modes: " + ", ".join(f"{k} ({v})" for k, v in self.modes.most_common()))
        lines.append(f"unreadable files: {len(self.bad)}")
        lines += [f"  {f}: {problem}" for f, problem in self.bad]
        cross = len(self.cross_class)
        lines.append(f"exact duplicate groups: {len(self.duplicates)} ({cross} filed under more than one class)")
        lines += [("  CROSS-CLASS " if g in self.cross_class else "  ") + "  ==  ".join(g) for g in self.duplicates]
        lines += [f"ignored: {p}" for p in self.ignored] + [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def check(root: Path | str) -> CheckReport:
    """Inspect every file of every split without stopping at the first problem."""
    root = Path(root)
    classes = list_classes(root, "train")  # a missing root or train folder is unusable outright
    counts: dict[str, dict[str, int]] = {}
    sizes: Counter = Counter()
    modes: Counter = Counter()
    bad: list[tuple[str, str]] = []
    problems: list[str] = []
    ignored: list[str] = []
    by_hash: dict[str, list[str]] = {}
    for split in SPLITS:
        if not has_split(root, split):
            continue
        counts[split] = {}
        entries = sorted(p for p in (root / split).iterdir() if not p.name.startswith("."))
        ignored += [f"{p}: not a class folder, ignored" for p in entries if not p.is_dir()]
        for c in [p.name for p in entries if p.is_dir()]:
            if c not in classes:
                problems.append(f"{root / split / c}: class '{c}' is not in train/")
            try:
                inside = sorted(p for p in folder_entries(root / split / c) if not p.name.startswith("."))
            except DataError as e:
                problems.append(str(e))
                continue
            members = [p for p in inside if p.is_file()]
            ignored += [
                f"{p}: {'a folder' if p.is_dir() else 'not a regular file'}, ignored" for p in inside if not p.is_file()
            ]
            counts[split][c] = len(members)
            if not members:
                problems.append(f"{root / split / c}: empty class folder")
            for p in members:
                try:
                    by_hash.setdefault(file_sha256(p), []).append(str(p.relative_to(root)))
                except OSError as e:
                    bad.append((str(p), f"cannot read this file ({e.strerror or e})"))
                    continue
                try:
                    open_image(p)  # first: it refuses what is too large to open (a decompression bomb)
                    with warnings.catch_warnings(), Image.open(p) as im:
                        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                        sizes[f"{im.width}x{im.height}"] += 1
                        modes[im.mode] += 1
                except (DataError, OSError, Image.UnidentifiedImageError) as e:
                    bad.append((str(p), str(e).removeprefix(f"{p}: ")))
    dups = sorted(g for g in by_hash.values() if len(g) > 1)
    cross = [g for g in dups if len({Path(f).parts[-2] for f in g}) > 1]
    return CheckReport(str(root), classes, counts, sizes, modes, bad, dups, cross, problems, ignored)


# ------------------------------------------------------------------------------------------------- group-aware split

_FLICKR = re.compile(r"^(\d{5,})_[0-9a-f]{6,}(?:_[a-z])?$")
_WIKI_SIZE = re.compile(r"^\d+px-")
_TRAILING = re.compile(r"[\s_\-.,()\d]+$")
_LEADING = re.compile(r"^[\s_\-.,()\d]+")


def name_key(file: str) -> tuple[str, int | str]:
    """('flickr', id) for Flickr files, else ('name', stem): the stem without size prefix or numbers at either end."""
    stem = Path(file).stem
    m = _FLICKR.match(stem)
    if m:
        return "flickr", int(m.group(1))
    s = _LEADING.sub("", _TRAILING.sub("", _WIKI_SIZE.sub("", stem))).lower()
    return "name", s or stem.lower()


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int):
        self.parent[self.find(i)] = self.find(j)


def near_duplicate_pairs(images: torch.Tensor, threshold: float, block: int = 2048) -> list[tuple[int, int]]:
    """Pairs (i < j) whose 16x16 RGB thumbnails have Pearson correlation >= threshold. images: (N, 3, H, W) uint8."""
    x = torch.nn.functional.adaptive_avg_pool2d(images.float(), 16).flatten(1)  # (N, 768)
    x = x - x.mean(1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)
    pairs = []
    for s in range(0, len(x), block):
        corr = x[s : s + block] @ x.T  # (b, N)
        i, j = torch.nonzero(corr >= threshold, as_tuple=True)
        i = i + s
        keep = i < j
        pairs += list(zip(i[keep].tolist(), j[keep].tolist()))
    return pairs


def find_groups(files: list[str], images: torch.Tensor, near_dup_corr: float, flickr_id_window: int) -> np.ndarray:
    """A group id per image. One group holds images linked, directly or through others, by any of:

    near-identical pixels (thumbnail correlation, which includes byte-identical copies), Flickr ids within
    `flickr_id_window` of each other (a burst from one photographer), or the same file-name stem (Wikimedia series
    such as `Apse_-_Duomo_-_Pisa_2014.jpg` and `..._(2).jpg`).
    """
    uf = _UnionFind(len(files))
    for i, j in near_duplicate_pairs(images, near_dup_corr):
        uf.union(i, j)
    keys = [name_key(f) for f in files]
    flickr = sorted((k[1], i) for i, k in enumerate(keys) if k[0] == "flickr")
    for (id_a, a), (id_b, b) in zip(flickr, flickr[1:]):
        if id_b - id_a <= flickr_id_window:
            uf.union(a, b)
    first_with_stem: dict[str, int] = {}
    for i, (kind, stem) in enumerate(keys):
        if kind == "name":
            uf.union(i, first_with_stem.setdefault(stem, i))
    roots = [uf.find(i) for i in range(len(files))]
    return np.unique(roots, return_inverse=True)[1]


def group_split(
    labels: np.ndarray, groups: np.ndarray, folds: int, fold: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): fold `fold` of a stratified group k-fold, so no group spans both."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise DataError(f"only {n_groups} independent image group(s) in train/: too few for {folds} validation folds")
    skf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (tr, va) in enumerate(skf.split(np.zeros(len(labels)), labels, groups)):
        if k == fold:
            return tr, va
    raise AssertionError("unreachable")


def source_holdout(files: list[str], labels: np.ndarray, groups: np.ndarray, source: str, ranges: int) -> np.ndarray:
    """Indices held out of training as photos from another source, whole groups at a time (so that no burst,
    series or near-duplicate spans training and the held-out set):

    - 'flickr-newest': in each class, the last of `ranges` equal ranges of its Flickr photos by id (the latest
      uploads: other years, cameras and photographers than most of training);
    - 'flickr-range-K': in each class, the K-th of those ranges (folds of a cross-source estimate);
    - 'wikimedia': every file not named by a Flickr id (the Wikimedia Commons series, most of them apses and
      flying buttresses);
    - 'none': nothing.
    """
    if source == "none":
        return np.zeros(0, dtype=np.int64)
    keys = [name_key(f) for f in files]
    if source == "wikimedia":
        chosen = [i for i, (kind, _) in enumerate(keys) if kind == "name"]
    else:
        k = ranges - 1 if source == "flickr-newest" else int(source.rsplit("-", 1)[1])
        chosen = []
        for c in np.unique(labels):
            ids = sorted((keys[i][1], i) for i in np.flatnonzero(labels == c) if keys[i][0] == "flickr")
            chosen += [i for _, i in ids[len(ids) * k // ranges : len(ids) * (k + 1) // ranges]]
    return np.flatnonzero(np.isin(groups, groups[chosen]))


def source_description(source: str, ranges: int) -> str:
    """What a source hold-out holds out, in words (printed beside every accuracy measured on it)."""
    if source == "flickr-newest":
        return f"each class's newest {1 / ranges:.0%} of Flickr uploads"
    if source.startswith("flickr-range-"):
        return f"Flickr id range {int(source.rsplit('-', 1)[1]) + 1} of {ranges} in each class"
    return {"wikimedia": "the files not named by a Flickr id (Wikimedia Commons)", "none": "nothing"}[source]


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, 3, H, W), in 0..255 units."""
    x = images.float()
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
