"""Where a sort reads photos from and puts copies: flat names, pending copies, the lock."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Collection, Iterator
from pathlib import Path

from .journal import LOCK, META, SortError, photo_path_ok


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


STOPS = (errno.ENOSPC, errno.EDQUOT, errno.EXDEV, errno.EROFS)
"""Placement errors that would fail for every photo: the run stops. Any other fails only that photo (a CSV row)."""


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
