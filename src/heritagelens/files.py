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
