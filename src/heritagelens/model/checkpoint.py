"""Checkpoints: one plain dict of tensors and plain values, written atomically, read with `weights_only=True`.

A model folder is the other way a model is stored: its weights as safetensors (`model.safetensors`) and a card
(`card.json`) holding its config, classes, calibration and how it was made. It serves predictions only (no optimizer
state, nothing to resume), and the package ships one: `BUNDLED`, used by every command given no checkpoint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from ..config import Config, ConfigError
from ..files import SpecialFileError, atomic_write_bytes, atomic_write_json, file_sha256, regular_size, safe_load
from .card import (
    MAX_WEIGHTS,
    MODEL_CARD,
    MODEL_FORMAT,
    MODEL_WEIGHTS,
    CheckpointError,
    check_class_names,
    is_model_folder,
    model_card,
    valid_temperature,
)
from .network import HeritageCNN, build_model

FORMAT = "heritagelens-checkpoint"
VERSION = 1


def checkpoint_file(path: Path | str) -> Path:
    """The file a checkpoint path names: itself, or a run folder's last.pt (else best.pt)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if is_model_folder(path):
        return path
    if path.is_dir():
        for name in ("last.pt", "best.pt"):  # the final weights, as the main job reports them
            if (path / name).exists():
                return path / name
        raise CheckpointError(f"{path}: run folder without best.pt or last.pt")
    return path


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """The checkpoint dict, checked to be ours; raises `CheckpointError` otherwise."""
    path = checkpoint_file(path)
    if is_model_folder(path):
        return read_model_folder(path)
    try:
        regular_size(path, MAX_WEIGHTS)
        ckpt = safe_load(path)
    except SpecialFileError as e:
        raise CheckpointError(f"{path}: {e}: not read") from None
    except Exception as e:  # pickle errors, zip errors, refused globals: all mean "not a checkpoint we can read"
        raise CheckpointError(f"{path}: not a HeritageLens checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a HeritageLens checkpoint (no '{FORMAT}' marker)")
    return checked(ckpt, path)


def checked(ckpt: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """`ckpt` once it has what every use of a checkpoint reads: a known version, a config, classes and weights."""
    version = ckpt.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version!r} is not one this HeritageLens reads")
    for key in ("config", "classes", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: not a usable HeritageLens checkpoint (no '{key}' entry)")
    check_class_names(ckpt["classes"], path)
    check_calibration(ckpt.get("calibration"), path)
    config_of(ckpt, path)
    return ckpt


def config_of(ckpt: dict[str, Any], path: Path | str) -> Config:
    """The checkpoint's config, or `CheckpointError` naming the file when it is not one."""
    try:
        return Config.from_dict(ckpt["config"])
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path}: checkpoint config unreadable ({str(e)[:160]})") from None


def check_calibration(calibration: Any, path: Path | str) -> None:
    """Refuse stored temperatures that would make probabilities NaN or invert the ranking."""
    if calibration is None:
        return
    if not isinstance(calibration, dict):
        raise CheckpointError(f"{path}: its calibration entry is unreadable")
    for name, cal in calibration.items():
        t = cal.get("temperature") if isinstance(cal, dict) else None
        if not valid_temperature(t):
            raise CheckpointError(
                f"{path}: calibration temperature ({name}) is {t!r}, not a fitted one (0.05 to 20): file refused"
            )


def model_from_checkpoint(ckpt: dict[str, Any], path: Path | str = "checkpoint", averaged: bool = True) -> HeritageCNN:
    """The model described by the checkpoint's config, with its weights (the averaged ones when present)."""
    cfg = config_of(ckpt, path)
    weights = ckpt["model"]
    if averaged and ckpt.get("ema"):
        weights = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    try:
        with torch.device("meta"):  # the shapes the config implies, allocating nothing: a config may be hostile
            skeleton = build_model(cfg.model, len(ckpt["classes"])).state_dict()
    except (RuntimeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{path}: its config describes a model that cannot be built ({str(e)[:80]})") from None
    problem = shape_mismatch(skeleton, weights)
    if problem:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({problem})")
    model = build_model(cfg.model, len(ckpt["classes"]))
    model.load_state_dict(weights)
    return model.eval()


def shape_mismatch(expected: dict[str, torch.Tensor], weights: Any) -> str:
    """The first way `weights` differ from `expected` in names or shapes ('' when they fit)."""
    if not isinstance(weights, dict):
        return "the weights are not a table of tensors"
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing:
        return f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    if unexpected:
        return f"unexpected {unexpected[0]}" + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
    for k, v in expected.items():
        w = weights[k]
        if not isinstance(w, torch.Tensor):
            return f"{k} is not a tensor"
        if w.shape != v.shape:
            return f"{k}: shape {tuple(w.shape)} in the file, {tuple(v.shape)} in the model"
    return ""


def run_folder(path: Path | str) -> Path:
    """The run folder of a checkpoint path: the path itself when it is a folder, else the file's folder."""
    path = Path(path)
    return path if path.is_dir() else path.parent


ROBUST_RUN = "robust"
"""The sub-folder of a run folder where the main job trains the robust model its class images come from."""


def robust_checkpoint(run: Path | str) -> Path:
    """The robust model's checkpoint beside a run's standard one (it may not exist)."""
    return run_folder(run) / ROBUST_RUN / "last.pt"


def load_model(path: Path | str) -> tuple[HeritageCNN, list[str], dict[str, Any]]:
    """(model in eval mode, class names, checkpoint dict) from a checkpoint file or run folder."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, path), list(ckpt["classes"]), ckpt


def temperature(ckpt: dict[str, Any], tta: bool) -> float | None:
    """The temperature `heritagelens calibrate` fitted for this way of predicting (None before calibration)."""
    cal = (ckpt.get("calibration") or {}).get("tta" if tta else "plain")
    return float(cal["temperature"]) if cal else None


# ---------------------------------------------------------------------------------------------------- model folders


def write_weights(model: torch.nn.Module, path: Path | str) -> str:
    """The model's weights as a safetensors file, written atomically; returns the file's SHA-256."""
    from safetensors.torch import save

    blob = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    atomic_write_bytes(blob, path)
    return hashlib.sha256(blob).hexdigest()


def read_weights(path: Path | str, sha256: str, what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, once its SHA-256 is the one recorded (safetensors holds no code)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        regular_size(path, MAX_WEIGHTS)
        if file_sha256(path) != sha256:
            raise CheckpointError(f"{path}: {what} not the file its card records (SHA-256 differs)")
        return load_file(path)
    except SpecialFileError as e:
        raise CheckpointError(f"{path}: {what} {e}: not read") from None
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: {what} unreadable ({type(e).__name__}: {e})") from None


def write_model_folder(checkpoint: Path | str, out: Path | str, **card: Any) -> Path:
    """The checkpoint's model (its averaged weights) as a model folder `out`, with `card` entries (how it was made,
    what it scores) beside what predictions need; the card is written last, so it never names missing weights."""
    ckpt = read_checkpoint(checkpoint)
    out = Path(out)
    sha = write_weights(model_from_checkpoint(ckpt, checkpoint), out / MODEL_WEIGHTS)
    where = Config().data  # the data folders of the machine that trained it mean nothing on another
    config = Config.from_dict(ckpt["config"]).override([f"data.root={where.root}", f"data.cache_dir={where.cache_dir}"])
    return atomic_write_json(
        {
            "format": MODEL_FORMAT,
            "version": VERSION,
            "sha256": sha,
            "classes": ckpt["classes"],
            "config": config.to_dict(),
            "calibration": ckpt.get("calibration"),
            **({"adapted_from": ckpt["adapted_from"]} if ckpt.get("adapted_from") else {}),
            **card,
        },
        out / MODEL_CARD,
    )


def read_model_folder(folder: Path | str) -> dict[str, Any]:
    """A model folder as a checkpoint dict (no optimizer: it serves predictions), its card under 'card'."""
    card = model_card(folder)
    weights = read_weights(Path(folder) / MODEL_WEIGHTS, card["sha256"], "model weights")
    ckpt = {"format": FORMAT, "model": weights, "card": card, "ema": None, "epoch": None}
    ckpt |= {k: card.get(k) for k in ("version", "classes", "config", "calibration", "adapted_from")}
    return checked(ckpt, Path(folder) / MODEL_CARD)
