"""The train split as a run sees it: decoded once, grouped (near-duplicates, Flickr bursts, name series), and
divided into training, the group-aware validation and the source-held-out validation (see `heritagelens.data` for
the grouping and the hold-outs themselves)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data
from .config import Config
from .modelcard import check_classes


@dataclass
class Prepared:
    """The train split decoded and divided into training, group-aware validation and source-held-out validation."""

    split: data.Split
    groups: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    source_idx: np.ndarray
    source: str = "none"

    def held_out(self, split: str) -> np.ndarray:
        """The indices of 'val' (group-aware) or 'source' (source-held-out) validation."""
        return self.val_idx if split == "val" else self.source_idx

    def record(self) -> dict:
        """What a run's `split.json` holds: the summary and the files of both validations."""
        files = self.split.files
        return {**self.summary(), "val_files": [files[i] for i in self.val_idx],
                "source_files": [files[i] for i in self.source_idx]}  # fmt: skip

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


_GROUPS: dict[tuple, np.ndarray] = {}
"""Groups already found in this process (the main job prepares the same split several times)."""


def prepare(cfg: Config) -> Prepared:
    dc = cfg.data
    split = data.load_split(dc.root, "train", on_bad_file=dc.on_bad_file, cache_dir=dc.cache_dir or None)
    key = (tuple(split.files), dc.near_dup_corr, dc.flickr_id_window, int(split.images[..., ::8, ::8].sum()))
    if key not in _GROUPS:
        _GROUPS.clear()  # one split at a time is all a process needs
        _GROUPS[key] = data.find_groups(split.files, split.images, dc.near_dup_corr, dc.flickr_id_window)
    groups, labels = _GROUPS[key], split.labels.numpy()
    src = data.source_holdout(split.files, labels, groups, dc.source_val, dc.source_ranges)
    rest = np.setdiff1d(np.arange(len(labels)), src)
    tr, va = data.group_split(labels[rest], groups[rest], dc.val_folds, dc.val_fold, dc.split_seed)
    tr, va = rest[tr], rest[va]
    if cfg.train.limit_train:
        rng = np.random.default_rng(cfg.train.seed)
        tr = rng.permutation(tr)[: cfg.train.limit_train]
        va = rng.permutation(va)[: max(1, cfg.train.limit_train // 4)]
        src = rng.permutation(src)[: max(1, cfg.train.limit_train // 4)]
    return Prepared(split, groups, np.sort(tr), np.sort(va), np.sort(src), dc.source_val)


def data_config_of(ckpt: dict, root: Path | str | None = None, data_overrides: list[str] = ()) -> Config:
    """A checkpoint's config with the data root and the `data.*` settings a command gives."""
    return Config.from_dict(ckpt["config"]).override([*data_overrides, *([f"data.root={root}"] if root else [])])


def checkpoint_split(
    ckpt: dict, path: Path | str, root: Path | str | None = None, data_overrides: list[str] = ()
) -> tuple[Config, Prepared]:
    """The split the checkpoint (read from `path`) was trained on, at `root` when given, with `data_overrides`; its
    classes checked against the data's (`CheckpointError` naming `path` when they differ)."""
    cfg = data_config_of(ckpt, root, data_overrides)
    return cfg, prepared_for(cfg, ckpt["classes"], path)


def prepared_for(cfg: Config, classes: list[str], path: Path | str) -> Prepared:
    """`cfg`'s split, its classes checked against a checkpoint's (`CheckpointError` naming `path` when they differ)."""
    prep = prepare(cfg)
    check_classes(classes, prep.split.classes, path)
    return prep


def train_split(ckpt: dict, root: Path | str | None = None) -> data.Split:
    """The train split of `root`, or of the data the checkpoint's model was trained on."""
    cfg = Config.from_dict(ckpt["config"])
    return data.load_split(root or cfg.data.root, "train", cache_dir=cfg.data.cache_dir or None)
