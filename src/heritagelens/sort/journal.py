"""The journal of a sort, and the crash-safety contract it keeps.

A sort appends one JSON line per photo to `OUT/.heritagelens-sort.jsonl` (`JOURNAL`) and syncs it before any copy
takes its name: a copy is made under a hidden pending name (`place.stage`), the batch's rows are journaled and
synced, and only then are the copies renamed. So whatever stops a sort (a full disk, Ctrl-C, a kill), the journal
knows every named copy, the next run removes the pending ones it does not know, and finishes a journaled move that
had not happened yet. The journal is data from disk: a row is acted on only when it is one this sort wrote, names a
photo below the photo folder (`photo_path_ok`) and a copy directly in one of OUT's class folders (`_Inside`). A line
torn by a crash (the last, without its newline) is cut off. `sort.csv` is the journal as a table, rewritten from it
at the end of every run and after every decision (`write_csv`)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from pathlib import Path

from ..data.classes import UNSURE_FOLDER
from ..errors import HeritageLensError

UNCERTAIN = UNSURE_FOLDER
JOURNAL = ".heritagelens-sort.jsonl"
META = ".heritagelens-sort.json"
"""The settings of the first run into an output folder (photo folder, model, calibration, view): later runs into it
must match them."""
LOCK = ".heritagelens-sort.lock"
PENDING = re.compile(r"^\.[0-9a-f]{12}\.(pending|tmp)$")
"""Names of copies placed but not yet recorded in the journal: removed when a sort starts (a killed run's)."""
CSV_NAME = "sort.csv"
COLUMNS = ("file", "class", "probability", "top3", "copied_to", "error", "decided")
"""`decided` is 'person' once someone filed the photo by hand (`refile`): `class` is then theirs, `probability` and
`top3` stay the model's, and no later sort moves it."""


class SortError(HeritageLensError):
    """Nothing could be sorted, or the run had to stop; one line naming the path and the problem."""


def shown(name: str) -> str:
    """A file name as text any program reads: bytes that are not UTF-8 (a name from another system) as `\\xe9`."""
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate no file system name decodes to
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def identity(path: Path) -> list[int]:
    """Size and modification time: a photo changed since it was sorted is sorted again."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def read_journal(out: Path, classes: list[str]) -> dict[str, dict]:
    """The rows of earlier runs by file, the last one of each file winning. A line torn by a crash (the last, without
    its newline) is ignored; any other line that is not a row of this sort is refused with one warning: a journal is
    data from disk, so a row whose copy lies outside `out`'s class folders, or whose class is not one of `classes`,
    is never acted on."""
    f = out / JOURNAL
    if not f.exists():
        return {}
    rows, refused = {}, []
    lines = f.read_bytes().split(b"\n")
    inside = _Inside(out, [*classes, UNCERTAIN])
    for n, raw in enumerate(lines, 1):
        row = _journal_row(raw, inside, classes)
        if row is not None:
            rows[row["file"]] = row
        elif raw.strip() and n < len(lines):
            refused.append(n)
    if refused:
        shown = ", ".join(map(str, refused[:5])) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
        print(
            f"heritagelens: warning: {f}: line {shown} refused (not a row of this sort, or a path outside {out}); "
            "those photos are sorted again",
            file=sys.stderr,
        )
    return rows


def _journal_row(raw: bytes, inside: _Inside, classes: list[str]) -> dict | None:
    """The journal row in `raw` when it is one this sort wrote (its probability as a number in `p`), else None."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(row, dict) or not isinstance(row.get("file"), str):
        return None
    if not photo_path_ok(row["file"], folder_row=not row.get("copied_to")):
        return None
    copied, cls, error = (row.get(k) or "" for k in ("copied_to", "class", "error"))
    if not all(isinstance(v, str) for v in (copied, cls, error)) or cls and cls not in classes:
        return None
    moved = row.get("moved_from") or ""
    if not isinstance(moved, str) or any(p and not inside(p) for p in (copied, moved)):
        return None
    if copied and not cls or cls and not copied and not error:
        return None
    if not all(isinstance(row.get(k) or "", str) for k in ("top3", "model_class", "decided", "probability")):
        return None
    if not copied:  # a photo that could not be read: nothing was measured
        return {**row, "p": 0.0}
    try:
        p = float(row.get("p", row.get("probability")))
    except (TypeError, ValueError):
        return None
    return {**row, "p": p} if 0 <= p <= 1 else None  # NaN too


def photo_path_ok(rel: str, folder_row: bool = False) -> bool:
    """Whether `rel` names a photo below the photo folder as `photo_files` lists them: relative, forward slashes, no
    '..', no hidden part (with `folder_row`, a folder's own row, ending in '/', is one too)."""
    if folder_row and rel.endswith("/"):
        rel = rel[:-1]
    parts = rel.split("/")
    return (
        bool(rel)
        and "\0" not in rel
        and not rel.startswith("/")
        and not any(p in ("", ".", "..") or p.startswith(".") for p in parts)
        and not (os.sep != "/" and ("\\" in rel or ":" in rel))
    )


class _Inside:
    """Whether a journal path names a file directly in one of `out`'s `folders` and resolves there (no '..', no
    symbolic link, no class folder linked elsewhere). Each folder is resolved and listed once per reading of the
    journal, so that a journal of 10,000 photos is read in a fraction of a second."""

    def __init__(self, out: Path, folders: list[str]):
        self.out, self.folders, self.home, self.ok, self.links = out, set(folders), out.resolve(), {}, {}

    def __call__(self, rel: str) -> bool:
        parts = rel.split("/")
        if len(parts) != 2 or parts[0] not in self.folders or parts[1] in ("", ".", "..") or "\\" in rel or "\0" in rel:
            return False
        folder = parts[0]
        if folder not in self.ok:
            self.ok[folder] = (self.out / folder).resolve().parent == self.home
            try:
                with os.scandir(self.out / folder) as entries:
                    self.links[folder] = {e.name for e in entries if e.is_symlink()}
            except OSError:  # not there (yet): nothing in it is a link
                self.links[folder] = set()
        return self.ok[folder] and parts[1] not in self.links[folder]


def write_csv(out: Path, rows: dict[str, dict]) -> Path:
    from ..files import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows({**rows[k], "file": shown(k), "copied_to": shown(rows[k].get("copied_to") or "")} for k in sorted(rows))
    return atomic_write_text(buf.getvalue(), out / CSV_NAME)


def journal_line(row: dict) -> str:
    """A journal row as the journal holds it: one line of JSON."""
    return json.dumps(row) + "\n"


def synced(fh) -> None:
    """Flush `fh` and wait until its bytes are on disk: what the journal says must outlive a crash."""
    fh.flush()
    os.fsync(fh.fileno())
