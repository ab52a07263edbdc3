"""A person's review of a sort: filing a photo by hand, and taking that back."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .journal import CSV_NAME, JOURNAL, META, SortError, journal_line, read_journal, synced, write_csv
from .place import flat_name, folder_lock, free_name, own_folder, photo_in
from .xmp import sidecar_tag


def sorted_rows(out: Path | str, classes: list[str]) -> dict[str, dict]:
    """The rows of an earlier sort into `out` (as its journal records them), by photo."""
    out = Path(out)
    if not (out / META).exists():
        raise SortError(f"{out}: not a folder 'heritagelens sort' wrote (no {META})")
    return read_journal(out, classes)


def sort_settings(out: Path | str) -> dict:
    """The settings the first sort into `out` recorded: photo folder, model, calibration, view."""
    f = Path(out) / META
    try:
        settings = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        settings = None
    if not isinstance(settings, dict) or not isinstance(settings.get("photos"), str):
        raise SortError(f"{f}: unreadable; not a folder 'heritagelens sort' wrote")
    return settings


def refile(out: Path | str, file: str, cls: str, classes: list[str]) -> dict[str, dict]:
    """A person files photo `file` (as `sort.csv` names it) into class `cls`: its copy moves to `OUT/<cls>/`, the move
    is journaled and synced before it is made (as every sort move is), `sort.csv` is rewritten, and the photo's XMP
    sidecar, when a sort wrote one, says the new class. Returns every row of the sort, the photo's new one in it."""
    return decide(out, file, cls, classes)[0]


@dataclass(frozen=True)
class Decision:
    """What one person's decision changed in a sort, enough to take it back byte for byte (`undo`)."""

    out: Path
    file: str
    before: str
    """Where the copy was (`copied_to`, relative to `out`)."""
    after: str
    journal: tuple[int, int]
    """The journal's length before and after the decision."""
    csv: bytes
    """`sort.csv` before it."""
    sidecar: Path | None
    sidecar_bytes: bytes | None
    """The photo's sidecar before it (None: the decision wrote none)."""


def decide(out: Path | str, file: str, cls: str, classes: list[str]) -> tuple[dict[str, dict], Decision]:
    """`refile`, and what it changed (`Decision`), so that `undo` can take it back."""
    from .xmp import XmpError, retag_sidecar

    out = Path(out)
    if cls not in classes:
        raise SortError(f"unknown class '{cls}'; known: {', '.join(classes)}")
    with folder_lock(out):
        done = sorted_rows(out, classes)
        row = done.get(file)
        if row is None or row.get("error") or not row.get("copied_to"):
            raise SortError(f"{out}: '{file}' is not a photo this sort filed")
        photo = photo_in(Path(sort_settings(out)["photos"]), file)
        journal_size, csv_bytes = (out / JOURNAL).stat().st_size, (out / CSV_NAME).read_bytes()
        old = row["copied_to"]
        dest = free_name(own_folder(out, cls) / flat_name(Path(file)), mine=out / old)
        new = {
            **row,
            "class": cls,
            "copied_to": dest.relative_to(out).as_posix(),
            "moved_from": old,
            "decided": "person",
            "model_class": row.get("model_class") or row["class"],
        }
        if not (out / old).is_file():
            raise SortError(f"{out / old}: the copy of {file} is gone (moved or deleted since the sort); nothing filed")
        with (out / JOURNAL).open("a", encoding="utf-8") as journal:
            journal.write(journal_line(new))
            synced(journal)
        if dest != out / old:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(out / old, dest)
            except OSError as e:  # gone in the instant since, or a folder that cannot be written: no move recorded
                with (out / JOURNAL).open("r+b") as journal:
                    journal.truncate(journal_size)
                    synced(journal)
                raise SortError(f"{out / old}: cannot be moved ({e.strerror or e}); nothing filed") from None
        done[file] = new
        write_csv(out, done)
        try:  # when a sort wrote the sidecar: it says the person's class now, naming the same model
            side, side_bytes = retag_sidecar(photo, lambda tag: sidecar_tag(new, tag.model)) or (None, None)
        except XmpError as e:
            new["sidecar_error"] = str(e)
            side, side_bytes = None, None
        after = (out / JOURNAL).stat().st_size
    d = Decision(out, file, old, new["copied_to"], (journal_size, after), csv_bytes, side, side_bytes)
    return done, d


def undo(d: Decision, classes: list[str]) -> dict[str, dict]:
    """Take decision `d` back: the copy returns where it was, and the journal, `sort.csv` and the photo's sidecar
    are as they were, byte for byte. Refused (one line, nothing changed) when the sort has been written since."""
    from ..files import atomic_write_bytes

    out = d.out
    with folder_lock(out):
        if (out / JOURNAL).stat().st_size != d.journal[1]:
            raise SortError(f"{out}: the sort has changed since {d.file} was filed; that decision cannot be undone")
        if not (out / d.after).is_file():
            raise SortError(f"{out / d.after}: gone; the decision on {d.file} cannot be undone")
        if d.before != d.after and (out / d.before).exists():
            raise SortError(f"{out / d.before}: exists again; {d.file} cannot go back there")
        if d.before != d.after:
            os.replace(out / d.after, out / d.before)
        with (out / JOURNAL).open("r+b") as journal:
            journal.truncate(d.journal[0])
            synced(journal)
        atomic_write_bytes(d.csv, out / CSV_NAME)
        if d.sidecar is not None:
            atomic_write_bytes(d.sidecar_bytes, d.sidecar)
        return sorted_rows(out, classes)


class Reviewer:
    """A person's review of the sorts one model made: the photos waiting in one folder of a sort, filed by hand,
    and this session's decisions, which can be taken back last first. Every face (the web page, a notebook) reviews
    through it."""

    def __init__(self, checkpoint: Path | str, classes: list[str]):
        from ..model.checkpoint import checkpoint_file

        self.model = str(checkpoint_file(checkpoint).resolve())
        self.classes = list(classes)
        self.decisions: list[Decision] = []
        """This session's decisions, the last one last: what `undo_last` takes back."""

    def sort_in(self, folder: str) -> tuple[Path, dict]:
        """(output folder, its settings) of the sort into `folder`, once it is one this model made; else a
        one-line `SortError`."""
        out = Path(folder or "").expanduser()
        try:
            there = bool(folder) and out.is_dir()
        except OSError as e:  # a name too long for the file system, a folder that cannot be read
            raise SortError(f"{str(folder)[:200]}: {e.strerror or e}") from None
        if not there:
            raise SortError(f"{str(folder or '(none)')[:200]}: no such folder; give the --out folder of a sort")
        settings = sort_settings(out)
        if settings.get("checkpoint") != self.model:
            raise SortError(f"{out}: sorted with {settings.get('checkpoint')}; serve that model to review it")
        return out, settings

    def queue(self, folder: str, where: str, rows: dict | None = None) -> tuple[Path, Path, list[dict]]:
        """(output folder, photo folder, the rows filed in `where`, a class or `UNCERTAIN`, in file order) of the
        sort into `folder`, once it is one this model made (`sort_in`); `rows`, the sort's rows when just read."""
        out, settings = self.sort_in(folder)
        rows = sorted_rows(out, self.classes) if rows is None else rows
        queue = [r for _, r in sorted(rows.items()) if not r.get("error") and r["copied_to"].split("/")[0] == where]
        return out, Path(settings["photos"]), queue

    def file(self, folder: str, where: str, files: list[str], cls: str) -> list[str]:
        """File each of `files` that still waits in `where` into class `cls`, each decision kept for `undo_last`;
        returns those filed. A photo filed out of the queue already (a decision sent twice) is never filed again."""
        out, _, queue = self.queue(folder, where)
        waiting, filed = {r["file"] for r in queue}, []
        for file in files:
            if file in waiting:
                _, d = decide(out, file, cls, self.classes)
                self.decisions.append(d)
                filed.append(file)
        return filed

    def undo_last(self) -> tuple[Decision, dict[str, dict]] | None:
        """Take this session's last decision back (`undo`): (that decision, the sort's rows now); None when there
        is none to take back."""
        if not self.decisions:
            return None
        rows = undo(self.decisions[-1], self.classes)
        return self.decisions.pop(), rows
