"""The explorer web app (`heritagelens serve CHECKPOINT`): classify an uploaded or picked image and see why, look at
what any channel responds to, generate class images, and review a sort (file by hand the photos the model was unsure
of), in a browser.

Everything it shows comes from the same public functions as the CLI (`images.decode`, `inference.probabilities`,
`visualize.image_view`, `visualize.comparison`, `visualize.top9_figure`, `dream.class_images`); this module only
loads the model once, keeps what is slow to recompute (a layer's top activations over the dataset), and lays the
page out with Gradio. Problems with an upload become a message on the page, never a failed request.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import Config
from .data import dataset, images
from .dream import DreamError, class_images, dream_preset, image_stats
from .errors import HeritageLensError
from .explain.deconvnet import DeconvError, TopK, top_activations
from .explain.views import comparison, image_view, top9_figure
from .figures import gallery
from .model.card import check_classes
from .model.checkpoint import load_model, robust_checkpoint, temperature
from .model.inference import probabilities
from .model.network import conv_layer_names
from .sort.journal import UNCERTAIN, SortError
from .sort.place import photo_in
from .sort.review import Reviewer, sort_settings

MAX_UPLOAD_MB = 25
PICKS_PER_CLASS = 3
UNSURE = "unsure (_uncertain)"
"""The review tab's default queue: the photos a sort left to a person."""


def folder_of(show: str) -> str:
    """The sort's folder a choice of the review tab's menu shows: `_uncertain` for `UNSURE`, else the class's."""
    return UNCERTAIN if show == UNSURE else show


@dataclass
class Classified:
    image: Image.Image | None
    """The image as the model sees it (64 px), shown large."""
    top5: dict[str, float] | None
    projections: Image.Image | None
    status: str
    strongest: list[str] = dataclasses.field(default_factory=list)
    """The channels whose projections are shown, strongest first, as 'layer:channel' (each a link to its top 9)."""


class Explorer:
    """One model (and, when the run has one, its robust sibling for class images) and its training data.

    Grad-CAM and guided backprop (Captum) and class images put hooks on the ReLUs while they run, so each of them
    works on its own copy of the weights, one request at a time; classification and the deconvnet use no hooks.
    """

    def __init__(self, checkpoint: Path | str, root: Path | str | None = None):
        self.checkpoint = Path(checkpoint)
        self.model, self.classes, ckpt = load_model(self.checkpoint)
        self.temperature = temperature(ckpt, tta=False)  # calibrated probabilities once calibrated (None: not yet)
        self.layers = conv_layer_names(self.model)
        self.explainer = copy.deepcopy(self.model)
        robust = robust_checkpoint(self.checkpoint)
        if robust.exists():
            self.dreamer, robust_classes, _ = load_model(robust)
            check_classes(robust_classes, self.classes, robust)
            self.dreamer_name = "the run's robust model"
        else:
            self.dreamer, self.dreamer_name = copy.deepcopy(self.model), "this model"
        cfg = Config.from_dict(ckpt["config"])
        self.root = Path(root or cfg.data.root)
        self.split = None
        if dataset.has_split(self.root, "train"):
            self.split = dataset.load_split(
                self.root, "train", classes=self.classes, cache_dir=cfg.data.cache_dir or None
            )
            self.stats = image_stats(self.split.images)
        self.picks = self._picks()
        self.tops: dict[str, TopK] = {}
        self.locks = {k: threading.Lock() for k in ("tops", "explainer", "dreamer")}
        self.reviewer = Reviewer(self.checkpoint, self.classes)
        """The review of this model's sorts, and this session's decisions: what Undo takes back."""

    def _picks(self) -> list[str]:
        """A few training images per class to pick from (relative to the data root)."""
        out: list[str] = []
        for k in range(len(self.classes) if self.split is not None else 0):
            idx = (self.split.labels == k).nonzero().flatten()[:PICKS_PER_CLASS]
            out += [self.split.files[i] for i in idx.tolist()]
        return out

    def image(self, path: str | None, picked: str | None) -> tuple[torch.Tensor | None, str]:
        """The uploaded file, or the picked training image, decoded; or None and why not."""
        if not path and not picked:
            return None, "Upload an image or pick one."
        if not path and picked not in self.picks:  # only the listed training images, never any other path
            return None, "**Unknown pick.**"
        path = path or str(self.root / picked)
        try:
            return torch.from_numpy(images.decode(path)), ""
        except images.DataError as e:
            return None, f"**Cannot use this file:** {str(e).removeprefix(f'{path}: ')}"

    # ------------------------------------------------------------------------------------------------ the tabs

    def classify(self, path: str | None, picked: str | None = None) -> Classified:
        """Top-5 and the deconvnet projections of the strongest channels per layer, for an uploaded or picked image."""
        x, why = self.image(path, picked)
        if x is None:
            return Classified(None, None, None, why)
        top5 = self.top5(x)
        fig, index = image_view(self.model, x, self.layers, n=6)
        name, (best, p) = Path(picked or path).name, next(iter(top5.items()))
        strongest = [f"{layer}:{c['channel']}" for layer in reversed(self.layers) for c in index[layer]]
        return Classified(big(x), top5, fig, f"**{name}**: {best} ({p:.1%})", strongest)

    @property
    def calibrated(self) -> str:
        """What the probabilities shown are: 'calibrated', or 'uncalibrated' before `heritagelens calibrate`."""
        return "calibrated" if self.temperature is not None else "uncalibrated"

    def n_channels(self, layer: str) -> int:
        return getattr(self.model.features, layer).out_channels if layer in self.layers else 0

    def top5(self, x: torch.Tensor) -> dict[str, float]:
        """The five most probable classes of a decoded image, strongest first: the calibrated probabilities
        `predict` and `sort` give."""
        top = probabilities(self.model, x[None], self.temperature)[0].topk(min(5, len(self.classes)))
        return {self.classes[i]: float(p) for p, i in zip(top.values.tolist(), top.indices.tolist())}

    def maps(self, path: str | None, picked: str | None = None) -> Image.Image | None:
        """The deconvnet beside saliency, guided backprop, Grad-CAM and occlusion, at the deepest conv layer."""
        x, _ = self.image(path, picked)
        if x is None:
            return None  # the classify step has already said why
        photo = np.asarray(images.for_display(path or self.root / picked))  # the heat maps over the photo itself
        with self.locks["explainer"]:
            return comparison(
                self.explainer, x, self.classes, self.layers[-1], temperature=self.temperature, photo=photo
            )[0]

    def channel(self, layer: str, channel: float | None) -> tuple[Image.Image | None, str]:
        """Zeiler & Fergus figure 2 for one channel: its top-9 training images and their projections."""
        if self.split is None:
            return None, f"No training images at {self.root}: start the app with --data ROOT."
        if layer not in self.layers:
            return None, f"Unknown layer '{layer}'."
        with self.locks["tops"]:  # one pass over the dataset per layer, whoever asks first
            if layer not in self.tops:
                self.tops[layer] = top_activations(self.model, self.split.images, layer, k=9)
        top = self.tops[layer]
        if channel is None or int(channel) != channel:
            return None, "Channel must be a whole number."
        try:
            fig, index = top9_figure(self.model, self.split, layer, [int(channel)], top=top)
        except DeconvError as e:
            return None, f"{str(e).capitalize()}."
        fig = fig.resize((fig.width * 2, fig.height * 2), Image.Resampling.NEAREST)
        best = index["channels"][str(int(channel))][0]
        return fig, f"{layer} channel {int(channel)}: strongest on {best['file']} ({best['activation']:.2f})"

    def dream(self, name: str, samples: float, seed: float) -> tuple[Image.Image | None, str]:
        """Class images by the default recipe (`heritagelens dream --class NAME`)."""
        if self.split is None:
            return None, f"No training images at {self.root} for the image statistics: start with --data ROOT."
        if name not in self.classes:
            return None, f"Unknown class '{name}'."
        t0 = time.perf_counter()
        k, n, seed = self.classes.index(name), int(samples), int(seed) % 2**31
        try:
            with self.locks["dreamer"]:
                result = class_images(self.dreamer, [k], n, dream_preset("default"), self.stats, seed)
        except DreamError as e:
            return None, str(e)
        fig = gallery(result.images, [name], n, scale=3)
        return fig, f"{n} image(s) of {name} by {self.dreamer_name}, seed {seed}, {time.perf_counter() - t0:.1f} s"

    # -------------------------------------------------------------------------------------- reviewing a sort

    def review_queue(self, folder: str, show: str, rows: dict | None = None) -> tuple[Path, Path, list[dict]]:
        """(output folder, photo folder, the rows to review in file order) of a sort this model made; `show` is
        `UNSURE` or a class (the photos filed there); `rows`, the sort's rows when just read."""
        return self.reviewer.queue(folder, folder_of(show), rows)

    def review(
        self,
        folder: str,
        show: str,
        after: str = "",
        rows: dict | None = None,
        back: bool = False,
        at: str = "",
        status: str = "",
    ) -> Reviewed:
        """Photo `at` of the queue, else the next one after `after` in file order (with `back`, the one before it),
        going round at either end; `status` says first what was just done."""
        try:
            out, photos, queue = self.review_queue(folder, show, rows)
        except SortError as e:
            return Reviewed.refused(e)
        if not queue:
            return Reviewed(None, None, "", f"Nothing to review in {out / (folder_of(show))}.")
        order = list(enumerate(queue))
        if at and any(r["file"] == at for r in queue):
            k, row = next((k, r) for k, r in order if r["file"] == at)
        elif back:
            k, row = next(((k, r) for k, r in reversed(order) if r["file"] < after), order[-1])
        else:
            k, row = next(((k, r) for k, r in order if r["file"] > after), order[0])
        top3 = top3_of(row["top3"])
        said = f"the model says {row['class']} ({row['p']:.1%})"
        if row.get("decided"):
            said = f"filed by a person as {row['class']}"
        try:
            image = images.read_rgb(photo_in(photos, row["file"]), at_least=480)
            image.thumbnail((640, 640))
        except (images.DataError, SortError) as e:  # gone or changed since the sort: it can still be filed
            image, said = None, f"{said}; the original cannot be shown ({str(e).split(': ', 1)[-1]})"
        text = f"**{row['file']}** ({k + 1} of {len(queue)}): {said}"
        return Reviewed(image, top3, row["file"], f"{status} {'Now' if at else 'Next'}: {text}" if status else text)

    def decide(self, folder: str, show: str, file: str, k: int) -> Reviewed:
        """File photo `file`, the one on the page, into class `k` (the copy moves, `sort.csv`, the journal and the
        sidecar follow), then show the next one. A photo no longer in this queue (filed out of it by a decision sent
        twice) is left where it is."""
        r = self.file_photos(folder, show, [file] if file else [], k)
        return r if not file or r.error else self.review(folder, show, after=file, status=r.status)

    def file_photos(self, folder: str, show: str, files: list[str], k: int) -> Reviewed:
        """File each of `files` (those ticked on the grid) into class `k`; each decision can be undone."""
        if not files:
            return self.review(folder, show)
        try:
            filed = self.reviewer.file(folder, folder_of(show), files, self.classes[k])
        except SortError as e:
            return Reviewed.refused(e, files[0])
        said = f"Filed {', '.join(filed)} as {self.classes[k]}." if filed else "Nothing filed (not in this queue now)."
        return Reviewed(None, None, files[-1], said)

    def undo(self, folder: str, show: str) -> Reviewed:
        """Take the last decision of this session back (copy, `sort.csv`, journal and sidecar as they were) and show
        that photo again."""
        try:
            taken = self.reviewer.undo_last()
        except SortError as e:
            return Reviewed.refused(e, self.reviewer.decisions[-1].file)
        if taken is None:
            return self.review(folder, show, status="Nothing to undo.")
        d, rows = taken
        back = f"Undone: {d.file} is back in {d.before.split('/')[0]}/."
        return self.review(folder, show, at=d.file, rows=rows, status=back)

    def thumbnails(self, folder: str, show: str, n: int = 60) -> tuple[list[tuple[Image.Image, str]], list[str]]:
        """The queue as a grid: (thumbnail, caption) of its first `n` photos, and their files in the same order."""
        try:
            _, photos, queue = self.review_queue(folder, show)
        except SortError:
            return [], []
        grid = []
        for r in queue[:n]:
            try:
                im = images.read_rgb(photo_in(photos, r["file"]), at_least=160)
                im.thumbnail((160, 160))
            except (images.DataError, SortError):
                im = Image.new("RGB", (160, 160), (200, 200, 200))
            grid.append((im, f"{r['file']}: {r['class']} {r['p']:.0%}"))
        return grid, [r["file"] for r in queue]

    def learn(self, folder: str, sets: list[str] = ()) -> str:
        """`heritagelens learn` on the sort in `folder`, from the page: the photos a person filed fine-tune this model
        into a new model folder beside it, the unsure ones are sorted again with it; what was done, in words."""
        from .jobs.learn import learn

        if not folder:
            return "**Open a sort first.**"
        try:
            out, _ = self.reviewer.sort_in(folder)  # a sort of this model, or a one-line refusal
            learned = learn(out, sets=sets, progress=False)
        except HeritageLensError as e:
            return f"**{e}**"
        again = f"`heritagelens serve {learned.model}`"
        return f"```\n{learned.text()}\n```\nThe sort now belongs to the new model: review it further with {again}."

    def explain(self, folder: str, file: str) -> tuple[Image.Image | None, Image.Image | None]:
        """The deconvnet's strongest projections and the comparison maps (Grad-CAM among them) of a reviewed photo."""
        if not file:
            return None, None
        try:
            photo = str(Path(sort_settings(Path(folder).expanduser())["photos"]) / file)
        except SortError:
            return None, None
        return self.classify(photo).projections, self.maps(photo)


@dataclass
class Reviewed:
    image: Image.Image | None
    top3: dict[str, float] | None
    file: str
    """The photo under review, as `sort.csv` names it ('' when none)."""
    status: str
    error: bool = False
    """Whether `status` says why nothing could be done (shown in bold)."""

    @classmethod
    def refused(cls, e: Exception, file: str = "") -> Reviewed:
        return cls(None, None, file, f"**{e}**", error=True)


def big(x: torch.Tensor, size: int = 192) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy()).resize((size, size), Image.Resampling.NEAREST)


# ---------------------------------------------------------------------------------------------------- the page


def build_app(ex: Explorer):
    """The page: one tab per question a user brings."""
    import gradio as gr

    with gr.Blocks(title="HeritageLens explorer", analytics_enabled=False) as app:
        gr.Markdown(
            f"# HeritageLens explorer\nModel `{ex.checkpoint.resolve()}` · {len(ex.classes)} classes: "
            + ", ".join(ex.classes)
        )
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Classify an image", id="classify"):
                go = classify_tab(gr, ex)
            with gr.Tab("Channels", id="channels"):
                shown = channels_tab(gr, ex)
            with gr.Tab("Class images", id="class-images"):
                class_images_tab(gr, ex)
            with gr.Tab("Review a sort", id="review"):
                review_tab(gr, ex)
        pick, button = go
        layer, channel, top9, status = shown

        def follow(choice):
            """From a projection on the Classify tab to its channel's top 9 on the Channels tab."""
            if not choice:
                return gr.Tabs(), gr.Dropdown(), gr.Slider(), None, "Pick one of the photo's channels first."
            name, _, c = choice.partition(":")
            fig, said = ex.channel(name, int(c))
            return gr.Tabs(selected="channels"), name, channel_slider(gr, ex, name, int(c)), fig, said

        button.click(follow, [pick], [tabs, layer, channel, top9, status], api_name="follow")
    return app


def figure(gr, caption: str, elem_id: str):
    """A figure with its caption above it, never drawn over its own title (Gradio's label would be)."""
    gr.Markdown(f"**{caption}**", elem_classes=["caption"])
    return gr.Image(show_label=False, interactive=False, elem_id=elem_id)


def classify_tab(gr, ex: Explorer):
    """The tab; returns (the photo's channels, the button that shows one's top 9) for the Channels tab's link."""
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(
                label=f"Upload a photograph (up to {MAX_UPLOAD_MB} MB)",
                type="filepath",
                file_types=["image"],
                elem_id="upload",
            )
            picked = gr.Dropdown(ex.picks, value=None, label="…or pick a training image", elem_id="pick")
        with gr.Column(scale=1):
            seen = gr.Image(label="as the model sees it (64 px)", interactive=False, elem_id="seen")
        with gr.Column(scale=1):
            top5 = gr.Label(num_top_classes=5, label=f"top-5 prediction ({ex.calibrated})", elem_id="top5")
    status = gr.Markdown(elem_id="status")
    projections = figure(gr, "deconvnet: the strongest channels of each layer", "projections")
    with gr.Row():
        strongest = gr.Dropdown([], label="one of these channels (layer:channel, deepest first)", elem_id="strongest")
        follow = gr.Button("Show its top 9 →", elem_id="follow")
    maps = figure(gr, "deconvnet, saliency, guided backprop, Grad-CAM and occlusion (deepest layer)", "maps")

    def classify(path, pick):
        r = ex.classify(path, pick)
        return r.image, r.top5, r.projections, r.status, gr.Dropdown(choices=r.strongest, value=None)

    outs = [seen, top5, projections, status, strongest]
    for trigger, args, name in (
        (upload.upload, [upload, gr.State(None)], "classify"),
        (picked.input, [gr.State(None), picked], "classify_picked"),
    ):
        trigger(classify, args, outs, api_name=name).then(ex.maps, args, maps, api_name=f"maps_{name}")
    return strongest, follow


def channel_slider(gr, ex: Explorer, layer: str, value: int = 0):
    n = ex.n_channels(layer)
    return gr.Slider(0, max(n - 1, 0), value=value, step=1, label=f"channel (0 to {n - 1} in {layer})")


def channels_tab(gr, ex: Explorer):
    """The tab; returns its layer, channel, figure and status, which the Classify tab's link sets."""
    gr.Markdown(
        "What a channel responds to: its 9 strongest training images and their deconvnet projections. "
        "The first look at a layer ranks every training image (seconds); later looks are instant."
    )
    with gr.Row():
        layer = gr.Dropdown(ex.layers, value=ex.layers[-1], label="layer", elem_id="layer")
        n = ex.n_channels(ex.layers[-1])
        channel = gr.Slider(
            0, n - 1, value=0, step=1, label=f"channel (0 to {n - 1} in {ex.layers[-1]})", elem_id="channel"
        )
        prev = gr.Button("← previous", elem_id="channel-prev", min_width=60)
        nxt = gr.Button("next →", elem_id="channel-next", min_width=60)
        show = gr.Button("Show top 9", elem_id="show")
    status = gr.Markdown(elem_id="channel-status")
    top9 = figure(gr, "top 9 training images, their projections and receptive fields", "top9")
    layer.change(lambda name: channel_slider(gr, ex, name), [layer], [channel])
    show.click(ex.channel, [layer, channel], [top9, status], api_name="channel")

    def step(name, c, by):
        c = (int(c or 0) + by) % max(ex.n_channels(name), 1)
        return (c, *ex.channel(name, c))

    prev.click(lambda name, c: step(name, c, -1), [layer, channel], [channel, top9, status], api_name="channel_prev")
    nxt.click(lambda name, c: step(name, c, 1), [layer, channel], [channel, top9, status], api_name="channel_next")
    return layer, channel, top9, status


def class_images_tab(gr, ex: Explorer) -> None:
    gr.Markdown(f"Images the model makes of a class (activation maximization), by {ex.dreamer_name}.")
    with gr.Row():
        cls = gr.Dropdown(ex.classes, value=ex.classes[0], label="class", elem_id="class")
        samples = gr.Slider(1, 4, value=2, step=1, label="images")
        seed = gr.Number(value=0, precision=0, minimum=0, maximum=2**31 - 1, label="seed")
        make = gr.Button("Generate", elem_id="generate")
    status = gr.Markdown(elem_id="dream-status")
    dreamed = figure(gr, "class images", "dreamed")
    make.click(ex.dream, [cls, samples, seed], [dreamed, status], api_name="dream", concurrency_limit=1)


def top3_of(text: str) -> dict[str, float]:
    """`sort.csv`'s top 3 ('apse 0.912; vault 0.050; ...') as class -> probability, what cannot be read left out."""
    top = {}
    for item in text.split("; "):
        name, _, p = item.rpartition(" ")
        with contextlib.suppress(ValueError):
            top[name] = float(p)
    return {k: v for k, v in top.items() if k}


def key_of(k: int) -> str:
    """The key that files into class `k` (0-based): 1 to 9, then 0 for the tenth; none beyond."""
    return str((k + 1) % 10) if k < 10 else ""


def review_tab(gr, ex: Explorer) -> None:
    gr.Markdown(
        "Open the output folder of `heritagelens sort` (sorted with this model) and file the photos it was unsure "
        "of: click a class or press its key (1 to 9, 0 for the tenth); ← and → move without deciding; Ctrl+Z or "
        "**Undo** takes the last decision back. The copy moves, and `sort.csv`, the journal and the photo's XMP "
        "sidecar follow; no later sort moves it back. On the grid below, tick several photos and file them at once."
    )
    with gr.Row():
        folder = gr.Textbox(label="sort output folder", elem_id="review-folder", scale=3)
        show = gr.Dropdown([UNSURE, *ex.classes], value=UNSURE, label="photos to review", elem_id="review-show")
        start = gr.Button("Open", elem_id="review-open")
    status = gr.Markdown(elem_id="review-status")
    current = gr.Textbox(visible=False, elem_id="review-current")
    """The photo on the page, as the page holds it: a decision sends the file the person saw when they pressed the
    key (a server-side `gr.State` is read when the event runs, so a key pressed twice would file the next photo,
    never shown)."""
    with gr.Row():
        prev = gr.Button("← previous", elem_id="review-prev", min_width=80)
        nxt = gr.Button("next →", elem_id="review-next", min_width=80)
        back = gr.Button("Undo (Ctrl+Z)", elem_id="review-undo", min_width=80)
    with gr.Row():
        photo = gr.Image(label="the photo", interactive=False, elem_id="review-photo", height=420)
        top3 = gr.Label(num_top_classes=3, label="the model's top 3 (as sort.csv gives it)", elem_id="review-top3")
    with gr.Row():
        buttons = [
            gr.Button(f"{key_of(k)} · {c}" if key_of(k) else c, elem_id=f"review-file-{k}", min_width=80)
            for k, c in enumerate(ex.classes)
        ]
    projections = figure(gr, "deconvnet: the strongest channels of each layer", "review-proj")
    maps = figure(gr, "deconvnet, saliency, guided backprop, Grad-CAM and occlusion", "review-maps")
    with gr.Accordion("the queue as a grid: file several photos at once", open=False, elem_id="review-grid-box"):
        grid = gr.Gallery(label="the queue", columns=6, height=360, elem_id="review-grid", allow_preview=False)
        ticked = gr.CheckboxGroup([], label="photos to file together", elem_id="review-ticked")
        with gr.Row():
            into = gr.Dropdown(ex.classes, value=ex.classes[0], label="into class", elem_id="review-into")
            file_all = gr.Button("File the ticked photos", elem_id="review-file-ticked")
    with gr.Accordion("learn from the decisions", open=False, elem_id="review-learn-box"):
        gr.Markdown(
            "Fine-tune this model on the photos a person filed (at least 20; a quarter held out to measure it before "
            "and after), into a new model folder beside it, and sort the unsure photos no one decided again with it. "
            "The old model and every decision stay as they are. A few minutes: `heritagelens learn` does the same."
        )
        learn = gr.Button("Learn from the decisions", elem_id="review-learn")
        learnt = gr.Markdown(elem_id="review-learnt")
    outs = [photo, top3, current, status]

    def shown(r: Reviewed):
        return r.image, r.top3, r.file, r.status

    def queue(f, s):
        g, files = ex.thumbnails(f, s)
        return g, gr.CheckboxGroup(choices=files, value=[])

    def after(event):
        event.then(ex.explain, [folder, current], [projections, maps]).then(queue, [folder, show], [grid, ticked])

    after(start.click(lambda f, s: shown(ex.review(f, s)), [folder, show], outs, api_name="review"))
    after(nxt.click(lambda f, s, c: shown(ex.review(f, s, after=c)), [folder, show, current], outs, api_name="next"))
    after(
        prev.click(
            lambda f, s, c: shown(ex.review(f, s, after=c, back=True)),
            [folder, show, current],
            outs,
            api_name="previous",
        )
    )
    after(back.click(lambda f, s: shown(ex.undo(f, s)), [folder, show], outs, api_name="undo", concurrency_limit=1))
    for k, button in enumerate(buttons):
        after(
            button.click(
                lambda f, s, c, k=k: shown(ex.decide(f, s, c, k)),
                [folder, show, current],
                outs,
                api_name=f"decide_{k}",
                concurrency_limit=1,
            )
        )

    def file_ticked(f, s, files, cls):
        r = ex.file_photos(f, s, files or [], ex.classes.index(cls))
        nxt = ex.review(f, s, status=r.status) if not r.error else r
        return shown(nxt)

    after(file_all.click(file_ticked, [folder, show, ticked, into], outs, api_name="file_ticked", concurrency_limit=1))
    after(
        learn.click(ex.learn, [folder], [learnt], api_name="learn", concurrency_limit=1).then(
            lambda f, s: shown(ex.review(f, s)), [folder, show], outs
        )
    )


KEYS = """<script>
document.addEventListener("keydown", (e) => {
  if (["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName)) return;
  const click = (id) => {
    const b = document.getElementById(id);
    if (b && b.offsetParent !== null) { e.preventDefault(); b.click(); }
  };
  if ((e.ctrlKey || e.metaKey) && !e.altKey && e.key.toLowerCase() === "z") return click("review-undo");
  if (e.ctrlKey || e.altKey || e.metaKey) return;
  if (e.key === "ArrowLeft") return click("review-prev");
  if (e.key === "ArrowRight") return click("review-next");
  if (/^[0-9]$/.test(e.key)) click("review-file-" + ((Number(e.key) + 9) % 10));
});
</script>"""
"""The review tab's keys while it is showing (never inside a text box): 1 to 9 and 0 file into the class of the button
that shows the key, the arrows move without deciding, Ctrl+Z (Cmd+Z) undoes."""

CSS = "#review-photo img { width: 100%; height: 100%; object-fit: contain; }"
"""The photo under review fills its box, however small the file: a 64 px photo is shown as large as a 4,000 px one."""


def address_problem(host: str, port: int) -> str:
    """Why the web app could not listen on `host`:`port` ('' when it can): checked by binding before the model loads,
    so that a busy port or a host that is not this machine's is one line, not a traceback after the start."""
    import errno
    import socket

    if not 0 < port < 65536:
        return f"port {port}: must be 1 to 65535"
    if ":" in host or "[" in host:
        return f"{host[:100]}: an IPv6 address; the web app listens on IPv4 (127.0.0.1, 0.0.0.0) or a host name"
    if not host or len(host) > 253:
        return f"{host[:100]}...: not a host name (at most 253 characters)"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            if os.name != "nt":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no obstacle
            s.bind(address)
    except socket.gaierror as e:
        return f"{host}: not a host name or address this machine knows ({e.strerror})"
    except UnicodeError:  # a label over 63 characters, or text IDNA cannot encode
        return f"{host[:100]}: not a host name"
    except OSError as e:
        why = {
            errno.EADDRINUSE: "the port is in use by another program",
            errno.EACCES: "not allowed for this user",
            errno.EADDRNOTAVAIL: "not an address of this machine",
        }
        return f"{host}:{port}: cannot listen there ({why.get(e.errno, e.strerror)})"
    return ""


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
        server_name=host,
        server_port=port,
        max_file_size=f"{MAX_UPLOAD_MB}mb",
        show_error=True,
        ssr_mode=False,
        theme=theme,
        quiet=True,
        head=KEYS,
        css=CSS,
    )


# ------------------------------------------------------------------------------------ the app in its own process


class ServeError(HeritageLensError):
    """`heritagelens serve` stopped, or its page never answered; the message holds its log."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(args: list[str], log: Path, env: dict | None = None, timeout: float = 120.0):
    """`heritagelens serve ARGS` in a process of its own on a free port of 127.0.0.1, as a person starts it, for as
    long as the block runs; its URL once the page answers. Its output goes to `log`; `ServeError` (with the log)
    when it stops first or its page does not answer within `timeout` seconds."""
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    with log.open("w") as out:
        cmd = [sys.executable, "-m", "heritagelens", "serve", *map(str, args), "--port", str(port)]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServeError(
                    f"serve {'stopped' if proc.poll() is not None else 'did not answer'}: {log.read_text()}"
                )
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


HAS_TEXT = "([s, t]) => document.querySelector(s) && document.querySelector(s).innerText.includes(t)"
"""A page function (Playwright's `wait_for_function`): whether the element `s` shows the text `t`."""


def wait_text(page, selector: str, text: str) -> str:
    """Wait until the element `selector` of a Playwright page shows `text`; all it shows then."""
    page.wait_for_function(HAS_TEXT, arg=[selector, text])
    return page.inner_text(selector)
