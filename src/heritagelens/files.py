"""Atomic file writes and safe checkpoint reads: a crash never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from .errors import HeritageLensError


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file of any size, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class SpecialFileError(HeritageLensError):
    """A path a command reads that is not a regular file of a sensible size: a FIFO, a device, a link to one."""


def regular_size(fd_or_path: int | Path | str, limit: int) -> int:
    """The size of an open file or a path (links followed) once it is a regular file of at most `limit` bytes;
    `SpecialFileError` otherwise: reading a FIFO waits for a writer, `/dev/zero` never ends."""
    st = os.fstat(fd_or_path) if isinstance(fd_or_path, int) else os.stat(fd_or_path)
    if not stat.S_ISREG(st.st_mode):
        raise SpecialFileError("not a regular file (a FIFO, a device or a link to one)")
    if st.st_size > limit:
        raise SpecialFileError(f"larger than {limit >> 20} MB")
    return st.st_size


def read_regular(path: Path | str, limit: int, follow: bool = True) -> bytes:
    """The bytes of `path` once it is a regular file of at most `limit` bytes (`regular_size`); opened without
    waiting, so that a FIFO is refused rather than waited on; with `follow` False, a symbolic link is refused too."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        regular_size(fd, limit)
        return f.read(limit + 1)


class WriteError(HeritageLensError):
    """A folder a command must write into cannot be written; the message names it."""


def writable_folder(folder: Path | str) -> Path:
    """`folder` once a file could be created and removed in it, or, when it does not exist yet, in the nearest folder
    above it that does (nothing is made): a command checks where it will write before its work starts, so that a
    read-only folder costs one line, not the work done before the write."""
    folder = Path(folder)
    probe_in = next((p for p in (folder, *folder.absolute().parents) if p.exists()), None)
    if probe_in is None or not probe_in.is_dir():
        raise WriteError(f"{folder}: cannot be made ({probe_in} is a file, not a folder)")
    try:
        fd, probe = tempfile.mkstemp(dir=probe_in, prefix=".heritagelens-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise WriteError(f"{folder}: cannot write into this folder ({e.strerror or e})") from None
    return folder


def writable_file(path: Path) -> Path:
    """`path` once a file may be written there: a new path or a regular file, in a folder that can be written."""
    if path.is_symlink() or path.exists() and not path.is_file():
        raise WriteError(f"{path}: exists and is not a regular file; give a new path or a file to replace")
    writable_folder(path.parent)
    return path


def refuse_existing(paths: list[Path], force: bool) -> None:
    """Before a command's work: refuse to replace what an earlier run wrote (`paths` its outputs), unless `force`."""
    there = next((p for p in paths if p.exists()), None)
    if there is not None and not force:
        raise WriteError(
            f"{there}: exists already (an earlier run wrote it); --force replaces it, --out DIR writes elsewhere"
        )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()
"""The process's umask when the package was imported: a new file gets the mode any program of the user's would."""


def atomic_write_bytes(data: bytes, path: Path | str) -> Path:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`. The file keeps the mode
    (and, where allowed, the owner) of the one it replaces; a new one gets 0666 less the user's umask, as any
    program's would (not the temporary file's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            old = path.stat()
            os.fchmod(fd, stat.S_IMODE(old.st_mode))
            if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                with contextlib.suppress(OSError):  # only root may give a file away: the mode is kept all the same
                    os.fchown(fd, old.st_uid, old.st_gid)
        except FileNotFoundError:
            os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(text: str, path: Path | str) -> Path:
    return atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj: Any, path: Path | str) -> Path:
    return atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def atomic_save(obj: Any, path: Path | str) -> Path:
    """`torch.save` made atomic."""
    import torch  # here, not at the top: the modules that only write files start without PyTorch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(buf.getvalue(), path)


def safe_load(path: Path | str) -> Any:
    """`torch.load` restricted to tensors and plain values: a file can never run code."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
