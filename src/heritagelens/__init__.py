"""HeritageLens: recognise architectural heritage elements and show what the network has learned.

The Python API, for notebooks (each name's docstring is where it is defined; the README has an example):

- recipes and training: `Config`, `preset`, `train` (one training run into a folder, returning a `Trained`), `run`
  (the main job)
- models and data: `load_model`, `temperature`, `load_split`, `decode`
- predictions: `predict_logits`, `probabilities` (calibrated), `evaluate`, `calibrate`
- the deconvnet: `project` (Zeiler & Fergus's projection), `top_activations` (figure 2's top 9 per channel),
  `explain` (one image's deconvnet, saliency, guided backprop, Grad-CAM and occlusion maps)
- class images: `class_images`, `dream_preset`, `image_stats`, `score_folder` (scored by the judges)

Names are imported on first use, so that `import heritagelens` (and `heritagelens --help`) stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "Config": "config",
    "preset": "config",
    "train": "train.runs:train_run",
    "run": "jobs.pipeline:main_job",
    "Trained": "model.trained",
    "load_model": "model.checkpoint",
    "temperature": "model.checkpoint",
    "load_split": "data.dataset",
    "decode": "model.inference",
    "predict_logits": "model.inference",
    "probabilities": "model.inference",
    "evaluate": "jobs.evaluation:evaluate_checkpoint",
    "calibrate": "jobs.evaluation:calibrate_checkpoint",
    "project": "explain.deconvnet",
    "top_activations": "explain.deconvnet",
    "explain": "explain.views",
    "class_images": "dream",
    "dream_preset": "dream",
    "image_stats": "dream",
    "score_folder": "jobs.gallery",
}
"""Public name -> 'module' (the same name there) or 'module:name'."""

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'heritagelens' has no attribute '{name}'")
    module, _, attr = _API[name].partition(":")
    value = getattr(importlib.import_module(f".{module}", __name__), attr or name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
