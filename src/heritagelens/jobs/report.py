"""The run report: one self-contained HTML file (every image embedded, nothing fetched) that shows what a run
folder holds: config, data and split, training curves, evaluation per split with the surest mistakes, deconvnet
figure-2 grids, the scored class-image gallery, and the time each stage took.

A run folder with missing or unreadable pieces still gets a report: each section says what it lacks and shows
what exists. Figures come from plain functions that return images; `write_report` is the only writer.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import SPLIT_NAMES
from ..errors import HeritageLensError
from ..figures import confusion_figure, curves_figure, figure_image, png_bytes
from ..files import atomic_write_text, writable_file
from ..htmlpage import Section, html_page, img, para, table
from ..judging.scores import per_class_rows, score_rows

PRESET_FIGURES = Path(__file__).with_name("preset-figures.json")
"""The named presets' measured figures on AHE64 (written by `bench/accuracy.py --record`): the report sets a run
beside them."""

KNOWN = ("config.json", "metrics.csv", "split.json", "summary.json", "last.pt", "best.pt")


class ReportError(HeritageLensError):
    """The folder is not a run folder at all."""


def in_100(accuracy: float) -> str:
    """An accuracy as a person says it: 'about 94 in 100'."""
    return f"about {round(100 * accuracy)} in 100"


class RunReader:
    """Reads a run folder's pieces; what is absent or unreadable becomes a note, never an exception."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ReportError(f"{self.path}: no such run folder")
        if not any((self.path / k).exists() for k in KNOWN) and not list(self.path.glob("eval-*.json")):
            raise ReportError(f"{self.path}: not a run folder (none of {', '.join(KNOWN)} or eval-*.json)")

    def read(self, name: str, section: Section, parse) -> Any | None:
        f = self.path / name
        if not f.exists():
            section.missing.append(f"{name}: not in the run folder")
            return None
        try:
            return parse(f)
        except (OSError, ValueError, KeyError, UnidentifiedImageError, csv.Error) as e:
            section.missing.append(f"{name}: unreadable ({type(e).__name__}: {e})")
            return None

    def json(self, name: str, section: Section) -> Any | None:
        return self.read(name, section, lambda f: json.loads(f.read_text(encoding="utf-8")))

    def csv(self, name: str, section: Section) -> list[dict] | None:
        def parse(f: Path) -> list[dict]:
            with f.open(newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))

        return self.read(name, section, parse)

    def png(self, name: str, section: Section) -> bytes | None:
        """The PNG's bytes, checked to decode."""

        def parse(f: Path) -> bytes:
            b = f.read_bytes()
            with Image.open(f) as im:
                im.load()
            return b

        return self.read(name, section, parse)


# ------------------------------------------------------------------------------------------------------ figures


def thumbnail(image: np.ndarray, size: int = 128) -> Image.Image:
    """A (3, H, W) uint8 image as a `size` px RGB thumbnail (nearest neighbour, so pixels stay visible)."""
    return Image.fromarray(image.transpose(1, 2, 0)).resize((size, size), Image.Resampling.NEAREST)


# ------------------------------------------------------------------------------------------------------- HTML


def eval_id(name: str) -> str:
    """The anchor of an `eval-<split>.json` file's section: letters, digits, '_' and '-' only."""
    return "eval-" + re.sub(r"[^\w-]", "_", name.removeprefix("eval-").removesuffix(".json"))


def split_label(split: str) -> str:
    return f"{split} ({SPLIT_NAMES.get(split, split)})"


# ----------------------------------------------------------------------------------------------------- sections


def config_section(run: RunReader) -> Section:
    s = Section("config", "Configuration")
    cfg = run.json("config.json", s)
    if cfg is not None:
        rows = [[sec, k, json.dumps(v)] for sec, vals in cfg.items() for k, v in vals.items()]
        summary = "The recipe this run was trained with (config.json): every value"
        s.html = f"<details><summary>{summary}</summary>{table(['section', 'key', 'value'], rows, 'config')}</details>"
    return s


def data_section(run: RunReader) -> Section:
    s = Section("data", "Data and validation split")
    sp = run.json("split.json", s)
    if sp is None:
        return s
    facts = [
        ["images in train/", sp.get("images")],
        ["split method", sp.get("method")],
        ["groups (no group crosses the split)", sp.get("groups")],
        ["largest group", sp.get("largest_group")],
        ["training images", sp.get("train_images")],
        ["validation images (group-aware)", sp.get("val_images")],
        ["source-held-out validation images", sp.get("source_images")],
        ["source held out", sp.get("source_held_out")],
        ["unreadable files skipped", sp.get("unreadable_skipped")],
    ]
    s.html = table(["", ""], [r for r in facts if r[1] is not None], "facts")
    cols = [k for k in ("per_class", "train_per_class", "val_per_class", "source_per_class") if k in sp]
    if not cols:
        s.missing.append("split.json: no counts per class")
        return s
    classes = list(sp[cols[0]])
    names = {
        "per_class": "images",
        "train_per_class": "training",
        "val_per_class": "validation",
        "source_per_class": "source-held-out",
    }
    rows = [[c] + [sp[k].get(c, 0) for k in cols] for c in classes]
    s.html += "<h3>Images per class</h3>" + table(["class"] + [names[k] for k in cols], rows, "counts")
    return s


def split_key(split: dict) -> str:
    """Which split a run was trained and validated on, from its `split.json`: the image count and the files of both
    validations, so two runs with the same key were measured on the same photographs."""
    d = {k: split.get(k) for k in ("images", "source_held_out")}
    d |= {k: sorted(split.get(k) or []) for k in ("val_files", "source_files")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _mean_sd(values: list[float]) -> str:
    m = float(np.mean(values))
    return f"{m:.2%} ± {np.std(values, ddof=1):.2%}" if len(values) > 1 else f"{m:.2%}"


def presets_section(run: RunReader, figures: Path = PRESET_FIGURES) -> Section:
    s = Section("presets", "This run beside the measured presets")
    ref = run.read(str(figures), s, lambda f: json.loads(f.read_text(encoding="utf-8")))
    if ref is None:
        return s
    header = [
        "",
        "group-aware val",
        "source-held-out",
        "outside photos",
        "gap (points)",
        "macro F1 val / source",
        "TFLOP",
        "training minutes",
    ]
    rows = []
    for name, p in ref["presets"].items():
        gap = 100 * (np.mean(p["val"]) - np.mean(p["source"]))
        f1 = f"{np.mean(p['val_macro_f1']):.3f} / {np.mean(p['source_macro_f1']):.3f}"
        minutes = f"{min(p['train_minutes']):.0f}-{max(p['train_minutes']):.0f}"
        outside = _mean_sd(p["outside"]) if p.get("outside") else "not measured"
        rows.append(
            [
                f"{name} ({len(p['val'])} seeds)",
                _mean_sd(p["val"]),
                _mean_sd(p["source"]),
                outside,
                f"{gap:.1f}",
                f1,
                f"{p['tflop']:.0f}",
                minutes,
            ]
        )
    quiet = Section("", "")  # what is missing or unreadable is listed by the sections that show it
    val, src, out, summary = (
        run.json(f, quiet) for f in ("eval-val.json", "eval-source.json", "eval-outside.json", "summary.json")
    )
    if all(isinstance(d, dict) and "accuracy" in d and "macro" in d for d in (val, src)):
        compute = summary.get("train_compute") if isinstance(summary, dict) else None
        tflop = compute.get("tflop") if isinstance(compute, dict) else None
        outside = f"{out['accuracy']:.2%}" if isinstance(out, dict) and "accuracy" in out else "not measured"
        rows.append(
            [
                "this run",
                f"{val['accuracy']:.2%}",
                f"{src['accuracy']:.2%}",
                outside,
                f"{100 * (val['accuracy'] - src['accuracy']):.1f}",
                f"{val['macro']['f1']:.3f} / {src['macro']['f1']:.3f}",
                "" if tflop is None else f"{tflop:.0f}",
                summary.get("train_minutes", "") if isinstance(summary, dict) else "",
            ]
        )
    sp = run.json("split.json", quiet)
    same = isinstance(sp, dict) and isinstance(sp.get("val_files"), list) and split_key(sp) == ref["split_key"]
    how = "; ".join(f"{name}: {p['command']} on {p['machine']}" for name, p in ref["presets"].items())
    s.html = table(header, rows, "presets") + para(
        f"Each preset's figures: mean ± sample standard deviation over training seeds, final weights, test-time "
        f"augmentation, {ref['data']}. Measured with {how}. "
        + (
            "This run was validated on the same photographs, so its row compares directly."
            if same
            else "This run's split is not that one, so its row does not compare directly."
        )
    )
    return s


def bundled_figures() -> dict | None:
    """The bundled model's card figures (val, source and outside), or None when its card lacks the outside ones."""
    from ..model.card import BUNDLED, CheckpointError, model_card

    try:
        figures = model_card(BUNDLED).get("figures") or {}
    except CheckpointError:
        return None
    return figures if all("accuracy" in (figures.get(k) or {}) for k in ("val", "source", "outside")) else None


def expectation_section(run: RunReader, bundled: dict | None = None) -> Section:
    """What to expect on a user's photos, which come from other sources than the training's: this run's accuracy on
    the outside photos when it was measured, else its validation figures beside how far the bundled model's
    validations overstated its accuracy on outside photos."""
    from ..model.metrics import interval_text

    s = Section("expect", "What to expect on your photos")
    quiet = Section("", "")  # each evaluation section lists what is missing or unreadable
    got = {k: run.json(f"eval-{k}.json", quiet) for k in ("val", "source", "outside")}
    got = {k: d for k, d in got.items() if isinstance(d, dict) and "accuracy" in d}
    if not got:
        s.missing.append("eval-val.json: no validation evaluated")
        return s

    def pct(d: dict) -> str:
        return f"{d['accuracy']:.1%}" + (f" (95% interval {interval_text(d['interval'])})" if d.get("interval") else "")

    names = {"val": "the group-aware validation", "source": "the source-held-out validation"}
    said = "; ".join(f"{names[k]} {pct(d)}" for k, d in got.items() if k in names)
    if "outside" in got:
        o = got["outside"]
        over = ", ".join(
            f"{names[k]} by {100 * (d['accuracy'] - o['accuracy']):+.1f} points" for k, d in got.items() if k in names
        )
        s.headline = f"on {o['n']} photos from other sources than the training's: {pct(o)}"
        like = got.get("val", o)["accuracy"]
        s.plain = (
            f"This model names the element right in {in_100(like)} photos like the training's, and in "
            f"{in_100(o['accuracy'])} photos from other sources, which is what your photos are."
        )
        s.html = para(
            f"Measured on {o['n']} photos from other sources than the training's ({o.get('held_out') or 'outside'}), "
            f"never trained, stopped, calibrated or thresholded on: accuracy {pct(o)}. The validation splits carved "
            f"from train/ said {said}: above the outside figure, {over}. Photos from other sources are what a "
            "user's photos are: expect the outside figure."
        )
        return s
    bundled = bundled_figures() if bundled is None else bundled
    key = "source" if "source" in got else "val"
    figure = f"This run was measured on validation splits carved from train/ only ({said}): no outside photos were "
    figure += "evaluated (heritagelens evaluate RUN --split outside --outside DIR)."
    s.plain = f"This model names the element right in {in_100(got[key]['accuracy'])} photos like the training's"
    if not bundled:
        s.plain += "; how it does on photos from other sources was not measured."
        s.headline = f"{names[key]}: {pct(got[key])}; not measured on photos from other sources"
        s.html = para(figure + " How far these figures overstate accuracy on photos from elsewhere is not known.")
        return s
    gap = bundled[key]["accuracy"] - bundled["outside"]["accuracy"]
    guess = got[key]["accuracy"] - gap
    s.headline = f"{names[key]}: {pct(got[key])}; on photos from other sources expect about {guess:.1%}"
    s.plain += f", and, judging by the bundled model, in {in_100(guess)} photos from other sources (your photos)."
    s.html = para(
        f"{figure} For the bundled model (the default recipe), {names[key]} said {bundled[key]['accuracy']:.1%} "
        f"and {bundled['outside']['n']} photos from other sources than the training's "
        f"({bundled['outside'].get('photos', 'outside photos')}) gave {bundled['outside']['accuracy']:.1%}: "
        f"it overstated by {100 * gap:.1f} points. Taken over to this run, expect about {guess:.1%} on your photos; "
        "a recipe that generalizes differently moves that guess."
    )
    return s


def training_section(run: RunReader) -> Section:
    s = Section("training", "Training curves")
    rows = run.csv("metrics.csv", s)
    if rows:
        best = max(rows, key=lambda r: float(r["val_acc"]))
        s.html = img(png_bytes(curves_figure(rows)), "training curves") + para(
            f"{len(rows)} epochs; best val (group-aware validation) accuracy {float(best['val_acc']):.2%} at epoch "
            f"{best['epoch']}, last {float(rows[-1]['val_acc']):.2%}. Per-epoch validation is without test-time "
            "augmentation; the evaluation below uses the final weights as configured."
        )
    elif rows is not None:
        s.missing.append("metrics.csv: no epochs recorded")
    return s


def eval_section(run: RunReader, name: str, data_root: Path | None) -> Section:
    from ..model.metrics import EvalResult, Mistake, calibration_line, interval_text

    split = name.removeprefix("eval-").removesuffix(".json")
    s = Section(eval_id(name), f"Evaluation on {split_label(split)}")
    d = run.json(name, s)
    if d is None:
        return s
    r = EvalResult(**{**d, "mistakes": [Mistake(**m) for m in d["mistakes"]]})
    f3 = "{:.3f}".format
    rows = [[c, f3(m["precision"]), f3(m["recall"]), f3(m["f1"]), m["support"]] for c, m in r.per_class.items()]
    rows += [
        [k + " avg", f3(m["precision"]), f3(m["recall"]), f3(m["f1"]), r.n]
        for k, m in (("macro", r.macro), ("weighted", r.weighted))
    ]
    interval = f" (95% interval {interval_text(r.interval)})" if r.interval else ""
    s.headline = (
        f"accuracy on {split_label(split)}{f' [{r.held_out}]' if r.held_out else ''}: {r.accuracy:.2%}{interval}, "
        f"macro F1 {r.macro['f1']:.3f} "
        f"({r.n} images{', test-time augmentation' if r.tta else ''})"
    )
    photos = Path(r.folder) if r.folder else data_root
    s.html = (
        f'<p class="headline">{html.escape(s.headline)}</p>'
        + table(["class", "precision", "recall", "F1", "support"], rows, "metrics")
        + "<h3>Confusion matrix</h3>"
        + img(png_bytes(figure_image(confusion_figure(r))), f"confusion matrix, {split}", 620)
        + mistakes_html(r, photos, s)
    )
    if r.calibration:
        png = run.png(f"reliability-{split}.png", s)
        s.html += "<h3>Calibration</h3>" + para(calibration_line(r.calibration))
        s.html += img(png, f"reliability diagram, {split}", 760) if png else ""
    stem = {"val": "risk-coverage", "outside": "risk-coverage-outside"}.get(split)
    if stem and (run.path / f"{stem}.json").exists():
        s.html += risk_coverage_html(run, s, stem)
    return s


def risk_coverage_html(run: RunReader, s: Section, stem: str = "risk-coverage") -> str:
    """What `sort --min-confidence` means, measured on the held-out or the outside photos: the table and the curve."""
    d = run.json(f"{stem}.json", s)
    if d is None:
        return ""
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    rows = [[f"{r['threshold']:.2f}", pct(r["coverage"]), pct(r["accuracy"]), r["filed"]] for r in d["rows"]]
    png = run.png(f"{stem}.png", s)
    outside = d.get("split") == "outside"
    photos = "outside photos, from other sources than the training's" if outside else "held-out validation photos"
    picks = (
        "Photos like a user's: a threshold chosen on validation files about this share of them, this accurately."
        if outside
        else "sort --target-accuracy picks the threshold from these figures."
    )
    return (
        "<h3>Filing the sure photos (risk-coverage)</h3>"
        + para(
            f"What a confidence threshold (sort --min-confidence) does on the {d['n']} {photos} "
            f"({d['view']}): the share of photos filed into a class, the rest left to a person, and how many of "
            f"those filed are right. {picks}"
        )
        + table(["threshold", "photos filed", "of those right", "filed"], rows, "metrics")
        + (img(png, "risk-coverage curve and per-class figures", 820) if png else "")
    )


def mistakes_html(r, data_root: Path | None, s: Section, k: int = 12) -> str:
    """The surest mistakes as thumbnails, each captioned with the true and the predicted class."""
    from ..data.images import DataError, decode

    if not r.mistakes:
        return para("No mistakes.")
    cells, unseen = [], []
    for m in r.mistakes[:k]:
        caption = f"true {html.escape(m.true)}<br>predicted {html.escape(m.predicted)} ({m.confidence:.2f})"
        try:
            if data_root is None:
                raise DataError("data root unknown")
            photo = (data_root / m.file).resolve()
            if not photo.is_relative_to(data_root.resolve()):  # only the dataset's own images go into a report
                raise DataError(f"{m.file}: outside the data root")
            pic = img(png_bytes(thumbnail(decode(photo))), f"{m.true} predicted as {m.predicted}")
        except DataError as e:
            unseen.append(str(e))
            pic = '<div class="nothumb">image not found</div>'
        cells.append(
            f'<figure class="thumb">{pic}<figcaption>{caption}<br><small>'
            f"{html.escape(m.file)}</small></figcaption></figure>"
        )
    if unseen:
        s.missing.append(f"{len(unseen)} mistake thumbnail(s) not shown, first: {unseen[0]} (--data ROOT)")
    wrong = r.n - sum(r.confusion[i][i] for i in range(len(r.classes)))
    return f"<h3>Surest mistakes ({min(k, len(r.mistakes))} of {wrong})</h3>" + "".join(cells)


def deconv_section(run: RunReader) -> Section:
    s = Section("deconvnet", "Deconvnet: top-9 images per channel (Zeiler & Fergus figure 2)")
    files = sorted(run.path.glob("deconv-top9-*.png"))
    if not files:
        s.missing.append("deconv-top9-<layer>.png: not in the run folder ('heritagelens deconv RUN --top9 --layer L')")
    for f in files:
        png = run.png(f.name, s)
        index = run.json(f.with_suffix(".json").name, s) or {}
        if png is not None:
            why = index.get("shown_because", "")
            s.html += (
                f"<h3>{html.escape(index.get('layer', f.stem))}</h3>"
                + para(
                    "For each channel shown: the deconvnet projections of its 9 strongest activations over the train "
                    f"split (left) and the image patches that caused them (right). Channels shown: {why}."
                )
                + img(png, f.name)
            )
    return s


def gallery_section(run: RunReader) -> Section:
    s = Section("gallery", "Class images (activation maximization) and their scores")
    png = run.png("dream-gallery.png", s)
    meta = run.json("dream-gallery.json", s)
    robust = run.json("robust/eval-val.json", Section("", "")) if (run.path / "robust").is_dir() else None
    if robust is not None:
        s.headline = f"class images made by the robust model (its accuracy on val: {robust['accuracy']:.2%})"
        s.html += para(
            f"Made by the robust model trained beside the standard one (robust/), accuracy {robust['accuracy']:.2%} "
            f"on {split_label('val')}."
        )
    if png is not None:
        s.html += img(png, "class-image gallery")
    if meta is not None:
        s.html += para(
            f"Recipe '{meta.get('preset')}', {meta.get('samples')} images per class, seed {meta.get('seed')}, "
            f"{meta.get('seconds')} s to generate."
        )
        scores_html(meta, s)
    return s


def scores_html(meta: dict, s: Section) -> None:
    """The gallery's score tables (all sets, then per class for this gallery) and its headline, into `s`."""
    scores = meta.get("scores")
    if not scores:
        s.missing.append("dream-gallery.json: no scores (made with --no-score)")
        return
    s.html += (
        "<h3>Quality beside the floor and the ceiling</h3>"
        + para(
            "Judge columns: the fraction of images that an independently trained, adversarially robust classifier "
            "assigns to the intended class. FD: Fréchet distance to real validation images in the robust CNN "
            "judge's features (lower is more natural). Spectrum: distance of the radial power spectrum from real "
            "images' (lower is better). Diversity: spread within a class relative to real images' (1 = as varied "
            "as photographs). The naive-ascent rows are the floor, real validation images the ceiling."
        )
        + table(*score_rows(scores), "scores")
    )
    mine = next((v for k, v in scores.items() if k.endswith("(this gallery)")), None)
    if mine is not None:
        judges = ", ".join(f"{j} {v['recognised']:.0%}" for j, v in mine["judges"].items())
        s.headline = (s.headline or "class images") + f"; recognised by the judges: {judges}; FD {mine['frechet']:.1f}"
        s.html += "<h3>Per class, this gallery</h3>" + table(*per_class_rows(mine, meta["classes"]), "scores")


def timing_section(run: RunReader) -> Section:
    s = Section("timing", "Time per stage")
    summary = run.json("summary.json", s)
    if summary is None:
        return s
    stages = summary.get("stages_seconds")
    if stages is None:  # runs written before stage timing: the minutes they recorded
        g = summary.get("gallery", {})
        minutes = {k: v for k, v in summary.items() if k.endswith("_minutes")}
        minutes |= {"robust model": g.get("robust_train_minutes"), "class images": g.get("minutes")}
        stages = {k.removesuffix("_minutes"): v * 60 for k, v in minutes.items() if v is not None}
    rows = [[k, f"{v / 60:.1f} min", f"{v:.0f} s"] for k, v in stages.items()]
    rows.append(["total", f"{sum(stages.values()) / 60:.1f} min", f"{sum(stages.values()):.0f} s"])
    s.html = table(["stage", "minutes", "seconds"], rows, "timing") + para(
        "'class images' includes training the judges the first time they are needed (they are cached afterwards)."
    )
    compute = summary.get("train_compute")
    if isinstance(compute, dict) and "tflop" in compute:
        sides = ", ".join(f"{n} at {side} px" for side, n in compute["epochs_per_side"].items())
        s.html += para(
            f"Training compute: {compute['tflop']:.1f} TFLOP ({compute['gflop_per_image']:.2f} GFLOP per image at "
            f"full size, forward and backward; epochs {sides}; counted with {compute['counted_with']})."
        )
    chosen = summary.get("precision")
    if isinstance(chosen, dict) and {"mode", "device", "reason"} <= set(chosen):
        s.html += para(f"Precision: {chosen['mode']} on {chosen['device']}: {chosen['reason']}.")
        s.headline = f"ran in {chosen['mode']} on {chosen['device']}, {sum(stages.values()) / 60:.1f} min in all"
    return s


def other_figures_section(run: RunReader, shown: set[str]) -> Section | None:
    """Figures written into the run folder by other commands (deconv --image, dream, evolution...)."""
    own = ("confusion-", "reliability-", "risk-coverage")  # shown in their evaluation sections
    files = [f for f in sorted(run.path.glob("*.png")) if f.name not in shown and not f.name.startswith(own)]
    if not files:
        return None
    s = Section("other", "Other figures in the run folder")
    for f in files:
        png = run.png(f.name, s)
        if png is not None:
            s.html += f"<h3>{html.escape(f.name)}</h3>" + img(png, f.name)
    return s


# ------------------------------------------------------------------------------------------------------- writer


UNEXPECTED = (KeyError, TypeError, ValueError, AttributeError, IndexError)
"""What a piece that parses but does not hold what it should raises while a section is built."""


def safely(reads: str, sid: str, title: str, build_section, *args) -> Section:
    """The section, or when a piece it reads holds something unexpected, an empty one that says so."""
    try:
        return build_section(*args)
    except UNEXPECTED as e:
        return Section(sid, title, missing=[f"{reads}: unexpected content ({type(e).__name__}: {e})"])


def build(run_path: Path | str, data_root: Path | str | None = None) -> tuple[str, list[Section]]:
    """The report's HTML and its sections; `data_root` (default: the run's) is where mistake thumbnails come from."""
    run = RunReader(run_path)
    cfg = run.json("config.json", Section("", ""))
    cfg_root = cfg.get("data", {}).get("root") if isinstance(cfg, dict) else None
    root = Path(data_root) if data_root else Path(cfg_root) if isinstance(cfg_root, str) else None
    sections = [
        safely("config.json", "config", "Configuration", config_section, run),
        safely("split.json", "data", "Data and validation split", data_section, run),
        safely("metrics.csv", "training", "Training curves", training_section, run),
        safely(PRESET_FIGURES.name, "presets", "This run beside the measured presets", presets_section, run),
        safely("eval-*.json", "expect", "What to expect on your photos", expectation_section, run),
    ]
    order = ["eval-val", "eval-source", "eval-test", "eval-outside"]  # the validations, then photos from elsewhere
    evals = sorted(run.path.glob("eval-*.json"), key=lambda f: (order.index(f.stem) if f.stem in order else 4, f.stem))
    for f in evals:
        sections.append(safely(f.name, eval_id(f.name), f"Evaluation ({f.name})", eval_section, run, f.name, root))
    if not evals:
        sections.append(Section("eval-val", "Evaluation", missing=["eval-<split>.json: no split evaluated"]))
    sections += [
        safely("deconv-top9-*.json", "deconvnet", "Deconvnet", deconv_section, run),
        safely("dream-gallery.json", "gallery", "Class images", gallery_section, run),
        safely("summary.json", "timing", "Time per stage", timing_section, run),
    ]
    shown = {f.name for f in run.path.glob("deconv-top9-*.png")} | {"dream-gallery.png"}
    other = other_figures_section(run, shown)
    sections += [other] if other else []
    return page(run, sections), sections


def page(run: RunReader, sections: list[Section]) -> str:
    title = f"HeritageLens run {run.path.resolve().name}"
    return html_page(title, str(run.path.resolve()), sections)


def write_report(
    run_path: Path | str, out: Path | str | None = None, data_root: Path | str | None = None
) -> tuple[Path, list[str]]:
    """Write the report (default `RUN/report.html`) atomically; its path, and what the run folder lacks. Where it
    goes is checked first: a new path, or a regular file to replace (never a folder, a link or a device)."""
    out = Path(out) if out else Path(run_path) / "report.html"
    writable_file(out)
    text, sections = build(run_path, data_root)
    atomic_write_text(text, out)
    return out, [m for s in sections for m in s.missing]
