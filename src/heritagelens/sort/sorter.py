"""Sorting a photo collection: every image under a folder is classified and copied (or hard-linked) into
`OUT/<class>/`, those the model is unsure of into `OUT/_uncertain/`. Originals are only ever read.

The run streams: photos are decoded a batch at a time while the previous batch is classified and placed, and every
outcome goes to the journal first (see `heritagelens.sort.journal` for the crash-safety contract). So an interrupted
run loses nothing and leaves exactly one copy per photo: running the command again skips what is done (photos
unchanged since, whose copy is still there). One sort at a time holds OUT (a lock). A photo changed since is sorted
again (its old copy removed); a new --min-confidence moves the earlier copies it concerns. A copy never replaces
another: two photos with one flat name get `name~2.ext`. `sort.csv` (file, class, probability, top 3, where it
went, any error) is rewritten from the journal at the end of every run. Probabilities are the checkpoint's
calibrated ones when `heritagelens calibrate` has fitted its temperature.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.images import DataError
from ..model.calibration import Filed, curve, filed_at, measured, threshold_for
from ..model.inference import probabilities
from .inputs import DEFAULT_VIEW, VIEWS, load
from .journal import (
    COLUMNS,
    CSV_NAME,
    JOURNAL,
    META,
    PENDING,
    UNCERTAIN,
    SortError,
    identity,
    journal_line,
    read_journal,
    synced,
    write_csv,
)
from .place import STOPS, check_folders, flat_name, folder_lock, free_name, own_folder, photo_files, photo_in, stage
from .review import sort_settings
from .xmp import sidecar_tag


@dataclass
class SortSummary:
    sorted: int = 0
    skipped: int = 0
    """Already done by an earlier run."""
    unreadable: int = 0
    moved: int = 0
    """Copies of earlier runs moved because --min-confidence changed."""
    per_class: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    csv: Path | None = None
    calibrated: bool = False
    min_confidence: float = 0.5
    sidecars: Counter = field(default_factory=Counter)
    """XMP sidecars 'written', 'unchanged' (they said so already) and 'failed' (a row per folder in sort.csv)."""
    expected: Filed | None = None
    """What `min_confidence` does on the model's measured photos (when they were measured): its outside photos when
    its card holds them (the bundled model's), else its held-out validation photos."""
    expected_on: str = ""
    """Which photos `expected` was measured on, in words."""
    out: Path | None = None
    model: str = ""
    """The model that sorted, as the command named it."""
    xmp: bool = False

    def text(self) -> str:
        """What the sort did, in the words every face shows it (the command's output, the notebook's, the app's)."""
        csv_path = (self.out or Path(".")) / CSV_NAME
        lines = []
        if self.expected:
            lines.append(f"--min-confidence {self.expected.line()}, on {self.expected.n:,} {self.expected_on}")
        lines.append(
            f"sorted {self.sorted} photo(s) in {self.seconds:.1f} s ({self.images_per_s:.0f} images/s) into {self.out}"
        )
        for name, n in sorted(self.per_class.items(), key=lambda kv: (kv[0] == UNCERTAIN, kv[0])):
            note = f" (top-class probability below {self.min_confidence:.2f})" if name == UNCERTAIN else ""
            lines.append(f"  {name:<18}{n:>7}{note}")
        if self.skipped:
            lines.append(f"skipped {self.skipped} photo(s) sorted by an earlier run")
        if self.moved:
            lines.append(
                f"moved {self.moved} earlier copies to the folders --min-confidence "
                f"{self.min_confidence:.2f} gives them"
            )
        if self.unreadable:
            lines.append(f"{self.unreadable} file(s) could not be read: listed with the reason in {csv_path}")
        if self.xmp:
            n = self.sidecars
            failed = f", {n['failed']} not written (their folders are in {CSV_NAME})" if n["failed"] else ""
            lines.append(f"XMP sidecars beside the photos: {n['written']} written, {n['unchanged']} up to date{failed}")
        lines.append(f"every photo, its class, probability and top 3: {csv_path}")
        if not self.calibrated:
            lines.append(
                f"note: {self.model} is not calibrated; 'heritagelens calibrate' makes its probabilities, "
                "and so --min-confidence, mean what they say"
            )
        return "\n".join(lines)

    @property
    def done(self) -> int:
        return self.sorted + self.unreadable

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


def check_settings(out: Path, settings: dict) -> None:
    """An output folder an earlier sort wrote must have been sorted from the same folder, model and view."""
    f = out / META
    if not f.exists():
        return
    try:
        before = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        before = None
    if not isinstance(before, dict):
        raise SortError(f"{f}: unreadable; give a new output folder")
    for key, what in (
        ("photos", "photo folder"),
        ("checkpoint", "model"),
        ("temperature", "calibration"),
        ("view", "--view"),
    ):
        if before.get(key) != settings[key]:
            raise SortError(
                f"{out}: sorted earlier with another {what} ({before.get(key)}, now {settings[key]}); "
                "give a new output folder"
            )


BATCH_SIZE = 64
"""Photos a sort classifies at a time."""


def sort_photos(
    checkpoint: Path | str,
    photos: Path | str,
    out: Path | str,
    min_confidence: float | None = None,
    link: bool = False,
    how: str = DEFAULT_VIEW,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    target_accuracy: float | None = None,
    xmp: bool = False,
) -> SortSummary:
    """Sort every photo under `photos` into `out` (see the module docstring); returns the counts. A photo is filed
    when its top probability reaches `min_confidence` (default 0.5), or the threshold at which the model's measured
    photos (`measured_photos`) were `target_accuracy` right. With `xmp`, every photo's XMP sidecar says its class
    (`heritagelens.sort.xmp`)."""
    from ..files import atomic_write_json
    from ..model.checkpoint import checkpoint_file, load_model, temperature

    photos, out = Path(photos), Path(out)
    if how not in VIEWS:
        raise SortError(f"unknown view '{how}'; known: {', '.join(VIEWS)}")
    if min_confidence is not None and target_accuracy is not None:
        raise SortError("--min-confidence and --target-accuracy: give one of them")
    for name, v in (("--min-confidence", min_confidence), ("--target-accuracy", target_accuracy)):
        check_share(name, v)
    check_folders(photos, out)
    if next(photo_files(photos, []), None) is None:
        raise SortError(f"{photos}: no files to sort")
    model, classes, ckpt = load_model(checkpoint)
    t = temperature(ckpt, tta=False)
    min_confidence, expected, expected_on = meaning(ckpt, checkpoint, min_confidence, target_accuracy)
    settings = {
        "photos": str(photos.resolve()),
        "checkpoint": str(checkpoint_file(checkpoint).resolve()),
        "temperature": t,
        "view": how,
    }
    plan = Plan(photos, out, min_confidence, link, how, model_name(checkpoint) if xmp else "")
    summary = SortSummary(
        calibrated=t is not None,
        min_confidence=min_confidence,
        expected=expected,
        expected_on=expected_on,
        out=out,
        model=str(checkpoint),
        xmp=xmp,
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out):
            check_settings(out, settings)
            run = _Sort(model, classes, t or 1.0, plan, summary)
            before = sort_settings(out) if (out / META).exists() else {}
            ran = {"min_confidence": min_confidence, "link": link, "xmp": xmp or bool(before.get("xmp"))}
            atomic_write_json({**before, **settings, **ran}, out / META)
            return run.go(batch_size, progress)
    except OSError as e:  # a full disk while writing the journal or the CSV, a folder that cannot be made
        raise SortError(_disk_message(e, out, summary)) from None


def check_share(name: str, v: float | None) -> None:
    """A threshold or an accuracy given (`name`, its flag): None, or between 0 and 1."""
    if v is not None and not 0 <= v <= 1:
        raise SortError(f"{name} {v}: must be between 0 and 1")


def resort(
    out: Path | str, checkpoint: Path | str, min_confidence: float | None = None, progress: bool = True
) -> SortSummary:
    """Make `checkpoint` the model of the sort in `out` and sort again with it the photos waiting in `_uncertain/`
    that no person decided (and any photo new or changed since): those it is sure of move to their class folders,
    each move journaled before it is made, as every sort move is. Every other photo stays where it is, a person's
    decisions above all; the sort's settings keep the models that sorted before (`earlier`). The threshold is the
    sort's own unless `min_confidence` gives another; the model must know every class the sort filed into."""
    from ..files import atomic_write_json
    from ..model.checkpoint import checkpoint_file, load_model, temperature

    out = Path(out)
    check_share("--min-confidence", min_confidence)
    before = sort_settings(out)
    model, classes, ckpt = load_model(checkpoint)
    t = temperature(ckpt, tta=False)
    folders = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")} - {UNCERTAIN}
    if unknown := sorted(folders - set(classes)):
        raise SortError(f"{checkpoint}: does not know class '{unknown[0]}' of the sort in {out}: cannot sort it again")
    min_confidence = before.get("min_confidence", 0.5) if min_confidence is None else min_confidence
    xmp = bool(before.get("xmp"))
    photos = Path(before["photos"])
    summary = SortSummary(
        calibrated=t is not None, min_confidence=min_confidence, out=out, model=str(checkpoint), xmp=xmp
    )
    earlier = {"checkpoint": before.get("checkpoint"), "temperature": before.get("temperature")}
    settings = {
        **before,
        "checkpoint": str(checkpoint_file(checkpoint).resolve()),
        "temperature": t,
        "min_confidence": min_confidence,
        "earlier": [*before.get("earlier", []), earlier],
    }
    try:
        with folder_lock(out):
            rows = read_journal(out, classes)
            again = frozenset(
                f
                for f, r in rows.items()
                if (r.get("copied_to") or "").split("/")[0] == UNCERTAIN and not r.get("decided") and not r.get("error")
            )
            how, link = before.get("view", DEFAULT_VIEW), bool(before.get("link"))
            plan = Plan(photos, out, min_confidence, link, how, model_name(checkpoint) if xmp else "", again)
            run = _Sort(model, classes, t or 1.0, plan, summary)
            atomic_write_json(settings, out / META)
            return run.go(BATCH_SIZE, progress)
    except OSError as e:
        raise SortError(_disk_message(e, out, summary)) from None


@dataclass(frozen=True)
class Plan:
    """What one sort does, settled before it starts."""

    photos: Path
    out: Path
    min_confidence: float = 0.5
    """A photo is filed in its class's folder when its top probability reaches this, else in `_uncertain/`."""
    link: bool = False
    """Hard links instead of copies."""
    how: str = DEFAULT_VIEW
    """How a photo becomes the model's input (`inputs.VIEWS`)."""
    xmp_model: str = ""
    """With a model's name: XMP sidecars are written beside the photos, saying that model's classes."""
    again: frozenset[str] = frozenset()
    """Photos (as `sort.csv` names them) sorted again though unchanged since: those a new model sorts (`resort`)."""


def model_name(checkpoint: Path | str) -> str:
    """How a sidecar names the model: 'HeritageLens bundled model' or the checkpoint's file."""
    from ..model.card import BUNDLED
    from ..model.checkpoint import checkpoint_file

    return "HeritageLens bundled model" if Path(checkpoint) == BUNDLED else str(checkpoint_file(checkpoint).resolve())


def measured_photos(ckpt: dict) -> tuple[dict[str, list] | None, str]:
    """The photos a threshold's meaning is measured on, as (each photo's calibrated prediction, what they are): a
    model folder's outside photos when its card holds them (photos from other sources than the training's, like a
    user's), else the held-out validation photos its calibration measured; (None, '') when neither."""
    card, calibration = ckpt.get("card"), ckpt.get("calibration")
    outside = measured(card.get("outside_predictions") if isinstance(card, dict) else None)
    if outside:
        return outside, "outside photos (other sources than the training's)"
    plain = calibration.get("plain") if isinstance(calibration, dict) else None
    held = measured(plain.get("held_out") if isinstance(plain, dict) else None)
    return (held, "held-out validation photos") if held else (None, "")


def meaning(ckpt: dict, checkpoint: Path | str, min_confidence: float | None, target: float | None):
    """(the threshold to sort at, what it does on the model's measured photos or None when not measured, which
    photos those are)."""
    held, on = measured_photos(ckpt)
    if target is None:
        min_confidence = 0.5 if min_confidence is None else min_confidence
        return min_confidence, filed_at(held, min_confidence) if held else None, on
    if not held:
        raise SortError(
            f"{checkpoint}: --target-accuracy needs the held-out figures that 'heritagelens calibrate' measures: "
            "calibrate it (again)"
        )
    pick = threshold_for(held, target)
    if pick is None:
        best = max(curve(held)[2])
        raise SortError(f"--target-accuracy {target}: no threshold reaches it on the {on} (best {best:.1%})")
    return pick.threshold, pick, on


class _Sort:
    """One sort of `plan` by `model` (its `classes`, its temperature `t`): the decoding pool, the journal, and the
    counts, into `summary`."""

    def __init__(self, model, classes: list[str], t: float, plan: Plan, summary: SortSummary):
        self.model, self.classes, self.t, self.plan, self.summary = model, classes, t, plan, summary
        self.photos, self.out, self.min_confidence = plan.photos, plan.out, plan.min_confidence
        self.link, self.how, self.xmp_model = plan.link, plan.how, plan.xmp_model
        self.done = read_journal(plan.out, classes)
        self.journal = None
        self.checked: set[str] = set()

    def go(self, batch_size: int, progress: bool) -> SortSummary:
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        journal = self.out / JOURNAL
        if journal.exists():  # a line torn by a crash (the last, without its newline) is cut off
            whole = journal.read_bytes()
            if whole and not whole.endswith(b"\n"):
                os.truncate(journal, whole.rfind(b"\n") + 1)
        self.journal = journal.open("a", encoding="utf-8")
        try:
            self.reconcile()
            self.rethreshold()
            problems: list[tuple[str, str]] = []
            bar = tqdm(unit="img", disable=not progress, dynamic_ncols=True, desc="sorting")
            with ThreadPoolExecutor(2) as pool:
                pending = None
                for chunk in _batches(self.todo(problems), batch_size):
                    decoded = pool.map(self.decode, chunk)  # decodes while the previous batch is placed
                    if pending is not None:
                        self.finish(*pending)
                        bar.update(len(pending[0]))
                        bar.set_postfix(img_s=f"{self.summary.done / (time.perf_counter() - t0):.0f}")
                    pending = (chunk, list(decoded))
                if pending is not None:
                    self.finish(*pending)
                    bar.update(len(pending[0]))
            bar.close()
            for rel, problem in problems:
                self.record({"file": rel, "error": problem, "identity": None})
            self.sync()
        finally:
            with contextlib.suppress(OSError):
                self.journal.close()
        unwritable = self.write_sidecars() if self.xmp_model else {}
        self.summary.seconds = time.perf_counter() - t0
        self.summary.csv = write_csv(self.out, self.done | unwritable)
        return self.summary

    def write_sidecars(self) -> dict[str, dict]:
        """Bring every sorted photo's sidecar in line with the journal (its class when filed, else no keyword);
        sidecars that say so already are left alone. Returns a `sort.csv` row per folder where one could not be
        written or read."""
        from .xmp import XmpError, write_sidecar

        def one(row: dict) -> tuple[str, str]:
            """('written' or 'unchanged', '') or ('failed', the problem)."""
            try:
                photo, shared = photo_in(self.photos, row["file"]), stems[stem(row["file"])] > 1
                written = write_sidecar(photo, sidecar_tag(row, self.xmp_model), shared)
                return "written" if written else "unchanged", ""
            except (XmpError, SortError) as e:
                return "failed", str(e)

        def stem(file: str) -> tuple[str, str]:
            folder, _, name = file.rpartition("/")
            return folder, Path(name).stem

        stems = Counter(stem(f) for f in self.done)  # pair.jpg and pair.png: neither takes pair.xmp
        rows = [r for r in self.done.values() if r.get("copied_to") and not r.get("error")]
        problems: dict[str, dict] = {}
        with ThreadPoolExecutor(4) as pool:  # mostly waiting on the disk
            for row, (outcome, problem) in zip(rows, pool.map(one, rows)):
                self.summary.sidecars[outcome] += 1
                if problem:
                    folder = Path(row["file"]).parent.as_posix() + "/"
                    problems.setdefault(folder, {"file": folder, "error": f"XMP sidecar(s) not written: {problem}"})
        return problems

    def todo(self, problems: list) -> Iterator[tuple[Path, str, list[int]]]:
        """The photos not yet sorted as they are now (new, changed, failed before, or whose copy is gone)."""
        for path in photo_files(self.photos, problems):
            rel = path.relative_to(self.photos).as_posix()
            try:
                ident = identity(path)
            except OSError:
                continue  # gone since the walk listed it
            row = self.done.get(rel)
            done = row and not row.get("error") and row.get("identity") == ident and rel not in self.plan.again
            if done and (self.out / row["copied_to"]).exists():
                self.summary.skipped += 1
                continue
            yield path, rel, ident

    def decode(self, item: tuple[Path, str, list[int]]) -> np.ndarray | str:
        try:
            return load(item[0], self.how)
        except DataError as e:
            return str(e).removeprefix(f"{item[0]}: ")

    def folder(self, cls: str, p: float) -> str:
        return cls if p >= self.min_confidence else UNCERTAIN

    def where(self, dest: Path) -> str:
        """How the journal names a copy at `dest`: its path below OUT. Called between a photo's copy being staged
        and its row being made: the window a stop must not leave a copy in unrecorded (a test stops there)."""
        return dest.relative_to(self.out).as_posix()

    def into(self, name: str) -> Path:
        """`OUT/<name>` once checked to be the sort's own folder (`own_folder`), checked once a run."""
        if name not in self.checked:
            own_folder(self.out, name)
            self.checked.add(name)
        return self.out / name

    def finish(self, chunk: list, decoded: list) -> None:
        """Classify a decoded batch and place its photos in two phases: each is copied under a pending name, the
        batch's rows are journaled and synced, and only then do the copies take their names. Whatever stops the
        batch (a full disk, Ctrl-C), the photos placed so far are recorded and named first."""
        good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        if good:
            x = torch.from_numpy(np.concatenate([decoded[i] for i in good]))
            probs = probabilities(self.model, x, self.t)
            probs = probs.reshape(len(good), -1, len(self.classes)).mean(1)
        rows, staged = [], {}  # staged: destination -> pending copy
        try:
            for j, i in enumerate(good):
                path, rel, ident = chunk[i]
                top = probs[j].topk(min(3, len(self.classes)))
                best, p = self.classes[int(top.indices[0])], float(top.values[0])
                top3 = "; ".join(f"{self.classes[int(k)]} {float(v):.3f}" for v, k in zip(top.values, top.indices))
                row = {"file": rel, "class": best, "probability": f"{p:.4f}", "top3": top3, "identity": ident, "p": p}
                old = self.done.get(rel, {}).get("copied_to")
                dest = self.into(self.folder(best, p)) / flat_name(Path(rel))
                dest = free_name(dest, staged.keys(), self.out / old if old else None)
                try:
                    staged[dest] = stage(path, dest, self.link)
                    row["copied_to"] = self.where(dest)
                except OSError as e:
                    if e.errno in STOPS:
                        raise
                    row["error"] = f"cannot copy into {self.out}: {e.strerror or e}"
                rows.append(row)
            for item, d in zip(chunk, decoded):
                if isinstance(d, str):
                    rows.append({"file": item[1], "error": d, "identity": item[2]})
        finally:
            self.commit(rows, staged)

    def commit(self, rows: list[dict], staged: dict[Path, Path]) -> None:
        """Journal `rows` (dropping the earlier copies they replace), sync, then give the staged copies their names:
        only those a journaled row names. A copy staged for no row (a stop between staging a photo and making its
        row) is removed: named, it would be a copy the journal does not know, and the next run would copy it again."""
        for row in rows:
            self.drop_old_copy(row["file"])
            self.record(row)
        self.sync()
        named = {self.out / row["copied_to"] for row in rows if row.get("copied_to")}
        for dest, tmp in staged.items():
            if dest in named:
                os.replace(tmp, dest)
            else:
                tmp.unlink(missing_ok=True)

    def reconcile(self) -> None:
        """Undo what a killed run left half-done: copies staged but never recorded are removed, and a move the
        journal records but that had not happened yet is made."""
        for folder in (self.out / f for f in [*self.classes, UNCERTAIN]):
            if folder.is_dir() and not folder.is_symlink():
                for f in folder.iterdir():
                    if PENDING.match(f.name):
                        f.unlink(missing_ok=True)
        held = {row.get("copied_to") for row in self.done.values()}
        for row in self.done.values():
            old, new = row.get("moved_from"), row.get("copied_to")
            if old and new and old not in held and not (self.out / new).exists() and (self.out / old).exists():
                os.replace(self.out / old, self.out / new)

    def drop_old_copy(self, rel: str) -> None:
        """Remove the copy an earlier run made of a photo that changed since (it may belong in another folder)."""
        old = self.done.get(rel, {}).get("copied_to")
        if old:
            (self.out / old).unlink(missing_ok=True)

    def rethreshold(self) -> None:
        """Move the copies of earlier runs whose folder a new --min-confidence changes: each move is journaled
        (with where it came from) and synced before it is made, so `reconcile` can finish it after a kill."""
        moves: dict[Path, Path] = {}  # destination -> source
        for row in list(self.done.values()):
            old = row.get("copied_to")
            if not old or row.get("error") or row.get("decided"):  # a person's decision is not the threshold's
                continue
            if row["file"] in self.plan.again:  # sorted again by this run
                continue
            want = self.folder(row["class"], row["p"])
            if old.split("/")[0] != want and (self.out / old).exists():
                dest = free_name(self.into(want) / flat_name(Path(row["file"])), moves.keys())
                self.record({**row, "copied_to": dest.relative_to(self.out).as_posix(), "moved_from": old}, count=False)
                moves[dest] = self.out / old
        self.sync()
        for dest, src in moves.items():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            self.summary.moved += 1

    def record(self, row: dict, count: bool = True) -> None:
        row = {c: "" for c in COLUMNS} | row
        self.journal.write(journal_line(row))
        self.done[row["file"]] = row
        if not count:
            return
        if row["error"]:
            self.summary.unreadable += 1
        else:
            self.summary.sorted += 1
            self.summary.per_class[row["copied_to"].split("/")[0]] += 1

    def sync(self) -> None:
        synced(self.journal)


def _batches(items: Iterator, n: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _disk_message(e: OSError, out: Path, s: SortSummary) -> str:
    what = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EROFS: "the output folder is on a read-only file system",
        errno.EXDEV: "cannot hard-link across file systems (drop --link)",
    }
    problem = what.get(e.errno, e.strerror or type(e).__name__)
    return (
        f"{e.filename or out}: {problem}; stopped after sorting {s.sorted} photo(s) this run, each recorded in "
        f"{out / JOURNAL}; run the command again to continue"
    )
