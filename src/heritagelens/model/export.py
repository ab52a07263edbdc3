"""Export for deployment: the classifier as one ONNX file that onnxruntime runs without PyTorch (`runtime` runs it),
checked against PyTorch on real images before it is written; a model folder's graph beside its weights.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from .inference import tta_views
from .onnx_runner import INPUT, OUTPUT, ExportError, OnnxClassifier

OPSET = 18


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
                net,
                (example,),
                f,
                input_names=[INPUT],
                output_names=[OUTPUT],
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                verbose=False,
            )
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


def max_difference(model: nn.Module, classifier: OnnxClassifier, images: torch.Tensor) -> float:
    """Largest absolute difference between the PyTorch model's float32 logits and onnxruntime's on `images` (float32
    whatever the machine's chosen precision, as the graph is; in the memory layout chosen for this machine)."""
    from .precision import for_inference

    net = WithTTA(model) if classifier.tta else model
    with torch.no_grad():
        ref = net.eval().float()(for_inference(model).input(images.float())).numpy()
    return float(np.abs(classifier.logits(images) - ref).max())


def comparison_images(ckpt: dict, root: Path | str | None = None, n: int = 256) -> tuple[torch.Tensor, str]:
    """Up to `n` real images to compare an export on (from `root`, else the data the model was trained on), and
    what they are; 64 noise images when the model's data is gone."""
    from ..data.images import DataError
    from ..data.split import train_split

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


def checked_onnx(
    model: nn.Module,
    classes: list[str],
    ckpt: dict,
    *,
    tta: bool,
    temperature: float | None,
    source: str,
    root: Path | str | None = None,
    tolerance: float = 1e-4,
    name: Path | str = "model.onnx",
) -> tuple[bytes, float, str]:
    """The model as ONNX bytes once onnxruntime's logits match PyTorch's within `tolerance` on real images:
    (bytes, largest logit difference, the images compared on). Raises `ExportError` naming `name` otherwise."""
    blob = to_onnx(model, classes, tta=tta, source=source, temperature=temperature)
    images, what = comparison_images(ckpt, root)
    diff = max_difference(model, OnnxClassifier(name, blob), images)
    if not diff <= tolerance:
        raise ExportError(f"{name}: onnxruntime's logits differ from PyTorch's by {diff:.2e} (limit {tolerance})")
    return blob, diff, what


def write_folder_graph(folder: Path | str, root: Path | str | None = None, tolerance: float = 1e-4) -> dict:
    """A model folder's one-view model as `model.onnx` beside its weights, checked against PyTorch, then named on its
    card (SHA-256, largest logit difference, images compared on), so that `predict` runs it without loading PyTorch.
    The card is rewritten last: it never names a graph that is not there. Returns the card's new entry."""
    from ..files import atomic_write_bytes, atomic_write_json
    from .card import MODEL_CARD, MODEL_ONNX, model_card
    from .checkpoint import load_model, temperature

    folder = Path(folder)
    model, classes, ckpt = load_model(folder)
    blob, diff, what = checked_onnx(
        model,
        classes,
        ckpt,
        tta=False,
        temperature=temperature(ckpt, False),
        root=root,
        tolerance=tolerance,
        source=f"{folder.name}/model.safetensors sha256 {ckpt['card']['sha256']}",
        name=folder / MODEL_ONNX,
    )
    atomic_write_bytes(blob, folder / MODEL_ONNX)
    entry = {
        "sha256": hashlib.sha256(blob).hexdigest(),
        "max_logit_difference": float(f"{diff:.2e}"),
        "checked_on": what.replace(str(root), "<data>") if root else what,  # this machine's folders mean nothing
    }
    atomic_write_json(model_card(folder) | {"onnx": entry}, folder / MODEL_CARD)
    return entry
