"""Predictions without PyTorch: an exported ONNX graph under onnxruntime, and a model folder's graph when its card
records one. A `predict` on one photo then starts in a fraction of a second instead of waiting on PyTorch's import.

The graph takes what the PyTorch model takes, float32 pixels 0..255 shaped (batch, 3, 64, 64) RGB, and returns
logits (batch, classes); normalisation is inside it. The class names, the input contract, the calibration temperature
and, when test-time augmentation is baked in, that fact travel in the file's metadata.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from pathlib import Path

import numpy as np

from ..errors import HeritageLensError
from ..files import SpecialFileError, regular_size
from .card import MAX_WEIGHTS, MODEL_ONNX, CheckpointError, check_class_names, model_card, valid_temperature

INPUT = "images"
OUTPUT = "logits"


RUN_SECONDS = 120.0
"""The longest one batch may take in an exported graph (a HeritageLens model takes milliseconds)."""


class ExportError(HeritageLensError):
    """The export failed, or an .onnx file is not one of ours."""


class OnnxClassifier:
    """An exported model under onnxruntime (CPU): class names from the file, logits for uint8 images."""

    def __init__(self, path: Path | str, model: bytes | None = None):
        """Load `path`, or with `model` those bytes (then `path` only names them in messages)."""
        import onnxruntime as ort

        path = Path(path)
        if model is None and not path.exists():
            raise ExportError(f"{path}: no such file")
        try:
            if model is None:
                regular_size(path, MAX_WEIGHTS)
        except SpecialFileError as e:
            raise ExportError(f"{path}: {e}: not read") from None
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 4  # its failures become our one line, not its log on stderr
            self.session = ort.InferenceSession(model or str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own classes for every kind of bad file
            raise ExportError(f"{path}: not an ONNX model onnxruntime can load ({str(e)[:120]})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if "heritagelens.classes" not in props:
            raise ExportError(f"{path}: an ONNX model, but not one exported by HeritageLens (no class names)")
        try:
            classes = json.loads(props["heritagelens.classes"])
            self.tta: bool = bool(json.loads(props.get("heritagelens.tta", "false")))
            self.temperature: float = float(json.loads(props.get("heritagelens.temperature", "1.0")))
        except (ValueError, TypeError, RecursionError):
            raise ExportError(f"{path}: its HeritageLens metadata is unreadable") from None
        try:
            self.classes: list[str] = check_class_names(classes, path)
        except CheckpointError as e:
            raise ExportError(str(e)) from None
        if not valid_temperature(self.temperature):
            t = self.temperature
            raise ExportError(f"{path}: its calibration temperature is {t!r}, not a fitted one (0.05 to 20): refused")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if (
            [i.name for i in inputs] != [INPUT]
            or inputs[0].type != "tensor(float)"
            or list(inputs[0].shape[1:]) != [3, 64, 64]
            or len(outputs) != 1
            or outputs[0].name != OUTPUT
            or outputs[0].type != "tensor(float)"
            or outputs[0].shape[-1] != len(self.classes)
        ):
            raise ExportError(f"{path}: its inputs or outputs are not those of a HeritageLens export")
        self.path = path

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits (N, classes) for uint8 images (N, 3, 64, 64), as an array or a CPU tensor."""
        x = np.asarray(images, dtype=np.float32)
        out = [self._run(x[s : s + batch_size]) for s in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:
        """One batch through the graph, stopped after `RUN_SECONDS` (a graph may loop nearly without end); what the
        graph gives checked to be a finite logit per class and image."""
        import onnxruntime as ort

        options = ort.RunOptions()
        options.log_severity_level = 4
        timer = threading.Timer(RUN_SECONDS, lambda: setattr(options, "terminate", True))
        timer.start()
        try:
            (z,) = self.session.run([OUTPUT], {INPUT: x}, options)
        except Exception as e:  # onnxruntime's own classes: out of memory, a bad node, a terminated run
            stopped = options.terminate
            why = f"stopped after {RUN_SECONDS} s" if stopped else str(e).splitlines()[0][:160] if str(e) else ""
            raise ExportError(f"{self.path}: the graph failed on {len(x)} image(s) ({why})") from None
        finally:
            timer.cancel()
        z = np.asarray(z)
        if z.shape != (len(x), len(self.classes)) or not np.isfinite(z).all():
            raise ExportError(f"{self.path}: the graph gave {z.shape} values, not a finite logit per class and image")
        return z

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes), float64: the softmax of the logits divided by the file's temperature
        (calibrated when the exported model was), as `inference.probabilities` computes them."""
        z = self.logits(images).astype(np.float64) / self.temperature
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def folder_classifier(folder: Path | str) -> OnnxClassifier | None:
    """The model folder's graph under onnxruntime, once the file is the one its card records (SHA-256) and has the
    card's classes; None when the card records no graph or onnxruntime is not installed (PyTorch runs the weights)."""
    card = model_card(folder)
    if not isinstance(card.get("onnx"), dict) or importlib.util.find_spec("onnxruntime") is None:
        return None
    path = Path(folder) / MODEL_ONNX
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: model graph unreadable ({type(e).__name__}: {e})") from None
    if hashlib.sha256(blob).hexdigest() != card["onnx"].get("sha256"):
        raise CheckpointError(f"{path}: model graph not the file its card records (SHA-256 differs)")
    model = OnnxClassifier(path, blob)
    if model.classes != card.get("classes") or model.tta:
        raise CheckpointError(f"{path}: model graph not the one-view model of its card's classes")
    return model
