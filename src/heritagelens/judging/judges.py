"""Judges: models trained independently of the one being visualized, which score class images
(`heritagelens.judging.scores`).

A class image is only worth showing if it looks like its class. "Another model recognises it" proves little when
that model shares data and design with the one being visualized (adversarial-like patterns transfer), so the panel
holds two adversarially robust models, whose features are perceptually aligned (Santurkar et al. 2019): a small
ResNet (another architecture than the CNN being visualized) and a CNN of the visualized family with its own seed. What
they score and how is `heritagelens.judging.scores`; this module holds the panel: its recipes, keys, cache and
shipped copy.

Judges are trained once per dataset and split and cached by a content key: the hash of their recipe and of the
training files' names and sizes. A cached judge is a run folder; `last.pt` is read with `weights_only=True`.

For the AHE64 train split with the default validation split, the package ships the panel (`heritagelens/panel/`:
safetensors weights and `panel.json`, the card that says which command trained them, on which data key, and how
accurate they are), the way FID ships one fixed Inception network: scores then compare across runs and machines, and
no judge is trained. A judge is taken from there only when its content key is the one the card records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ROBUST, SGD, Config, DataConfig
from ..data import dataset
from ..data.split import Prepared, prepare
from ..errors import HeritageLensError
from ..files import atomic_write_json
from ..model.card import check_class_names
from ..model.checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint, read_weights, write_weights
from ..train.runs import train_run
from .scores import gallery_scores, real_images

JUDGES: dict[str, list[str]] = {
    "robust-resnet": [*ROBUST, "model.arch=resnet", "model.depths=[1,1,1,1]", "train.epochs=12", "train.seed=1001"],
    "robust-cnn": [*ROBUST, "train.epochs=12", "train.seed=1002"],
}
"""The panel: name -> overrides of the default recipe. Seeds differ from any model a user trains by default. Both
are adversarially trained: a ResNet trained the standard way recognised naive gradient-ascent images made on the
standard CNN as often as real validation images, so it was no judge (figures in BENCHMARKS.md)."""


PANEL_DIR = Path(__file__).parents[1] / "panel"
"""The shipped panel: `panel.json` and one `<judge>.safetensors` per judge."""

PANEL_VERSION = 1
"""Version of the shipped panel; scores made with different versions do not compare."""


class JudgeError(HeritageLensError):
    """Judges that are missing and may not be trained, or a judge folder that does not hold a usable judge."""


@dataclass
class Judge:
    name: str
    model: nn.Module
    classes: list[str]
    path: Path
    config: dict
    """The judge's recipe (`Config.to_dict()`)."""


def judge_config(name: str, data_cfg: DataConfig, extra: list[str] = ()) -> Config:
    """The recipe of judge `name` on the data and validation split of `data_cfg` (so that the validation images
    the ceiling is measured on are unseen by every judge); `extra` overrides come last (tests use tiny judges)."""
    overrides = [*SGD, *JUDGES[name], "train.snapshot_epochs=[]", *extra]  # SGD: a default since moved, see ROBUST
    return Config(data=judge_data(data_cfg)).override(overrides)


def judge_data(data_cfg: DataConfig) -> DataConfig:
    """The split the judges train on: the group-aware one alone, over all of train/ (no source hold-out, as the
    shipped panel was made); its validation images are the real images galleries are scored beside."""
    return dataclasses.replace(data_cfg, source_val="none")


def judges_unseen(data_cfg: DataConfig, like: Prepared | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels no judge trained on (their validation split): the real images galleries are scored beside.
    `like` is a split prepared from the same data, whose images and groups are reused (see `prepare`)."""
    prep = prepare(Config(data=judge_data(data_cfg)), like)
    return prep.split.images[prep.val_idx], prep.split.labels[prep.val_idx]


def judge_key(name: str, data_cfg: DataConfig, extra: list[str] = ()) -> str:
    """Content key of a judge, for the cache and the shipped panel alike: its name and overrides, the split settings
    and the training files' names and sizes (not where they sit). It leaves out the defaults the overrides apply to:
    those may move on (a new setting, a new default recipe) without retraining a judge, whose checkpoint or card
    holds its whole recipe; a deliberate change of the judges is a new `PANEL_VERSION`."""
    # where the data sits; what judges never hold out or see
    unkeyed = ("root", "cache_dir", "source_val", "source_share", "outside")
    split = {k: v for k, v in dataclasses.asdict(data_cfg).items() if k not in unkeyed and (v or k != "classes")}
    d = {"panel": PANEL_VERSION, "judge": name, "recipe": [*JUDGES[name], *extra], "split": split}
    return _with_files(hashlib.sha256(json.dumps(d, sort_keys=True).encode()), data_cfg)


def _with_files(h, data_cfg: DataConfig) -> str:
    root = Path(data_cfg.root)
    files, labels = dataset.list_files(root, "train", dataset.list_classes(root, "train"))
    for f, y in zip(files, labels):
        h.update(f"{f.relative_to(root)}|{y}|{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def default_judges_dir(data_cfg: DataConfig) -> Path:
    base = Path(data_cfg.cache_dir) if data_cfg.cache_dir else dataset.default_cache_dir(Path(data_cfg.root))
    return base / "judges"


def judge_folder(name: str, data_cfg: DataConfig, judges_dir: Path | str, extra: list[str] = (), key: str = "") -> Path:
    """Where judge `name` is cached; `key` when already computed (`judge_key` lists every training file)."""
    return Path(judges_dir) / f"{name}-{key or judge_key(name, data_cfg, extra)}"


def load_judge(name: str, folder: Path | str) -> Judge:
    """A finished judge from its run folder (`last.pt`, read with `weights_only=True`)."""
    path = Path(folder) / "last.pt"
    ckpt = read_checkpoint(path)
    cfg = Config.from_dict(ckpt["config"])
    if ckpt["epoch"] < cfg.train.epochs:
        raise JudgeError(f"{path}: judge '{name}' stopped at epoch {ckpt['epoch']} of {cfg.train.epochs}")
    return Judge(name, model_from_checkpoint(ckpt, path), list(ckpt["classes"]), path, ckpt["config"])


def panel_card(panel_dir: Path | str | None = None) -> dict:
    """The card of the shipped panel, or of the one in `panel_dir` (empty when there is none)."""
    path = Path(panel_dir or PANEL_DIR) / "panel.json"
    if not path.exists():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise JudgeError(f"{path}: unreadable panel card ({type(e).__name__}: {e})") from None
    return card if isinstance(card, dict) and card.get("version") == PANEL_VERSION else {}


def shipped_judge(name: str, key: str, panel_dir: Path | str | None = None) -> Judge | None:
    """Judge `name` from the shipped panel when the card records content `key` (`judge_key`) for it, else None."""
    entry = panel_card(panel_dir).get("judges", {}).get(name)
    if not entry or entry.get("key") != key:
        return None
    path = Path(panel_dir or PANEL_DIR) / entry["file"]
    try:
        weights = read_weights(path, entry.get("sha256"), f"shipped judge '{name}'")
    except CheckpointError as e:
        raise JudgeError(str(e)) from None
    ckpt = {"config": entry["config"], "classes": entry["classes"], "model": weights}
    try:
        check_class_names(entry["classes"], path)
    except CheckpointError as e:
        raise JudgeError(str(e)) from None
    return Judge(name, model_from_checkpoint(ckpt, path), list(entry["classes"]), path, entry["config"])


def write_panel(
    panel: dict[str, Judge],
    accuracy: dict[str, float],
    key: dict[str, str],
    out: Path | str,
    command: str,
    machine: str,
) -> Path:
    """Ship `panel`: each judge's weights as `<name>.safetensors` and the card `panel.json` beside them (written last,
    so that a card never names weights not yet written), with its content `key`, validation `accuracy`, the
    `command` that trained it and the `machine` it ran on."""
    out = Path(out)
    judges = {}
    for name, judge in panel.items():
        file = f"{name}.safetensors"
        sha = write_weights(judge.model, out / file)
        judges[name] = {
            "file": file,
            "sha256": sha,
            "key": key[name],
            "classes": judge.classes,
            "config": judge.config,
            "val_accuracy": accuracy[name],
        }
    card = {"version": PANEL_VERSION, "command": command, "machine": machine, "judges": judges}
    return atomic_write_json(card, out / "panel.json")


def ensure_judges(
    data_cfg: DataConfig,
    judges_dir: Path | str | None = None,
    train: bool = True,
    extra: list[str] = (),
    progress: bool = True,
    log=print,
    like: Prepared | None = None,
) -> dict[str, Judge]:
    """The panel for this dataset and split: the shipped one when its content keys match, else loaded from
    `judges_dir` when cached, else trained there (an interrupted judge training resumes), or `JudgeError` when
    `train` is false."""

    judges_dir = Path(judges_dir) if judges_dir else default_judges_dir(data_cfg)
    panel = {}
    for name in JUDGES:
        key = judge_key(name, data_cfg, extra)
        judge = shipped_judge(name, key)
        if judge is not None:
            panel[name] = judge
            continue
        folder = judge_folder(name, data_cfg, judges_dir, extra, key)
        last = folder / "last.pt"
        if last.exists():
            try:
                panel[name] = load_judge(name, folder)
                continue
            except JudgeError:
                pass  # stopped before its last epoch: resumed below
        if not train:
            raise JudgeError(f"{folder}: judge '{name}' not trained yet (it trains once; BENCHMARKS.md gives how long)")
        log(f"training judge '{name}' into {folder} (once per dataset)")
        train_run(judge_config(name, data_cfg, extra), folder, resume=last.exists(), progress=progress, like=like)
        panel[name] = load_judge(name, folder)
    return panel


def score_sets(
    sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
    data_cfg: DataConfig,
    classes: list[str],
    per_class: int,
    seed: int = 0,
    judges_dir: Path | str | None = None,
    extra: list[str] = (),
    progress: bool = True,
    like: Prepared | None = None,
) -> tuple[dict[str, dict], dict[str, Judge]]:
    """Each named set of (images, intended classes) scored by the panel of `data_cfg`'s data (shipped, cached or
    trained now) beside `per_class` real images of each intended class that no judge trained on; and the panel.
    `like` is a split prepared from the same data (see `prepare`)."""
    panel = ensure_judges(data_cfg, judges_dir, extra=extra, progress=progress, like=like)
    intended = torch.cat([targets for _, targets in sets.values()]).unique()
    real = real_images(*judges_unseen(data_cfg, like), per_class, intended, seed)
    return gallery_scores(sets, real, panel, classes), panel
