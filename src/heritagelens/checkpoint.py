"""Checkpoints: one plain dict of tensors and plain values, written atomically, read with `weights_only=True`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Config, ConfigError
from .io import atomic_save, safe_load
from .models import HeritageCNN, build_model
from .train import TrainState, new_state

FORMAT = "heritagelens-checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """A file that is not a usable HeritageLens checkpoint; the message names the file and the problem."""


def save_checkpoint(path: Path | str, state: TrainState, cfg: Config, classes: list[str], **extra: Any) -> Path:
    """Write the model (and, for resuming, optimizer and averaged weights) with its config and class names."""
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "classes": list(classes),
        "config": cfg.to_dict(),
        "epoch": state.epoch,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        **extra,
    }
    return atomic_save(ckpt, path)


def checkpoint_file(path: Path | str) -> Path:
    """The file a checkpoint path names: itself, or a run folder's last.pt (else best.pt)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        for name in ("last.pt", "best.pt"):  # the final weights, as the main job reports them
            if (path / name).exists():
                return path / name
        raise CheckpointError(f"{path}: run folder without best.pt or last.pt")
    return path


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """The checkpoint dict, checked to be ours; raises `CheckpointError` otherwise."""
    path = checkpoint_file(path)
    try:
        ckpt = safe_load(path)
    except Exception as e:  # pickle errors, zip errors, refused globals: all mean "not a checkpoint we can read"
        raise CheckpointError(f"{path}: not a HeritageLens checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a HeritageLens checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint format {ckpt['version']} is newer than this HeritageLens reads")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: Path | str = "checkpoint", averaged: bool = True) -> HeritageCNN:
    """The model described by the checkpoint's config, with its weights (the averaged ones when present)."""
    try:
        cfg = Config.from_dict(ckpt["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: checkpoint config unreadable ({e})") from None
    model = build_model(cfg.model, len(ckpt["classes"]))
    weights = ckpt["model"]
    if averaged and ckpt.get("ema"):
        weights = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({first})") from None
    return model.eval()


def run_folder(path: Path | str) -> Path:
    """The run folder of a checkpoint path: the path itself when it is a folder, else the file's folder."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def load_model(path: Path | str) -> tuple[HeritageCNN, list[str], dict[str, Any]]:
    """(model in eval mode, class names, checkpoint dict) from a checkpoint file or run folder."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, path), list(ckpt["classes"]), ckpt


def resume_state(ckpt: dict[str, Any], cfg: Config, path: Path | str) -> TrainState:
    """The training state saved in `ckpt`, ready to continue."""
    model = model_from_checkpoint(ckpt, path, averaged=False).train()
    state = new_state(model, cfg.train)
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.ema is not None and ckpt.get("ema"):
        state.ema.load_state_dict(ckpt["ema"])
    state.epoch = int(ckpt["epoch"])
    return state


def temperature(ckpt: dict[str, Any], tta: bool) -> float | None:
    """The temperature `heritagelens calibrate` fitted for this way of predicting (None before calibration)."""
    cal = (ckpt.get("calibration") or {}).get("tta" if tta else "plain")
    return float(cal["temperature"]) if cal else None


def check_classes(ckpt_classes: list[str], data_classes: list[str], path: Path | str) -> None:
    if list(ckpt_classes) != list(data_classes):
        raise CheckpointError(
            f"{path}: checkpoint classes ({', '.join(ckpt_classes)}) differ from the data's ({', '.join(data_classes)})"
        )
