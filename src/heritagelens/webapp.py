"""The explorer web app (`heritagelens serve CHECKPOINT`): classify an uploaded or picked image and see why, look at
what any channel responds to, and generate class images, in a browser.

Everything it shows comes from the same public functions as the CLI (`data.decode`, `train.predict_logits`,
`visualize.image_view`, `visualize.comparison`, `visualize.top9_figure`, `dream.class_images`); this module only
loads the model once, keeps what is slow to recompute (a layer's top activations over the dataset), and lays the
page out with Gradio. Problems with an upload become a message on the page, never a failed request.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from . import data
from .checkpoint import load_model
from .config import Config
from .deconvnet import TopK, top_activations
from .dream import DreamError, class_images, dream_preset, image_stats
from .figures import gallery
from .models import conv_layer_names
from .train import predict_logits
from .visualize import comparison, image_view, top9_figure

MAX_UPLOAD_MB = 25
PICKS_PER_CLASS = 3


@dataclass
class Classified:
    image: Image.Image | None
    """The image as the model sees it (64 px), shown large."""
    top5: dict[str, float] | None
    projections: Image.Image | None
    status: str


class Explorer:
    """One model (and, when the run has one, its robust sibling for class images) and its training data."""

    def __init__(self, checkpoint: Path | str, root: Path | str | None = None):
        self.checkpoint = Path(checkpoint)
        self.model, self.classes, ckpt = load_model(self.checkpoint)
        self.layers = conv_layer_names(self.model)
        run = self.checkpoint if self.checkpoint.is_dir() else self.checkpoint.parent
        robust = run / "robust" / "last.pt"
        self.dreamer, self.dreamer_name = (load_model(robust)[0], "the run's robust model") if robust.exists() else (
            self.model, "this model")  # fmt: skip
        cfg = Config.from_dict(ckpt["config"])
        self.root = Path(root or cfg.data.root)
        self.split = None
        if data.has_split(self.root, "train"):
            self.split = data.load_split(self.root, "train", classes=self.classes, cache_dir=cfg.data.cache_dir or None)
            self.stats = image_stats(self.split.images)
        self.tops: dict[str, TopK] = {}
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ the tabs

    def picks(self) -> list[str]:
        """A few training images per class to pick from (relative to the data root)."""
        if self.split is None:
            return []
        out = []
        for k in range(len(self.classes)):
            idx = (self.split.labels == k).nonzero().flatten()[:PICKS_PER_CLASS]
            out += [self.split.files[i] for i in idx.tolist()]
        return out

    def classify(self, path: str | None, picked: str | None = None) -> Classified:
        """Top-5 and the deconvnet projections of the strongest channels per layer, for an uploaded or picked image."""
        if not path and not picked:
            return Classified(None, None, None, "Upload an image or pick one.")
        path = path or str(self.root / picked)
        try:
            x = torch.from_numpy(data.decode(path))
        except data.DataError as e:
            return Classified(None, None, None, f"**Cannot use this file:** {problem(e, path)}")
        probs = torch.softmax(predict_logits(self.model, x[None], bf16=False), 1)[0]
        top = probs.topk(min(5, len(self.classes)))
        fig, _ = image_view(self.model, x, self.layers, n=6)
        name = Path(picked or path).name
        best = self.classes[int(top.indices[0])]
        return Classified(
            big(x), {self.classes[i]: float(p) for p, i in zip(top.values.tolist(), top.indices.tolist())}, fig,
            f"**{name}**: {best} ({float(top.values[0]):.1%})",
        )  # fmt: skip

    def maps(self, path: str | None, picked: str | None = None) -> Image.Image | None:
        """The deconvnet beside saliency, guided backprop, Grad-CAM and occlusion, at the deepest conv layer."""
        path = path or (str(self.root / picked) if picked else None)
        try:
            x = torch.from_numpy(data.decode(path)) if path else None
        except data.DataError:
            return None  # the classify step has already said why
        return comparison(self.model, x, self.classes, self.layers[-1])[0] if x is not None else None

    def channel(self, layer: str, channel: float | None) -> tuple[Image.Image | None, str]:
        """Zeiler & Fergus figure 2 for one channel: its top-9 training images and their projections."""
        if self.split is None:
            return None, f"No training images at {self.root}: start the app with --data ROOT."
        if layer not in self.layers:
            return None, f"Unknown layer '{layer}'."
        with self.lock:  # one pass over the dataset per layer, whoever asks first
            if layer not in self.tops:
                self.tops[layer] = top_activations(self.model, self.split.images, layer, k=9)
        top = self.tops[layer]
        n = top.values.shape[0]
        if channel is None or not 0 <= int(channel) < n or int(channel) != channel:
            return None, f"Channel must be a whole number from 0 to {n - 1} for {layer}."
        fig, index = top9_figure(self.model, self.split, layer, [int(channel)], top=top)
        fig = fig.resize((fig.width * 2, fig.height * 2), Image.Resampling.NEAREST)
        files = index["channels"][str(int(channel))]
        return fig, f"{layer} channel {int(channel)}: strongest on {files[0]['file']} ({files[0]['activation']:.2f})"

    def dream(self, name: str, samples: float, seed: float) -> tuple[Image.Image | None, str]:
        """Class images by the default recipe (`heritagelens dream --class NAME`)."""
        if self.split is None:
            return None, f"No training images at {self.root} for the image statistics: start with --data ROOT."
        if name not in self.classes:
            return None, f"Unknown class '{name}'."
        t0 = time.perf_counter()
        k, n = self.classes.index(name), int(samples)
        try:
            result = class_images(self.dreamer, [k], n, dream_preset("default"), self.stats, int(seed))
        except DreamError as e:
            return None, str(e)
        fig = gallery(result.images, [name], n, scale=3)
        return fig, f"{n} image(s) of {name} by {self.dreamer_name}, seed {int(seed)}, {time.perf_counter() - t0:.1f} s"


def problem(e: Exception, path: str) -> str:
    """The error without the upload's temporary path."""
    return str(e).replace(str(path), "").lstrip(": ") or str(e)


def big(x: torch.Tensor, size: int = 192) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy()).resize((size, size), Image.Resampling.NEAREST)


# ---------------------------------------------------------------------------------------------------- the page


def build_app(ex: Explorer):
    import gradio as gr

    with gr.Blocks(title="HeritageLens explorer", analytics_enabled=False) as app:
        gr.Markdown(
            f"# HeritageLens explorer\nModel `{ex.checkpoint.resolve()}` · {len(ex.classes)} classes: "
            + ", ".join(ex.classes)
        )
        with gr.Tab("Classify an image"):
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(label=f"Upload a photograph (up to {MAX_UPLOAD_MB} MB)", type="filepath",
                                     file_types=["image"], elem_id="upload")  # fmt: skip
                    picked = gr.Dropdown(ex.picks(), value=None, label="…or pick a training image", elem_id="pick")
                with gr.Column(scale=1):
                    seen = gr.Image(label="as the model sees it (64 px)", interactive=False, elem_id="seen")
                with gr.Column(scale=1):
                    top5 = gr.Label(num_top_classes=5, label="top-5 prediction", elem_id="top5")
            status = gr.Markdown(elem_id="status")
            projections = gr.Image(label="deconvnet: strongest channels per layer", interactive=False,
                                   elem_id="projections")  # fmt: skip
            maps = gr.Image(label="deconvnet, saliency, guided backprop, Grad-CAM and occlusion (deepest layer)",
                            interactive=False, elem_id="maps")  # fmt: skip

            def classify(path, pick):
                r = ex.classify(path, pick)
                return r.image, r.top5, r.projections, r.status

            outs = [seen, top5, projections, status]
            for trigger, args, name in (
                (upload.upload, [upload, gr.State(None)], "classify"),
                (picked.input, [gr.State(None), picked], "classify_picked"),
            ):
                trigger(classify, args, outs, api_name=name).then(ex.maps, args, maps, api_name=f"maps_{name}")
        with gr.Tab("Channels"):
            gr.Markdown(
                "What a channel responds to: its 9 strongest training images and their deconvnet projections. "
                "The first look at a layer ranks every training image (seconds); later looks are instant."
            )
            with gr.Row():
                layer = gr.Dropdown(ex.layers, value=ex.layers[-1], label="layer", elem_id="layer")
                channel = gr.Number(value=0, precision=0, label="channel", elem_id="channel")
                show = gr.Button("Show top 9", elem_id="show")
            channel_status = gr.Markdown(elem_id="channel-status")
            top9 = gr.Image(label="top 9", interactive=False, elem_id="top9")
            show.click(ex.channel, [layer, channel], [top9, channel_status], api_name="channel")
        with gr.Tab("Class images"):
            gr.Markdown(f"Images the model makes of a class (activation maximization), by {ex.dreamer_name}.")
            with gr.Row():
                cls = gr.Dropdown(ex.classes, value=ex.classes[0], label="class", elem_id="class")
                samples = gr.Slider(1, 4, value=2, step=1, label="images")
                seed = gr.Number(value=0, precision=0, label="seed")
                make = gr.Button("Generate", elem_id="generate")
            dream_status = gr.Markdown(elem_id="dream-status")
            dreamed = gr.Image(label="class images", interactive=False, elem_id="dreamed")
            make.click(ex.dream, [cls, samples, seed], [dreamed, dream_status], api_name="dream", concurrency_limit=1)
    return app


def serve(checkpoint: Path | str, root: Path | str | None = None, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Load the model and serve the explorer until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    ex = Explorer(checkpoint, root)
    app = build_app(ex)
    app.queue(default_concurrency_limit=2)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts fetched
    print(f"serving {checkpoint} at http://{host}:{port}", flush=True)
    app.launch(
        server_name=host, server_port=port, max_file_size=f"{MAX_UPLOAD_MB}mb", show_error=True, ssr_mode=False,
        theme=theme, quiet=True,
    )  # fmt: skip
