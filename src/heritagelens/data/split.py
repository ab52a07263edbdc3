"""The train split as a run sees it: decoded once, grouped (near-duplicates, Flickr bursts, name series), and
divided into training, the group-aware validation and the source-held-out validation (see `heritagelens.data.dataset`
for the grouping and the hold-outs themselves)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import Config
from . import dataset


@dataclass
class Prepared:
    """The train split decoded and divided into training, group-aware validation and source-held-out validation."""

    split: dataset.Split
    groups: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    source_idx: np.ndarray
    source: str = "none"
    made_for: tuple = field(default=(), compare=False, repr=False)
    """The settings it was prepared with (see `prepare`)."""
    grouped_for: tuple = field(default=(), compare=False, repr=False)

    def held_out(self, split: str) -> np.ndarray:
        """The indices of 'val' (group-aware) or 'source' (source-held-out) validation."""
        return self.val_idx if split == "val" else self.source_idx

    def record(self) -> dict:
        """What a run's `split.json` holds: the summary and the files of both validations."""
        files = self.split.files
        return {
            **self.summary(),
            "val_files": [files[i] for i in self.val_idx],
            "source_files": [files[i] for i in self.source_idx],
        }

    def summary(self) -> dict:
        labels = self.split.labels.numpy()

        def count(idx: np.ndarray) -> dict[str, int]:
            return {c: int((labels[idx] == i).sum()) for i, c in enumerate(self.split.classes)}

        return {
            "method": "StratifiedGroupKFold over groups of near-duplicates, Flickr bursts and Wikimedia name series",
            "images": len(labels),
            "groups": int(self.groups.max() + 1) if len(self.groups) else 0,
            "largest_group": int(np.bincount(self.groups).max()) if len(self.groups) else 0,
            "train_images": len(self.train_idx),
            "val_images": len(self.val_idx),
            "source_held_out": self.source,
            "source_images": len(self.source_idx),
            "unreadable_skipped": len(self.split.bad),
            "per_class": count(np.arange(len(labels))),
            "train_per_class": count(self.train_idx),
            "val_per_class": count(self.val_idx),
            "source_per_class": count(self.source_idx),
        }


def prepare(cfg: Config, like: Prepared | None = None) -> Prepared:
    """`cfg`'s train split, decoded, grouped and divided. `like`, a preparation of the same data, is returned as it
    is when `cfg` divides it the same way; when only the division differs, its decoded images and groups are kept and
    the division alone is made again."""
    if like is not None and like.made_for == _division(cfg):
        return like
    dc = cfg.data
    if like is not None and like.grouped_for == _grouping(dc):
        split, groups = like.split, like.groups
    else:
        classes = list(dc.classes) or None
        split = dataset.load_split(dc.root, "train", classes, dc.on_bad_file, dc.cache_dir or None)
        groups = dataset.find_groups(split.files, split.images, dc.near_dup_corr, dc.flickr_id_window)
    labels = split.labels.numpy()
    src = dataset.source_holdout(split.files, labels, groups, dc.source_val, dc.source_ranges)
    rest = np.setdiff1d(np.arange(len(labels)), src)
    tr, va = dataset.group_split(labels[rest], groups[rest], dc.val_folds, dc.val_fold, dc.split_seed)
    tr, va = rest[tr], rest[va]
    if cfg.train.limit_train:
        rng = np.random.default_rng(cfg.train.seed)
        tr = rng.permutation(tr)[: cfg.train.limit_train]
        va = rng.permutation(va)[: max(1, cfg.train.limit_train // 4)]
        src = rng.permutation(src)[: max(1, cfg.train.limit_train // 4)]
    prep = Prepared(split, groups, np.sort(tr), np.sort(va), np.sort(src), dc.source_val)
    prep.made_for, prep.grouped_for = _division(cfg), _grouping(dc)
    return prep


def _grouping(dc) -> tuple:
    """What the decoded images and their groups depend on."""
    return (str(dc.root), tuple(dc.classes), dc.on_bad_file, dc.near_dup_corr, dc.flickr_id_window)


def _division(cfg: Config) -> tuple:
    """What the whole preparation depends on."""
    limit = cfg.train.limit_train
    return (dataclasses.replace(cfg.data), limit, cfg.train.seed if limit else None)


def data_config_of(ckpt: dict, root: Path | str | None = None, data_overrides: list[str] = ()) -> Config:
    """A checkpoint's config with the data root and the `data.*` settings a command gives."""
    return Config.from_dict(ckpt["config"]).override([*data_overrides, *([f"data.root={root}"] if root else [])])


def train_split(ckpt: dict, root: Path | str | None = None) -> dataset.Split:
    """The train split of `root`, or of the data the checkpoint's model was trained on."""
    cfg = Config.from_dict(ckpt["config"])
    classes = list(cfg.data.classes) or None
    return dataset.load_split(root or cfg.data.root, "train", classes, cache_dir=cfg.data.cache_dir or None)
