"""Export for deployment: the classifier as one ONNX file that onnxruntime runs without PyTorch, and the small
predictor that runs it.

The graph takes what the PyTorch model takes, float32 pixels 0..255 shaped (batch, 3, 64, 64) RGB, and returns
logits (batch, classes); normalisation is inside it. The class names, the input contract and, when test-time
augmentation is baked in, that fact travel in the file's metadata, so the file alone is enough to classify.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .checkpoint import valid_temperature
from .errors import HeritageLensError
from .inference import tta_views

INPUT = "images"
OUTPUT = "logits"
OPSET = 18


class ExportError(HeritageLensError):
    """The export failed, or an .onnx file is not one of ours."""


class WithTTA(nn.Module):
    """The model averaged over the test-time views (image, mirror, both shifted), as one graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(v) for v in tta_views(x)]).mean(0)


def to_onnx(
    model: nn.Module, classes: list[str], tta: bool = False, source: str = "", temperature: float | None = None
) -> bytes:
    """The model (eval mode, float32) as ONNX bytes with a dynamic batch axis and our metadata (the calibration
    temperature among it, when there is one: the graph outputs raw logits, as the checks compare)."""
    import onnx

    net = WithTTA(model) if tta else model  # the caller's model, in eval mode and float32 as loaded
    example = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        f = Path(tmp) / "model.onnx"
        try:
            torch.onnx.export(
                net, (example,), f, input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET, dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False,
            )  # fmt: skip
        except Exception as e:  # the exporter raises many kinds; all mean the same to the user
            raise ExportError(f"the ONNX exporter failed ({type(e).__name__}: {str(e)[:200]})") from None
        proto = onnx.load(f)
    meta = {
        "heritagelens.classes": json.dumps(list(classes)),
        "heritagelens.input": "float32 RGB pixels 0..255, (batch, 3, 64, 64)",
        "heritagelens.tta": json.dumps(tta),
        "heritagelens.version": __version__,
        "heritagelens.source": source,
    }
    if temperature is not None:
        meta["heritagelens.temperature"] = json.dumps(temperature)
    onnx.helper.set_model_props(proto, meta)
    return proto.SerializeToString()


class OnnxClassifier:
    """An exported model under onnxruntime (CPU): class names from the file, logits for uint8 images."""

    def __init__(self, path: Path | str, model: bytes | None = None):
        """Load `path`, or with `model` those bytes (then `path` only names them in messages)."""
        import onnxruntime as ort

        path = Path(path)
        if model is None and not path.is_file():
            raise ExportError(f"{path}: no such file")
        try:
            self.session = ort.InferenceSession(model or str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own classes for every kind of bad file
            raise ExportError(f"{path}: not an ONNX model onnxruntime can load ({str(e)[:120]})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if "heritagelens.classes" not in props:
            raise ExportError(f"{path}: an ONNX model, but not one exported by HeritageLens (no class names)")
        try:
            self.classes: list[str] = [str(c) for c in json.loads(props["heritagelens.classes"])]
            self.tta: bool = bool(json.loads(props.get("heritagelens.tta", "false")))
            self.temperature: float = float(json.loads(props.get("heritagelens.temperature", "1.0")))
        except (ValueError, TypeError):
            raise ExportError(f"{path}: its HeritageLens metadata is unreadable") from None
        if not valid_temperature(self.temperature):
            t = self.temperature
            raise ExportError(f"{path}: its calibration temperature is {t!r}, not a finite positive number: refused")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if (
            [i.name for i in inputs] != [INPUT]
            or outputs[0].name != OUTPUT
            or outputs[0].shape[-1] != len(self.classes)
        ):
            raise ExportError(f"{path}: its inputs or outputs are not those of a HeritageLens export")

    def logits(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Logits (N, classes) for uint8 images (N, 3, 64, 64)."""
        x = np.asarray(images, dtype=np.float32)
        out = [self.session.run([OUTPUT], {INPUT: x[s : s + batch_size]})[0] for s in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def max_difference(model: nn.Module, classifier: OnnxClassifier, images: torch.Tensor) -> float:
    """Largest absolute difference between the PyTorch model's float32 logits and onnxruntime's on `images` (float32
    whatever the machine's chosen precision, as the graph is; in the memory layout chosen for this machine)."""
    from .precision import for_model

    net = WithTTA(model) if classifier.tta else model
    layout = for_model(model).memory_format
    with torch.no_grad():
        ref = net.eval().float()(images.float().contiguous(memory_format=layout)).numpy()
    return float(np.abs(classifier.logits(images) - ref).max())


def comparison_images(ckpt: dict, root: Path | str | None = None, n: int = 256) -> tuple[torch.Tensor, str]:
    """Up to `n` real images to compare an export on (from `root`, else the data the model was trained on), and
    what they are; 64 noise images when the model's data is gone."""
    from .data import DataError
    from .split import train_split

    try:
        split = train_split(ckpt, root)
    except DataError:
        if root:
            raise
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (64, 3, 64, 64), generator=g, dtype=torch.uint8), "64 noise images (no data)"
    idx = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(0))[:n]
    where = Path(root or ckpt["config"]["data"]["root"]) / "train"
    return split.images[idx], f"{len(idx)} images of {where}"
