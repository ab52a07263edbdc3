"""Model folders as their cards describe them, without PyTorch: the card (what a model is, how it was made, what it
scores), the files beside it, and the folder the package ships (`BUNDLED`). Reading the weights is `checkpoint`'s."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..data.classes import class_name_problem
from ..errors import HeritageLensError
from ..files import SpecialFileError, read_regular

MODEL_FORMAT = "heritagelens-model"
MODEL_CARD, MODEL_WEIGHTS, MODEL_ONNX = "card.json", "model.safetensors", "model.onnx"
MAX_CARD, MAX_WEIGHTS = 64 << 20, 4 << 30
"""The largest card and weights file read (the bundled model's are 0.2 MB and 4.7 MB)."""
BUNDLED = Path(__file__).parents[1] / "bundled"
"""The model that ships with the package: the default recipe trained by `bench/bundled.py` (see its card)."""


class CheckpointError(HeritageLensError):
    """A file that is not a usable HeritageLens checkpoint; the message names the file and the problem."""


TEMPERATURES = (0.05, 20.0)
"""The temperatures calibration fits between (`calibration.fit_temperature`): a stored one outside them was never
fitted (1e-320 makes every probability NaN, 1e300 makes them all equal) and the file holding it is refused."""


def valid_temperature(t: Any) -> bool:
    low, high = TEMPERATURES
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and low <= t <= high


def check_class_names(classes: Any, path: Path | str) -> list[str]:
    """`classes` once they are a list of distinct safe names (`class_name_problem`); raises `CheckpointError`."""
    if not isinstance(classes, list) or not classes:
        raise CheckpointError(f"{path}: its class names are not a list of names")
    for c in classes:
        problem = class_name_problem(c)
        if problem:
            raise CheckpointError(f"{path}: class name {str(c)[:60]!r} {problem}: refused")
    folded = [c.casefold() for c in classes]
    if len(set(folded)) != len(folded):
        twice = next(c for c in classes if folded.count(c.casefold()) > 1)
        raise CheckpointError(f"{path}: class name {twice!r} appears twice (letter case aside): refused")
    return classes


def check_classes(ckpt_classes: list[str], data_classes: list[str], path: Path | str) -> None:
    if list(ckpt_classes) != list(data_classes):
        raise CheckpointError(
            f"{path}: checkpoint classes ({', '.join(ckpt_classes)}) differ from the data's ({', '.join(data_classes)})"
        )


def is_model_folder(path: Path | str) -> bool:
    card = Path(path) / MODEL_CARD
    return Path(path).is_dir() and (card.exists() or card.is_symlink()) and not card.is_dir()  # a FIFO: refused later


def model_card(folder: Path | str) -> dict[str, Any]:
    """The card of a model folder, checked to be one."""
    path = Path(folder) / MODEL_CARD
    try:
        card = json.loads(read_regular(path, MAX_CARD).decode("utf-8"))
    except SpecialFileError as e:
        raise CheckpointError(f"{path}: {e}: not read") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable model card ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(card, dict) or card.get("format") != MODEL_FORMAT or not isinstance(card.get("sha256"), str):
        raise CheckpointError(f"{path}: not a HeritageLens model card (no '{MODEL_FORMAT}' marker)")
    return card


def describe_model(path: Path | str) -> str:
    """One line naming a model folder by its card: recipe, seed and validation accuracy."""
    card = model_card(path)
    made, figures = card.get("made_by"), card.get("figures")
    made = made if isinstance(made, dict) else {}
    val = figures.get("val") if isinstance(figures, dict) else None
    accuracy = val.get("accuracy") if isinstance(val, dict) else None
    good = isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool) and 0 <= accuracy <= 1
    acc = f", {accuracy:.1%} on its group-aware validation split" if good else ""
    return f"{path} ({made.get('recipe', 'a')} recipe, seed {made.get('seed', '?')}{acc})"
