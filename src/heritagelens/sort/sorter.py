"""Sorting a photo collection: every image under a folder is classified and copied (or hard-linked) into
`OUT/<class>/`, those the model is unsure of into `OUT/_uncertain/`. Originals are only ever read.

The run streams: photos are decoded a batch at a time; each batch's copies are made under hidden pending names, its
outcome is appended to a journal in OUT (`.heritagelens-sort.jsonl`) and synced, and only then do the copies take
their names. So an interrupted run (a full disk, Ctrl-C, a kill) loses nothing and leaves exactly one copy per photo:
running the command again removes what was staged but not recorded and skips what is done (photos unchanged since,
whose copy is still there). One sort at a time holds OUT (a lock); the journal is acted on only where its paths lie
in OUT's class folders. A photo changed since is sorted again (its old copy removed); a new --min-confidence moves
the earlier copies it concerns. A copy never replaces another: two photos with one flat name get `name~2.ext`.
`sort.csv` (file, class, probability, top 3, where it went, any error) is rewritten from the journal at the end of
every run. Probabilities are the checkpoint's calibrated ones when `heritagelens calibrate` has fitted its
temperature.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import sys
import time
from collections import Counter
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import IMAGE_SIZE
from ..data.classes import UNSURE_FOLDER
from ..data.images import DataError, read_rgb
from ..errors import HeritageLensError
from ..model.calibration import Filed, curve, filed_at, measured, threshold_for
from ..model.inference import probabilities

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
VIEWS = ("whole", "centre", "multi")
"""How a photo becomes the 64 px input: 'whole' resizes the whole frame (as the dataset's images were made),
'centre' crops the central square first, 'multi' averages the probabilities of the whole frame and five crops of
80% of it (centre and corners). Chosen by measurement: see BENCHMARKS.md."""
DEFAULT_VIEW = "whole"


class SortError(HeritageLensError):
    """Nothing could be sorted, or the run had to stop; one line naming the path and the problem."""


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


# ----------------------------------------------------------------------------------------------------------- views


def views(im: Image.Image, how: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """The model inputs (V, 3, size, size) uint8 for one upright RGB photo."""
    w, h = im.size

    def box(fw: float, fh: float, ax: float, ay: float) -> tuple[int, int, int, int]:
        """A box `fw` x `fh` of the frame, its left/top at fraction `ax`/`ay` of the free space."""
        bw, bh = max(1, round(w * fw)), max(1, round(h * fh))
        x0, y0 = round((w - bw) * ax), round((h - bh) * ay)
        return x0, y0, x0 + bw, y0 + bh

    if how == "whole":
        boxes = [(0, 0, w, h)]
    elif how == "centre":
        side = min(w, h)
        boxes = [box(side / w, side / h, 0.5, 0.5)]
    elif how == "multi":
        boxes = [(0, 0, w, h)] + [box(0.8, 0.8, ax, ay) for ax, ay in ((0.5, 0.5), (0, 0), (1, 0), (0, 1), (1, 1))]
    else:
        raise ValueError(f"unknown view '{how}'; known: {', '.join(VIEWS)}")
    out = [im.resize((size, size), Image.Resampling.BICUBIC, box=b, reducing_gap=2.0) for b in boxes]
    return np.stack([np.asarray(v, dtype=np.uint8).transpose(2, 0, 1) for v in out])


def load(path: Path, how: str) -> np.ndarray:
    """`views` of the photo at `path` (decoded at reduced scale when large, as `images.open_image` decodes it: the
    'whole' view is `images.decode`'s pixels); raises `DataError`."""
    return views(read_rgb(path, at_least=2 * IMAGE_SIZE), how)


# --------------------------------------------------------------------------------------------------------- folders


def check_folders(photos: Path, out: Path) -> None:
    """Refuse a photo folder that cannot be read, an output folder inside it (or holding it), and an output folder
    holding files an earlier sort did not write."""
    if not photos.exists():
        raise SortError(f"{photos}: no such folder")
    if not photos.is_dir():
        raise SortError(f"{photos}: not a folder")
    if not os.access(photos, os.R_OK | os.X_OK):
        raise SortError(f"{photos}: cannot read this folder (permission denied)")
    p, o = photos.resolve(), out.resolve()
    if o == p or p in o.parents or (out.exists() and os.path.samefile(out, photos)):
        raise SortError(f"{out}: the output folder must not be inside the photo folder {photos}")
    if o in p.parents:
        raise SortError(f"{out}: the output folder must not hold the photo folder {photos}")
    if out.exists() and not out.is_dir():
        raise SortError(f"{out}: exists and is not a folder")
    if out.is_dir() and not (out / META).exists() and any(p.name != LOCK for p in out.iterdir()):
        raise SortError(f"{out}: already holds other files; give an empty or new output folder")


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


def photo_files(photos: Path, problems: list[tuple[str, str]]) -> Iterator[Path]:
    """Every regular file under `photos`, nested folders included, in a stable order; hidden files and folders
    (a leading dot) are left out. Folders that cannot be read, symbolic links (not followed) and entries that are not
    regular files (FIFOs, sockets, devices) go to `problems`."""

    def unreadable(e: OSError) -> None:
        problems.append((Path(e.filename).relative_to(photos).as_posix() + "/", "cannot read this folder"))

    for folder, dirs, files in os.walk(photos, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            path = Path(folder) / f
            if f.startswith(".") or f.lower().endswith(".xmp"):  # hidden, or a sidecar (ours or a photo manager's)
                continue
            if path.is_symlink():
                problems.append((path.relative_to(photos).as_posix(), "symbolic link, not followed"))
            elif path.is_file():
                yield path
            else:  # a FIFO, socket or device: reading it could block or never end
                problems.append((path.relative_to(photos).as_posix(), "not a regular file, not read"))


NAME_BYTES = 200
"""The longest flat name a copy gets, in bytes (file systems allow 255: room is left for `~2` and the pending names)."""


def flat_name(rel: Path) -> str:
    """The name a photo gets in OUT/<class>/: its path below the photo folder, folders joined by '__' and backslashes
    made '_' (a path separator elsewhere); a name over `NAME_BYTES` bytes is shortened, by bytes and on a character's
    edge, and made unique by a hash of the path. A name that is not valid UTF-8 keeps its bytes."""
    name = "__".join(rel.parts).replace("\\", "_")
    if len(os.fsencode(name)) > NAME_BYTES:
        digest = hashlib.sha1(os.fsencode(rel.as_posix())).hexdigest()[:12]
        name = f"{clipped(rel.stem, 120)}-{digest}{clipped(rel.suffix, 20)}".replace("\\", "_")
    return name


def clipped(text: str, size: int) -> str:
    """The longest start of `text` of at most `size` bytes as the file system stores it, cut between characters."""
    raw = os.fsencode(text)
    if len(raw) <= size:
        return text
    while size and 0x80 <= raw[size] < 0xC0:  # a UTF-8 continuation byte: the character began earlier
        size -= 1
    return os.fsdecode(raw[:size])


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


def photo_in(photos: Path, rel: str) -> Path:
    """The photo `rel` (a journal's `file`) names below `photos`, once it lies there: no '..', no folder linked
    elsewhere on the way; raises `SortError` otherwise."""
    path = photos / rel
    if not photo_path_ok(rel) or photos.resolve() not in path.resolve().parents:
        raise SortError(f"{path}: not a photo inside the photo folder {photos}; left alone")
    return path


def own_folder(out: Path, name: str) -> Path:
    """`OUT/<name>`, a folder a sort copies into, once it is a folder of its own: not a symbolic link, nor a file,
    and directly in OUT; raises `SortError` otherwise (the sort stops before a copy goes through it)."""
    folder = out / name
    if "/" in name or name in ("", ".", "..") or folder.is_symlink() or folder.exists() and not folder.is_dir():
        raise SortError(
            f"{folder}: a symbolic link or not a folder; a sort copies only into folders of its own: move it away and "
            "run again"
        )
    return folder


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


def stage(src: Path, dest: Path, link: bool) -> Path:
    """Copy (or hard-link) `src` beside `dest` under a hidden pending name, returned; it becomes `dest` only once the
    journal records it (`_Sort.finish`), so a sort killed at any moment leaves no copy the journal does not know."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{secrets.token_hex(6)}.pending")
    try:
        if link:
            os.link(src, tmp)
        else:
            shutil.copy2(src, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def free_name(dest: Path, taken: Collection[Path] = frozenset(), mine: Path | None = None) -> Path:
    """`dest`, or `name~2.ext`, `name~3.ext`... when taken on disk or in `taken` (two photos with one flat name, or
    names that differ only in case on a file system that ignores it): a copy never replaces another; `mine`, the
    photo's own earlier copy (about to be replaced), does not count as taken."""
    k, candidate = 1, dest
    while (candidate.exists() or candidate.is_symlink()) and candidate != mine or candidate in taken:
        k += 1
        candidate = dest.with_name(f"{dest.stem}~{k}{dest.suffix}")
    return candidate


def write_csv(out: Path, rows: dict[str, dict]) -> Path:
    from ..files import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows({**rows[k], "file": shown(k), "copied_to": shown(rows[k].get("copied_to") or "")} for k in sorted(rows))
    return atomic_write_text(buf.getvalue(), out / CSV_NAME)


# ------------------------------------------------------------------------------------------------------------- run

STOPS = (errno.ENOSPC, errno.EDQUOT, errno.EXDEV, errno.EROFS)
"""Placement errors that would fail for every photo: the run stops. Any other fails only that photo (a CSV row)."""


def sort_photos(
    checkpoint: Path | str,
    photos: Path | str,
    out: Path | str,
    min_confidence: float | None = None,
    link: bool = False,
    how: str = DEFAULT_VIEW,
    batch_size: int = 64,
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
        if v is not None and not 0 <= v <= 1:
            raise SortError(f"{name} {v}: must be between 0 and 1")
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
    run = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out):
            check_settings(out, settings)
            run = _Sort(model, classes, t or 1.0, photos, out, min_confidence, link, how)
            run.xmp_model = model_name(checkpoint) if xmp else ""
            run.summary.calibrated = t is not None
            run.summary.min_confidence, run.summary.expected = min_confidence, expected
            run.summary.expected_on = expected_on
            run.summary.out, run.summary.model, run.summary.xmp = out, str(checkpoint), xmp
            if not (out / META).exists():
                atomic_write_json(settings, out / META)
            return run.go(batch_size, progress)
    except OSError as e:  # a full disk while writing the journal or the CSV, a folder that cannot be made
        raise SortError(_disk_message(e, out, run.summary if run else SortSummary())) from None


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


@contextlib.contextmanager
def folder_lock(out: Path):
    """Hold the output folder for this sort: a second sort into it stops with one line instead of copying every
    photo again beside the first one's copies. The lock is the kernel's (`flock`): a killed sort leaves none."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): unguarded
        yield
        return
    try:
        fd = os.open(out / LOCK, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | os.O_NOFOLLOW, 0o666)
    except OSError as e:  # a link in its place, or a FIFO with no reader
        raise SortError(
            f"{out / LOCK}: cannot hold the sort's lock ({e.strerror or e}); remove it and run again"
        ) from None
    f = os.fdopen(fd, "a")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            raise SortError(f"{out / LOCK}: not a regular file; remove it and run again")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise SortError(f"{out}: another sort is writing into this folder; run this one again when it ends") from None
    try:
        yield
    finally:
        f.close()


class _Sort:
    """One sort: the decoding pool, the journal, the counts."""

    def __init__(self, model, classes, t, photos, out, min_confidence, link, how):
        self.model, self.classes, self.t = model, classes, t
        self.photos, self.out, self.min_confidence, self.link, self.how = photos, out, min_confidence, link, how
        self.done = read_journal(out, classes)
        self.summary = SortSummary()
        self.journal = None
        self.checked: set[str] = set()
        self.xmp_model = ""
        """With a model's name: XMP sidecars are written beside the photos, saying that model's classes."""

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
            if row and not row.get("error") and row.get("identity") == ident and (self.out / row["copied_to"]).exists():
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


def journal_line(row: dict) -> str:
    """A journal row as the journal holds it: one line of JSON."""
    return json.dumps(row) + "\n"


def synced(fh) -> None:
    """Flush `fh` and wait until its bytes are on disk: what the journal says must outlive a crash."""
    fh.flush()
    os.fsync(fh.fileno())


def sidecar_tag(row: dict, model: str):
    """What a photo's sidecar says for its `sort.csv` row: its class as a keyword when filed (by the model or a
    person, and which), 'to review' when it waits in `_uncertain/`."""
    from .xmp import Tag

    filed = row["copied_to"].split("/")[0] != UNCERTAIN
    top, by = row.get("model_class") or row["class"], "person" if row.get("decided") == "person" else "model"
    return Tag(row["class"] if filed else None, top, row["p"], model, by)


# ----------------------------------------------------------------------------------------------- a person's review


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
