"""Getting the AHE64 dataset onto this machine: a resumable, verified download, a safe extraction, the usual layout.

`fetch` is the story: the archive comes from Kaggle or a URL into `<dest.parent>/.heritagelens-downloads/` (an
interrupted download resumes from there), is extracted with every member checked into a folder beside `dest`, and its
splits are laid out as `dest/train/<class>/*` and `dest/test/<class>/*` whatever the archive called its folders.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import lzma
import os
import re
import secrets
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .. import __version__
from ..config import KAGGLE_DATASET
from ..errors import HeritageLensError
from ..files import file_sha256
from .dataset import SPLITS
from .images import IMAGE_SUFFIXES

DOWNLOADS = ".heritagelens-downloads"
"""Folder beside the dataset folder holding unfinished downloads, so that running the command again resumes."""
MAX_DOWNLOAD_BYTES = 2 * 1024**3
MAX_EXTRACTED_BYTES = 4 * 1024**3
MAX_MEMBERS = 200_000
CHUNK = 1 << 20  # bytes per read
TIMEOUT = 60  # seconds without a byte before a download counts as interrupted
SPLIT_FOLDERS = {"train": ("train", "training"), "test": ("test", "testing")}
"""Folder names (any case) taken for each split inside an archive."""
KAGGLE_HELP = (
    "on kaggle.com open Settings -> API -> Create New Token and save the file as ~/.kaggle/kaggle.json "
    "(chmod 600 ~/.kaggle/kaggle.json), or set KAGGLE_USERNAME and KAGGLE_KEY; "
    "or pass --source URL of a zip or tar archive of the dataset"
)


class FetchError(HeritageLensError):
    """A download or archive problem; the message is one line naming the file or URL and the problem."""


def _one_line(x: object) -> str:
    return " ".join(str(x).split())


# -------------------------------------------------------------------------------------------------------- download


def download(
    url: str,
    dest_file: Path,
    sha256: str | None = None,
    progress: bool = True,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download `url` to `dest_file` through `<dest_file>.part`, resuming that file when an earlier try was cut off.

    The `.part` file becomes `dest_file` only once its length matches what the server announced and, when `sha256`
    is given, its digest matches; a mismatch deletes it, since a wrong file must never be resumed.

    Raises:
        FetchError: bad URL, HTTP error, no connection, a download cut short (the `.part` is kept), over `max_bytes`,
            or a checksum mismatch.
    """
    dest_file = Path(dest_file)
    expected = _digest_arg(sha256)
    _check_url(url)
    part = dest_file.with_name(dest_file.name + ".part")
    dest_file.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, have)
    except _Unsatisfiable as e:
        if e.total != have:  # the .part is longer than the file: it is not this file, so start over
            part.unlink()
            return download(url, dest_file, sha256, progress, max_bytes)
        response = None  # the .part already holds the whole file
    if response is not None:
        with response:
            _receive(response, part, have, url, progress, max_bytes)
    _verify(part, expected, url, delete=True)
    os.replace(part, dest_file)
    return dest_file


class _Unsatisfiable(Exception):
    """HTTP 416 to a resume: the .part is not shorter than the file, whose length is `total` (None if not given)."""

    def __init__(self, total: int | None):
        self.total = total


def _check_url(url: str) -> None:
    u = urllib.parse.urlparse(url)
    if u.scheme not in ("http", "https", "file") or (u.scheme != "file" and not u.netloc):
        raise FetchError(f"{url}: not an http://, https:// or file:// URL")


def _open(url: str, have: int):
    """The response to a GET of `url`, asking for the bytes from `have` on when `have` > 0."""
    headers = {"User-Agent": f"heritagelens/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:
            m = re.fullmatch(r"bytes \*/(\d+)", (e.headers.get("Content-Range") or "").strip())
            raise _Unsatisfiable(int(m[1]) if m else None) from None
        raise FetchError(f"{url}: HTTP error {e.code} {_one_line(e.reason)}") from None
    except urllib.error.URLError as e:
        raise FetchError(f"{url}: cannot connect ({_one_line(e.reason)})") from None
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise FetchError(f"{url}: {_one_line(e) or type(e).__name__}") from None


def _span(response, have: int, url: str, part: Path) -> tuple[int, int | None]:
    """(offset in the file where the body starts, the whole file's length or None when the server does not say)."""
    if (getattr(response, "status", None) or 200) == 206:
        content_range = (response.headers.get("Content-Range") or "").strip()
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range)
        if not m or int(m[1]) != have:
            part.unlink()
            raise FetchError(f"{url}: the server answered a resume from byte {have} with '{content_range}'; try again")
        return have, int(m[3]) if m[3] != "*" else None
    length = (response.headers.get("Content-Length") or "").strip()
    return 0, int(length) if length.isdigit() else None


def _receive(response, part: Path, have: int, url: str, progress: bool, max_bytes: int) -> None:
    """Append the body to `part` (or rewrite it when the server sends the whole file) and check its length."""
    start, total = _span(response, have, url, part)
    if total is not None and total > max_bytes:
        part.unlink(missing_ok=True)
        raise FetchError(f"{url}: the file has {total:,} bytes, over the download limit of {max_bytes:,}")
    size = start
    name = part.name.removesuffix(".part")
    with (
        open(part, "ab" if start else "wb") as f,
        tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=name, disable=not progress) as bar,
    ):
        for chunk in _chunks(response):
            size += len(chunk)
            if size > max_bytes or (total is not None and size > total):
                f.close()
                part.unlink()
                limit = f"the announced {total:,}" if total is not None and total < max_bytes else f"{max_bytes:,}"
                raise FetchError(f"{url}: the server sent more than {limit} bytes; download refused")
            f.write(chunk)
            bar.update(len(chunk))
    if total is not None and size < total:
        raise FetchError(f"{url}: download incomplete ({size:,} of {total:,} bytes); run the command again to resume")


def _chunks(response):
    """The body in chunks, ending quietly where the connection drops (the caller checks the length)."""
    while True:
        try:
            chunk = response.read(CHUNK)
        except (OSError, http.client.HTTPException):
            return
        if not chunk:
            return
        yield chunk


def _digest_arg(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise FetchError(f"sha256 '{_one_line(sha256)}': not a SHA-256 digest (64 hexadecimal digits)")
    return digest


def _verify(path: Path, expected: str | None, label: str, delete: bool) -> Path:
    if expected is None:
        return path
    actual = file_sha256(path)
    if actual != expected:
        if delete:
            path.unlink()
        what = "the bad download was deleted" if delete else "the file was left as it is"
        raise FetchError(f"{label}: sha256 mismatch: expected {expected}, got {actual}; {what}")
    return path


# --------------------------------------------------------------------------------------------------------- extract


def extract(archive: Path, dest: Path, max_bytes: int = MAX_EXTRACTED_BYTES, max_members: int = MAX_MEMBERS) -> Path:
    """Extract a zip or tar (plain, gz, bz2, xz; told apart by content) into the new folder `dest`.

    Every member is checked before anything is written: no absolute path, no `..`, no link, device or fifo, at most
    `max_members` members and `max_bytes` declared bytes; bytes are counted again while writing, against headers that
    lie. The files go to a temporary folder beside `dest` that becomes `dest` only when all went well.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FetchError(f"{archive}: no such file")
    if dest.exists():
        raise FetchError(f"{dest}: already exists; extract into a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_dir(dest)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp, max_bytes, max_members)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp, max_bytes, max_members)
        else:
            raise FetchError(f"{archive}: not a zip or tar archive")
        os.replace(tmp, dest)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, RuntimeError) as e:
        raise FetchError(f"{archive}: cannot extract ({type(e).__name__}: {_one_line(e)})") from None
    except NotImplementedError as e:
        raise FetchError(f"{archive}: cannot extract ({_one_line(e)})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _member_parts(name: str, archive: Path) -> tuple[str, ...]:
    """The member's path below the destination, as parts; refuses absolute paths and any `..`."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or re.match(r"[A-Za-z]:", name) or ".." in p.parts or "\0" in name:
        raise FetchError(f"{archive}: member {name!r} points outside the destination; archive refused")
    return tuple(x for x in p.parts if x not in ("", "."))


def _check_totals(count: int, size: int, archive: Path, max_bytes: int, max_members: int) -> None:
    if count > max_members:
        raise FetchError(f"{archive}: more than {max_members:,} members; archive refused")
    if size > max_bytes:
        raise FetchError(f"{archive}: unpacks to more than {max_bytes:,} bytes; archive refused")


def _extract_zip(archive: Path, out: Path, max_bytes: int, max_members: int) -> None:
    with zipfile.ZipFile(archive) as z:
        members, declared = [], 0
        for info in z.infolist():
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise FetchError(f"{archive}: member {info.filename!r} is a symbolic link; archive refused")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise FetchError(f"{archive}: member {info.filename!r} is a device, fifo or socket; archive refused")
            declared += info.file_size
            members.append((info.is_dir(), _member_parts(info.filename, archive), functools.partial(z.open, info)))
            _check_totals(len(members), declared, archive, max_bytes, max_members)
        _unpack(members, out, max_bytes, archive)


def _extract_tar(archive: Path, out: Path, max_bytes: int, max_members: int) -> None:
    with tarfile.open(archive) as t:
        members, declared = [], 0
        for m in t:  # headers are read one by one, so a huge declared member stops us before its data is skipped
            if m.issym():
                raise FetchError(f"{archive}: member {m.name!r} is a symbolic link; archive refused")
            if m.islnk():
                raise FetchError(f"{archive}: member {m.name!r} is a hard link; archive refused")
            if not (m.isfile() or m.isdir()):
                raise FetchError(f"{archive}: member {m.name!r} is a device, fifo or socket; archive refused")
            declared += m.size if m.isfile() else 0
            members.append((m.isdir(), _member_parts(m.name, archive), functools.partial(t.extractfile, m)))
            _check_totals(len(members), declared, archive, max_bytes, max_members)
        _unpack(members, out, max_bytes, archive)


def _unpack(members: list[tuple[bool, tuple[str, ...], Callable]], out: Path, max_bytes: int, archive: Path) -> None:
    """Write the checked members (is a folder, path parts, opener) below `out`, at most `max_bytes` in all."""
    left = max_bytes
    for is_dir, parts, open_member in members:
        if is_dir:
            out.joinpath(*parts).mkdir(parents=True, exist_ok=True)
        elif parts:
            with open_member() as src:
                left -= _write(src, out.joinpath(*parts), left, archive)


def _write(src, target: Path, left: int, archive: Path) -> int:
    """Copy `src` to `target`, refusing the archive once more than `left` bytes come out. Returns the bytes copied."""
    target.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(target, "wb") as dst:
        while chunk := src.read(CHUNK):
            n += len(chunk)
            if n > left:
                raise FetchError(f"{archive}: unpacks to more bytes than its headers declare or the limit allows")
            dst.write(chunk)
    return n


# ---------------------------------------------------------------------------------------------------------- layout


def normalise_layout(extracted: Path, dest: Path, force: bool = False) -> Path:
    """Move the train (and, when present, test) split found anywhere in `extracted` to `dest/train`, `dest/test`.

    A split folder is the shallowest folder named train/training (test/testing), in any case, holding class folders
    with images; only the images move. Existing data in `dest/train` is refused unless `force`, which replaces
    both splits. Returns `dest`.
    """
    return _lay_out(Path(extracted), Path(dest), force, str(extracted))


def _lay_out(extracted: Path, dest: Path, force: bool, label: str) -> Path:
    _refuse_existing(dest, force)
    train = _find_split(extracted, "train")
    if train is None:
        raise FetchError(
            f"{label}: no train/ or training/ folder of class folders with images (found: {_describe(extracted)})"
        )
    beside = _subdirs(train.parent) if train != extracted else []
    siblings = [d for d in beside if d.name.lower() in SPLIT_FOLDERS["test"] and _class_dirs(d)]
    test = siblings[0] if siblings else _find_split(extracted, "test", exclude=train)
    staging = _temp_dir(dest)
    try:
        for split, folder in (("train", train), ("test", test)):
            for c in _class_dirs(folder) if folder else []:
                (staging / split / c.name).mkdir(parents=True)
                for f in _images(c):
                    shutil.move(f, staging / split / c.name / f.name)
        _install(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _refuse_existing(dest: Path, force: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise FetchError(f"{dest}: exists and is not a folder")
    train = dest / "train"
    if not force and train.is_dir() and any(p.is_file() for p in train.rglob("*")):
        raise FetchError(f"{train}: already holds data; not overwriting it (choose another destination or remove it)")


def _install(staging: Path, dest: Path) -> None:
    """Put the splits of `staging` in `dest`; splits already there move into `staging`, to be deleted with it."""
    if not dest.exists():
        os.replace(staging, dest)
        return
    for split in SPLITS:
        if (dest / split).exists():
            os.replace(dest / split, staging / f"old-{split}")
    for split in SPLITS:
        if (staging / split).exists():
            os.replace(staging / split, dest / split)


def _temp_dir(beside: Path) -> Path:
    """A new hidden folder next to `beside` (same file system, so renames are atomic), with the usual permissions."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    d = beside.parent / f".{beside.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    d.mkdir()
    return d


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX")


def _images(d: Path) -> list[Path]:
    return sorted(
        p for p in d.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _class_dirs(split_dir: Path) -> list[Path]:
    return [c for c in _subdirs(split_dir) if _images(c)]


def _find_split(root: Path, split: str, exclude: Path | None = None) -> Path | None:
    """The shallowest folder below `root` (or `root` itself) named for `split` that holds class folders of images."""
    found = []
    for here, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        d = Path(here)
        if d.name.lower() in SPLIT_FOLDERS[split] and d != exclude and _class_dirs(d):
            found.append((len(d.relative_to(root).parts), str(d), d))
    return min(found)[2] if found else None


def _describe(root: Path, limit: int = 8) -> str:
    """What the archive holds, below any chain of single folders: 'top/a/, top/b.txt, ... (N more)'."""
    d = root
    while len(entries := sorted(d.iterdir())) == 1 and entries[0].is_dir():
        d = entries[0]
    if not entries:
        return "nothing" if d == root else f"only the empty folder {d.relative_to(root).as_posix()}/"
    names = [p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in entries]
    more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ----------------------------------------------------------------------------------------------------------- fetch


def fetch(
    source: str = "kaggle",
    dest: Path = Path("data/ahe64"),
    sha256: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Download the AHE64 dataset and lay it out as `dest/train/<class>/*` and `dest/test/<class>/*`.

    Args:
        source: "kaggle" (needs the kaggle package and an API token), an http(s):// or file:// URL, or the path of a
            local zip or tar archive.
        dest: the dataset folder; data already in `dest/train` is refused unless `force`.
        sha256: expected SHA-256 of the archive; a downloaded archive that does not match is deleted.
        progress: show a progress bar while downloading.
        force: replace the splits already in `dest`.

    Returns:
        `dest`.
    """
    dest = Path(dest)
    _refuse_existing(dest, force)  # before a long download, not after it
    downloads = dest.parent / DOWNLOADS
    try:
        archive, downloaded = _archive(source, downloads, sha256, progress)
    except FetchError:
        _remove_if_empty(downloads)  # an unfinished download stays in it, to be resumed
        raise
    scratch = _temp_dir(dest)
    try:
        _lay_out(extract(archive, scratch / "archive"), dest, force, str(archive))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if downloaded:  # only unfinished downloads are kept; a complete one that failed would fail again
            archive.unlink(missing_ok=True)
            _remove_if_empty(downloads)
    return dest


def _archive(source: str, downloads: Path, sha256: str | None, progress: bool) -> tuple[Path, bool]:
    """(the archive on disk, whether it was downloaded here) for a `fetch` source."""
    expected = _digest_arg(sha256)
    if source == "kaggle":
        return _verify(_from_kaggle(downloads, progress), expected, f"kaggle {KAGGLE_DATASET}", delete=True), True
    u = urllib.parse.urlparse(source)
    if u.scheme in ("http", "https"):
        return download(source, downloads / _download_name(source), sha256, progress), True
    if u.scheme == "file":
        path = Path(urllib.request.url2pathname(u.path))
    elif u.scheme == "" or re.match(r"[A-Za-z]:[\\/]", source):
        path = Path(source)
    else:
        raise FetchError(f"{source}: not 'kaggle', an http://, https:// or file:// URL, or an archive file")
    if not path.is_file():
        raise FetchError(f"{source}: no such file")
    return _verify(path, expected, source, delete=False), False


def _download_name(url: str) -> str:
    """A file name for `url`: its last path segment, made safe, after a short hash of the whole URL."""
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "archive"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:10]}-{name}"


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty: an unfinished download of another source


def kaggle_credentials() -> str | None:
    """Where the Kaggle API token would come from, or None when there is none."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME and KAGGLE_KEY"
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    xdg = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    folders = [os.environ.get("KAGGLE_CONFIG_DIR"), Path.home() / ".kaggle", Path(xdg) / "kaggle"]
    for f in (Path(d) / name for d in folders if d for name in ("kaggle.json", "access_token")):
        if f.is_file():
            return str(f)
    return None


def _from_kaggle(downloads: Path, progress: bool) -> Path:
    """Download the dataset's zip with the Kaggle API into `downloads`."""
    if kaggle_credentials() is None:  # checked first: importing kaggle without a token prints and half-exits
        raise FetchError(f"kaggle: no API token found: {KAGGLE_HELP}")
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise FetchError("the kaggle source needs the kaggle package: pip install 'heritagelens[kaggle]'") from None
    downloads.mkdir(parents=True, exist_ok=True)
    api = KaggleApi()
    try:
        api.authenticate()
        api.dataset_download_files(KAGGLE_DATASET, path=str(downloads), unzip=False, quiet=not progress)
    except SystemExit:  # what the kaggle package does when it rejects the token
        raise FetchError(f"kaggle: the API token was not accepted: {KAGGLE_HELP}") from None
    except Exception as e:  # network and API errors of a third-party client, reported as one line
        raise FetchError(f"kaggle: downloading {KAGGLE_DATASET} failed ({_one_line(e) or type(e).__name__})") from None
    archive = downloads / f"{KAGGLE_DATASET.split('/')[1]}.zip"
    if not archive.is_file():
        raise FetchError(f"kaggle: the download of {KAGGLE_DATASET} left no {archive}")
    return archive
