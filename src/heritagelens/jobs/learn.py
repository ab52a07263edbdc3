"""Learning from a person's review of a sort: the photos they filed by hand fine-tune the sort's model, a share of
those decisions held out to measure it before and after; the new model is a model folder of its own (the old one
is left as it is), and it sorts again the photos the sort left unsure.

The decisions are read from the sort's journal (rows a person decided whose copy is still in its class folder), and
trained on as a data root of links to those copies, in a temporary folder: nothing in the sort is moved or written
until the new model exists, and then only by `heritagelens.sort.sorter.resort`, which journals every move first.
The model keeps every class it knows (`data.classes`), however few of them the decisions name, and its old self is
its teacher (`train.source_teacher`): what it learns from a few photos does not cost it what it knew of the others."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import adapting
from ..errors import HeritageLensError
from ..model.card import BUNDLED
from ..model.checkpoint import config_of, load_model, write_model_folder
from ..model.inference import predict_logits
from ..model.metrics import interval_text, wilson_interval
from ..progress import say
from ..sort.review import sort_settings, sorted_rows
from ..sort.sorter import SortSummary, check_share, resort
from ..train.runs import train_run

MIN_DECISIONS = 20
"""Fewer decisions than this are too few to learn from and to measure on."""

LEARN = [
    "data.val_folds=4",
    "data.source_val=none",
    "train.head_fit=false",
    "train.balanced=false",
    "train.lr=0.02",
    "train.muon_lr=0.02",
    "train.kd_temperature=3",
]
"""How `learn` differs from the 'adapt' recipe: a quarter of the decisions held out (whole groups), none of them
held out as another source; the model's own head kept (a few decisions of a class would fit it badly) and the
whole network trained at a lower rate, its old self teaching (the recipe's `source_teacher`, half the loss) at the
temperature it was measured with."""


class LearnError(HeritageLensError):
    """Nothing to learn from, or nowhere to put what was learnt; one line naming the folder and the problem."""


@dataclass
class Learned:
    """What `learn` did: the new model, the decisions it learnt from and held out, its accuracy on those held out
    before and after, and the sort of the unsure photos with it (None when not asked for)."""

    model: Path
    decisions: int
    trained_on: int
    held_out: int
    right_before: int
    right_after: int
    resorted: SortSummary | None = None

    def text(self) -> str:
        def acc(right: int) -> str:
            return f"{right / self.held_out:.1%} (95% interval {interval_text(wilson_interval(right, self.held_out))})"

        lines = [
            f"learnt from {self.trained_on} of {self.decisions} photos a person filed; the other {self.held_out}, "
            "held out, measure it:",
            f"  before: {acc(self.right_before)}",
            f"  after:  {acc(self.right_after)}",
            f"new model: {self.model} (the old one is left as it was)",
        ]
        if self.resorted is not None:
            lines += ["the photos the sort was unsure of, sorted again with it:", self.resorted.text()]
        return "\n".join(lines)


def learned_folder(source: Path, out: Path) -> Path:
    """Where the new model goes: beside the old model (its run folder or model folder), or beside the sort when the
    old one is the package's own; `<name>-learned-K`, the first K free, an earlier '-learned-K' of the name dropped."""
    own = source.resolve() != BUNDLED.resolve()
    base = (source if source.is_dir() else source.parent) if own else out
    if own and not os.access(base.parent, os.W_OK):
        base = out
    stem = re.sub(r"-learned-\d+$", "", base.name)
    return next(p for k in range(1, 10_000) if not (p := base.parent / f"{stem}-learned-{k}").exists())


def learn(
    out: Path | str,
    model_out: Path | str | None = None,
    sets: list[str] = (),
    again: bool = True,
    min_confidence: float | None = None,
    progress: bool = True,
) -> Learned:
    """Fine-tune the model of the sort in `out` on the photos a person filed there (see the module's words) into the
    model folder `model_out` (default `learned_folder`); with `again`, sort the unsure photos again with it. `sets`:
    settings over the recipe (the 'adapt' recipe with `LEARN`)."""
    out = Path(out)
    check_share("--min-confidence", min_confidence)  # before the training, not after it
    settings = sort_settings(out)
    source = Path(settings["checkpoint"])
    old, classes, ckpt = load_model(source)
    trained_as = config_of(ckpt, source)
    rows = sorted_rows(out, classes)
    decided = [
        r
        for r in rows.values()
        if r.get("decided") == "person" and not r.get("error") and (out / r["copied_to"]).is_file()
    ]
    if len(decided) < MIN_DECISIONS:
        raise LearnError(
            f"{out}: {len(decided)} photo(s) filed by a person; learning needs at least {MIN_DECISIONS} "
            "(file more on the Review tab of 'heritagelens serve')"
        )
    model_out = Path(model_out) if model_out else learned_folder(source, out)
    if model_out.exists():
        raise LearnError(f"{model_out}: exists; give a new --model-out (nothing is ever written over)")
    say(f"learn: {len(decided)} decisions in {out} fine-tune {source}")
    with tempfile.TemporaryDirectory(prefix="heritagelens-learn-") as tmp:
        root = Path(tmp) / "decisions"
        for r in decided:
            link = root / "train" / r["class"] / Path(r["copied_to"]).name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((out / r["copied_to"]).resolve())
        cfg = adapting(trained_as.model, str(source)).override(
            [
                *LEARN,
                f"data.root={root}",
                f"data.cache_dir={Path(tmp) / 'cache'}",
                f"data.classes={json.dumps(classes)}",
                *sets,
            ]
        )
        run = train_run(cfg, Path(tmp) / "run", progress=progress)
        prep = run.prep
        x, y = prep.split.images[prep.val_idx], prep.split.labels[prep.val_idx]
        tta = trained_as.train.tta

        def right(model: torch.nn.Module) -> int:
            return int((predict_logits(model, x, tta=tta).argmax(1) == y).sum())

        before, after = right(old), right(run.model)
        held = {"n": len(y), "accuracy_before": before / len(y), "accuracy_after": after / len(y)}
        origin = {"sort": str(out.resolve()), "model": str(source), "decisions": len(decided)}
        write_model_folder(
            Path(tmp) / "run" / "last.pt",
            model_out,
            made_by={"recipe": "learn", "seed": cfg.train.seed, "learned_from": origin},
            figures={"decisions_held_out": held},
        )
    learned = Learned(model_out, len(decided), len(prep.train_idx), len(y), before, after)
    if again:
        learned.resorted = resort(out, model_out, min_confidence, progress)
    return learned
