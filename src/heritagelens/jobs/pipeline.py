"""The main job (`heritagelens run`): train, calibrate, evaluate on every split there is, draw the deconvnet's
figure-2 grids, make and score the class-image gallery, write `summary.json` and the report."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ROBUST, SGD, SPLIT_NAMES, Config
from ..distributed import init_world
from ..files import atomic_write_json
from ..judging.scores import HEADLINE_JUDGE
from ..model.checkpoint import robust_checkpoint
from ..model.metrics import EvalResult, accuracy_lines
from ..model.network import conv_layer_names
from ..model.precision import Choice, resolve
from ..model.trained import Trained
from ..train.flops import training_flops
from ..train.runs import train_run
from .deconv import write_top9
from .evaluation import calibrate_model, evaluate, evaluation_splits
from .gallery import write_dream
from .report import write_report


@contextmanager
def timed(stages: dict[str, float], name: str):
    """Time the block into `stages[name]` (seconds)."""
    t0 = time.perf_counter()
    yield
    stages[name] = round(time.perf_counter() - t0, 2)


@dataclass
class MainJob:
    """What the main job made, besides its files: the headline figures (as `summary.json` holds them), each split's
    evaluation, and the gallery's score tables."""

    summary: dict
    evaluations: dict[str, EvalResult] = field(default_factory=dict)
    gallery_scores: str = ""
    run: Path | None = None

    def text(self) -> str:
        """What the run made, in the words every face shows it: each split's evaluation, the figures, the class
        images and their scores, then the accuracies with their intervals and where everything is."""
        s, parts = self.summary, []
        for split, r in self.evaluations.items():
            parts.append(f"\n== {split} ({SPLIT_NAMES[split]})\n{r.report()}\n")
        parts.append(f"\ndeconvnet figure 2 grids: {', '.join(s['figures'])}")
        g = s["gallery"]
        made_by = (
            f"a robust model (val accuracy {g['robust_val_accuracy']:.1%})" if g["model"] == "robust" else "the model"
        )
        parts.append(f"\nclass images: {g['figure']}, made by {made_by}")
        if self.gallery_scores:
            parts.append(self.gallery_scores + "\n")
        parts.append(accuracy_lines(self.evaluations.values()))
        parts.append(f"training took {s['train_minutes']:.1f} min; run folder: {self.run}")
        parts.append(f"report: {s['report'] or 'not written (see the warning above)'}")
        return "\n".join(parts)


def main_job(cfg: Config, run_path: Path | str, progress: bool = True) -> MainJob:
    """Train, then evaluate the final weights on validation and, when they exist, the official test split and the
    outside photos (`data.outside`); deconvnet figure-2 grids for the two deepest layers; the class-image gallery
    with its scores; the report.

    Writes `summary.json`: the headline figures, each named by its split, and each stage's time.
    """
    run = Path(run_path)
    stages: dict[str, float] = {}
    w = init_world(cfg.train.device)
    choice = resolve(cfg.train.precision, w.device)  # said once for both models the job trains
    if w.main:
        print(f"heritagelens: {choice.line}", flush=True)
    with timed(stages, "train"):
        model = train_run(cfg, run, progress=progress, precision=choice)
    prep = model.prepared()
    summary = {"train_minutes": round(stages["train"] / 60, 2), "evaluated": "last.pt", "splits": {}}
    job = MainJob(summary, run=run)
    trained_as = model.config  # the epochs a time budget left, not the recipe's
    summary["train_compute"] = training_flops(trained_as, len(prep.train_idx), len(prep.split.classes))
    summary["precision"] = choice.to_dict()
    with timed(stages, "calibrate"):
        cals = calibrate_model(model)
    summary["calibration"] = {k: c.to_dict() for k, c in cals.items()}
    with timed(stages, "evaluate"):
        for split in evaluation_splits(model, test=True):
            job.evaluations[split] = r = evaluate(model, split, out_dir=run)
            summary["splits"][split] = {
                "accuracy": r.accuracy,
                "interval": r.interval,
                "macro_f1": r.macro["f1"],
                "n": r.n,
                "tta": r.tta,
            }
            summary["splits"][split] |= {"holds_out": r.held_out} if r.held_out else {}
    with timed(stages, "deconvnet figures"):  # figure 2 for the two deepest conv layers
        written = write_top9(model, conv_layer_names(model.model)[-2:], run)
    summary["figures"] = [p.name for p in written]
    summary["gallery"], job.gallery_scores = gallery_job(cfg, model, progress, stages, choice)
    summary["stages_seconds"] = stages
    summary["report"] = str(run / "report.html")
    atomic_write_json(summary, run / "summary.json")
    try:  # last, so that it shows every stage's time; a report problem never costs the run its results
        write_report(run)
    except Exception as e:
        summary["report"] = None
        atomic_write_json(summary, run / "summary.json")
        print(f"heritagelens: warning: {run}: report not written ({type(e).__name__}: {e})", file=sys.stderr)
    return job


def robust_config(cfg: Config, standard: Path | str | None = None) -> Config:
    """The robust model trained beside the standard one: the same data, model and seed, the robust recipe; with
    `gallery.robust_from='standard'`, fine-tuned from the `standard` checkpoint (no time budget: its epochs are few)."""
    g = cfg.gallery
    extra = [f"train.init_from={standard}", f"train.lr={g.robust_lr}"] if g.robust_from == "standard" else []
    # ROBUST turns off the colour jitter it replaces; the default recipe's saturation jitter came after it (and the
    # judges' keys hash ROBUST itself), so it is turned off here
    off = ["train.saturation=0"]
    return cfg.override([*ROBUST, *off, *SGD, f"train.epochs={g.robust_epochs}", "train.minutes=0", *extra])


def gallery_job(
    cfg: Config,
    standard: Trained,
    progress: bool = True,
    stages: dict[str, float] | None = None,
    precision: Choice | None = None,
) -> tuple[dict, str]:
    """The class-image gallery of the run of the `standard` model (`dream-gallery.*` in its folder), made from the
    robust model (trained into `robust/`) or the standard one as `cfg.gallery.model` says, scored by the judges;
    returns its headline figures and its score tables."""

    stages = {} if stages is None else stages
    run, source = standard.path.parent, standard
    out: dict = {"model": cfg.gallery.model}
    if cfg.gallery.model == "robust":
        with timed(stages, "robust model"):
            robust = robust_config(cfg, standard.path)
            source = train_run(
                robust, robust_checkpoint(run).parent, progress=progress, like=standard.prep, precision=precision
            )
            r = evaluate(source, "val", out_dir=source.path.parent)
        out["robust_val_accuracy"] = r.accuracy
        out["robust_train_minutes"] = round(stages["robust model"] / 60, 2)
    g = cfg.gallery
    with timed(stages, "class images"):
        made = write_dream(
            source,
            None,
            run,
            cfg.dream,
            "gallery",
            g.samples,
            g.seed,
            score=g.judges,
            judges_dir=g.judges_dir or None,
            judge_extra=g.judge_overrides,
            progress=progress,
            standard_model=standard.model if cfg.gallery.model == "robust" else None,
            floor_samples=g.floor_samples,
        )
    out["figure"] = made.png.name
    for name, s in made.meta.get("scores", {}).items():
        out[name] = {f"{HEADLINE_JUDGE}_recognised": s["judges"][HEADLINE_JUDGE]["recognised"]}
        out[name] |= {"frechet": s["frechet"], "spectrum": s["spectrum"], "diversity": s["diversity"]}
    out["minutes"] = round(stages["class images"] / 60, 2)
    return out, made.text
