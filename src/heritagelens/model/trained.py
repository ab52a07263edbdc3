"""A trained model as the jobs take it: the model, its classes, the config it was trained with, the checkpoint it
came from and, once asked for, the split it was trained on, prepared once for every job that needs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..data import dataset
from ..data.split import Prepared, data_config_of, prepare, train_split
from .card import check_classes
from .checkpoint import load_model


@dataclass
class Trained:
    """A model in eval mode (its averaged weights when it has them) with what the jobs need beside it.

    `config` is the checkpoint's config with any data root or `data.*` settings the command gave; `own_data` says
    whether the data is still the one it was trained on (held-out figures stored in the checkpoint apply only then).
    `prep` is the split, prepared on first use (`prepared`) or handed over by the training that made the model."""

    model: torch.nn.Module
    classes: list[str]
    config: Config
    ckpt: dict[str, Any]
    path: Path
    prep: Prepared | None = None
    own_data: bool = True

    @classmethod
    def load(
        cls,
        checkpoint: Path | str,
        root: Path | str | None = None,
        data_overrides: list[str] = (),
        prep: Prepared | None = None,
    ) -> Trained:
        """The model of a checkpoint file, run folder or model folder; its data at `root` with `data_overrides`
        (`data.*` assignments) when given; `prep`, its split when already prepared."""
        model, classes, ckpt = load_model(checkpoint)
        cfg = data_config_of(ckpt, root, data_overrides)
        return cls(model, classes, cfg, ckpt, Path(checkpoint), prep, own_data=root is None)

    def prepared(self) -> Prepared:
        """The split it was trained on (prepared now, once), its classes checked against the model's."""
        if self.prep is None:
            prep = prepare(self.config)
            check_classes(self.classes, prep.split.classes, self.path)
            self.prep = prep
        return self.prep

    def train_split(self) -> dataset.Split:
        """The train split's images: the prepared split's, or decoded alone when no job needed it divided."""
        if self.prep is not None:
            return self.prep.split
        split = train_split(self.ckpt, self.config.data.root)
        check_classes(self.classes, split.classes, self.path)
        return split


def trained(model: Trained | Path | str, root: Path | str | None = None) -> Trained:
    """`model` itself, or the model of the checkpoint it names, its data at `root` when given."""
    return model if isinstance(model, Trained) else Trained.load(model, root)
