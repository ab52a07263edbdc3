"""`heritagelens.data.fetch`: downloads from a local HTTP server, resumes, checksums, hostile archives, layouts,
Kaggle."""

from __future__ import annotations

import hashlib
import io
import stat
import sys
import tarfile
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port, make_dataset

from heritagelens.data.dataset import check
from heritagelens.data.fetch import (
    DOWNLOADS,
    KAGGLE_DATASET,
    FetchError,
    download,
    extract,
    fetch,
    kaggle_credentials,
    normalise_layout,
)

CLASSES = ("arch", "bell", "dome")
FORMATS = ["zip", "tar", "tar.gz", "tar.bz2", "tar.xz"]


# ---------------------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def ahe(tmp_path_factory) -> Path:
    """3 classes x 3 train and 2 test images of 64 px."""
    return make_dataset(tmp_path_factory.mktemp("src") / "ahe", CLASSES, per_class=3, test_per_class=2)


def tree(root: Path) -> dict[str, bytes]:
    """Every file below `root` by its relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def archive_bytes(members: dict[str, bytes], fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
    else:
        with tarfile.open(fileobj=buf, mode="w:" + fmt.removeprefix("tar").removeprefix(".")) as t:
            for name, data in members.items():
                add(t, name, data=data)
    return buf.getvalue()


def add(t: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def pack(root: Path, fmt: str, top="AHE_Dataset", train="Train", test="Test", extra: dict | None = None) -> bytes:
    """The dataset under odd folder names: `top/Train/<class>/*`, `top/Test/<class>/*`, plus `extra` members."""
    names = {"train": train, "test": test}
    members = {f"{top}/{names[k.split('/')[0]]}/{k.split('/', 1)[1]}": v for k, v in tree(root).items()}
    return archive_bytes(members | (extra or {}), fmt)


def message(excinfo) -> str:
    """The error's message, checked to be one line."""
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


class Handler(BaseHTTPRequestHandler):
    """GET with `Range: bytes=N-` support; `server.cut` bytes of the next body only, then the connection closes."""

    def do_GET(self):
        srv = self.server
        srv.requests.append(self.headers.get("Range"))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range") if srv.ranges_ok else None
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut is not None:
            body, srv.cut = body[: srv.cut], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.requests, srv.cut, srv.ranges_ok = {}, [], None, True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def serve(srv, name: str, data: bytes) -> str:
    srv.files[f"/{name}"] = data
    return f"http://127.0.0.1:{srv.server_port}/{name}"


# ------------------------------------------------------------------------------------------------- fetch and layout


@pytest.mark.parametrize("fmt", FORMATS)
def test_fetch_from_url_lays_out_odd_folders(ahe, server, tmp_path, fmt):
    url = serve(server, f"ahe.{fmt}", pack(ahe, fmt))
    dest = tmp_path / "data" / "ahe64"
    assert fetch(url, dest, progress=False) == dest
    assert tree(dest) == tree(ahe)
    assert list(dest.parent.iterdir()) == [dest]  # no download, scratch or staging folder left
    r = check(dest)
    assert r.usable and not r.bad
    assert r.counts == {"train": dict.fromkeys(CLASSES, 3), "test": dict.fromkeys(CLASSES, 2)}


def test_fetch_local_archive_with_other_names_and_junk(ahe, tmp_path):
    junk = {"dataset/training/arch/Thumbs.db": b"x", "__MACOSX/dataset/training/arch/._a.jpg": b"x"}
    archive = tmp_path / "ahe.tgz"
    archive.write_bytes(pack(ahe, "tar.gz", top="dataset", train="training", test="TEST", extra=junk))
    for i, source in enumerate([str(archive), archive.as_uri()]):
        dest = tmp_path / f"out{i}"
        fetch(source, dest, progress=False)
        assert tree(dest) == tree(ahe)
    assert archive.exists()  # the user's own file is left alone


def test_test_split_is_optional(ahe, tmp_path):
    members = {f"x/Train/{k.split('/', 1)[1]}": v for k, v in tree(ahe).items() if k.startswith("train/")}
    (tmp_path / "a.zip").write_bytes(archive_bytes(members, "zip"))
    fetch(str(tmp_path / "a.zip"), tmp_path / "d", progress=False)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["train"]


# ------------------------------------------------------------------------------------------------------- downloads


def test_truncated_download_resumes(ahe, server, tmp_path):
    data = pack(ahe, "zip")
    url = serve(server, "ahe.zip", data)
    dest = tmp_path / "ahe64"
    server.cut = len(data) // 3
    with pytest.raises(FetchError) as e:
        fetch(url, dest, progress=False)
    assert "incomplete" in message(e) and "again" in message(e) and url in message(e)
    parts = list((tmp_path / DOWNLOADS).glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == len(data) // 3
    assert not dest.exists()
    fetch(url, dest, progress=False)
    assert server.requests == [None, f"bytes={len(data) // 3}-"]
    assert tree(dest) == tree(ahe)


@pytest.mark.parametrize("ranges_ok", [True, False])
def test_download_resume_is_byte_identical(server, tmp_path, ranges_ok):
    data = bytes(range(256)) * 400
    url = serve(server, "blob.bin", data)
    server.cut, server.ranges_ok = 10_000, ranges_ok
    out = tmp_path / "blob.bin"
    with pytest.raises(FetchError, match="incomplete"):
        download(url, out, progress=False)
    assert not out.exists()
    assert download(url, out, sha256=hashlib.sha256(data).hexdigest()) == out  # with a progress bar
    assert out.read_bytes() == data and not list(tmp_path.glob("*.part"))
    assert server.requests[-1] == "bytes=10000-"  # sent either way; a server ignoring it sends the whole file


def test_complete_part_file_is_finished_without_downloading_again(server, tmp_path):
    data = b"abc" * 1000
    url = serve(server, "blob.bin", data)
    (tmp_path / "blob.bin.part").write_bytes(data)
    assert download(url, tmp_path / "blob.bin", progress=False).read_bytes() == data
    assert server.requests == ["bytes=3000-"]


def test_checksum(ahe, server, tmp_path):
    data = pack(ahe, "zip")
    url = serve(server, "ahe.zip", data)
    right, wrong = hashlib.sha256(data).hexdigest(), "0" * 64
    dest = tmp_path / "ahe64"
    with pytest.raises(FetchError) as e:
        fetch(url, dest, sha256=wrong, progress=False)
    assert wrong in message(e) and right in message(e)
    assert not dest.exists() and list(tmp_path.iterdir()) == []  # the bad download is gone, .part included
    with pytest.raises(FetchError, match="SHA-256"):
        fetch(url, dest, sha256="abc", progress=False)
    fetch(url, dest, sha256=right.upper(), progress=False)
    assert tree(dest) == tree(ahe)


def test_download_limit(server, tmp_path):
    url = serve(server, "big.bin", b"x" * 5000)
    with pytest.raises(FetchError) as e:
        download(url, tmp_path / "big.bin", progress=False, max_bytes=1000)
    assert "limit" in message(e) and list(tmp_path.iterdir()) == []


def test_http_and_url_errors(server, tmp_path):
    cases = [
        (serve(server, "x", b"") + "-missing", "404"),
        (f"http://127.0.0.1:{free_port()}/a.zip", "cannot connect"),
        ("ftp://example.org/a.zip", "not an http"),
        ("http:///a.zip", "not an http"),
    ]
    for url, needle in cases:
        with pytest.raises(FetchError) as e:
            download(url, tmp_path / "a.zip", progress=False)
        assert needle in message(e) and url in message(e)
    with pytest.raises(FetchError, match="no such file"):
        fetch(str(tmp_path / "missing.zip"), tmp_path / "d", progress=False)


# --------------------------------------------------------------------------------------------------- hostile archives


def hostile(kind: str, fmt: str, outside: Path) -> bytes:
    """An archive whose first member is harmless and whose second is `kind`."""
    ok = ("AHE/Train/arch/ok.jpg", b"fine")
    buf = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(*ok)
            if kind == "symlink":
                info = zipfile.ZipInfo("AHE/link")
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                z.writestr(info, str(outside))
            else:
                z.writestr({"dotdot": "AHE/../../evil.txt", "absolute": str(outside / "evil.txt")}[kind], b"evil")
        return buf.getvalue()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        add(t, ok[0], data=ok[1])
        if kind in ("dotdot", "absolute"):
            add(t, {"dotdot": "../evil.txt", "absolute": str(outside / "evil.txt")}[kind], data=b"evil")
        else:
            types_ = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE}
            add(t, "AHE/evil.txt", kind=types_[kind], link=str(outside / "evil.txt"))
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind, fmt, needle",
    [
        ("dotdot", "tar.gz", "outside"),
        ("dotdot", "zip", "outside"),
        ("absolute", "tar.gz", "outside"),
        ("absolute", "zip", "outside"),
        ("symlink", "tar.gz", "symbolic link"),
        ("symlink", "zip", "symbolic link"),
        ("hardlink", "tar.gz", "hard link"),
        ("device", "tar.gz", "device"),
    ],
)
def test_hostile_archives_are_refused(tmp_path, kind, fmt, needle):
    archive = tmp_path / f"evil.{fmt}"
    archive.write_bytes(hostile(kind, fmt, tmp_path))
    case = tmp_path / "case"
    with pytest.raises(FetchError) as e:
        extract(archive, case / "out")
    assert needle in message(e) and str(archive) in message(e)
    assert list(case.iterdir()) == []  # nothing left: no out/, no temporary folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case", archive.name]
    assert not list(tmp_path.parent.rglob("evil.txt"))


def test_hostile_archive_from_url_leaves_nothing(server, tmp_path):
    url = serve(server, "evil.zip", hostile("dotdot", "zip", tmp_path))
    with pytest.raises(FetchError) as e:
        fetch(url, tmp_path / "data" / "ahe64", progress=False)
    assert "outside" in message(e)
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_size_and_member_limits(tmp_path, fmt):
    archive = tmp_path / f"bomb.{fmt}"
    archive.write_bytes(archive_bytes({"a/Train/x/big.jpg": bytes(5000), "a/Train/x/b.jpg": b"1"}, fmt))
    with pytest.raises(FetchError) as e:
        extract(archive, tmp_path / "out", max_bytes=1000)
    assert "1,000 bytes" in message(e)
    with pytest.raises(FetchError) as e:
        extract(archive, tmp_path / "out", max_members=1)
    assert "members" in message(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]
    assert extract(archive, tmp_path / "out", max_bytes=5001, max_members=2).is_dir()


def test_zip_whose_headers_understate_sizes(tmp_path):
    data = archive_bytes({"a/big.bin": bytes(5000)}, "zip")
    size = (5000).to_bytes(4, "little")
    lying = data.replace(size + size, (10).to_bytes(4, "little") * 2)  # compressed and uncompressed size
    assert lying != data
    archive = tmp_path / "lying.zip"
    archive.write_bytes(lying)
    with pytest.raises(FetchError) as e:
        extract(archive, tmp_path / "out", max_bytes=1000)
    assert str(archive) in message(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lying.zip"]


def test_not_an_archive_and_no_train_folder(server, tmp_path):
    url = serve(server, "page.zip", b"<html>not found</html>\n" * 50)
    with pytest.raises(FetchError) as e:
        fetch(url, tmp_path / "d", progress=False)
    assert "not a zip or tar archive" in message(e)
    members = {"stuff/images/arch/a.jpg": b"x", "stuff/readme.txt": b"hello"}
    url = serve(server, "other.zip", archive_bytes(members, "zip"))
    with pytest.raises(FetchError) as e:
        fetch(url, tmp_path / "d", progress=False)
    assert "no train/" in message(e) and "stuff/images/, stuff/readme.txt" in message(e)
    assert list(tmp_path.iterdir()) == []


def test_existing_data_is_never_overwritten(ahe, server, tmp_path):
    url = serve(server, "ahe.zip", pack(ahe, "zip"))
    dest = tmp_path / "ahe64"
    mine = dest / "train" / "mine" / "photo.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"precious")
    with pytest.raises(FetchError) as e:
        fetch(url, dest, progress=False)
    assert "already holds data" in message(e)
    assert server.requests == [] and mine.read_bytes() == b"precious"  # refused before downloading
    (tmp_path / "x.zip").write_bytes(pack(ahe, "zip"))
    extracted = extract(tmp_path / "x.zip", tmp_path / "x")
    with pytest.raises(FetchError, match="already holds data"):
        normalise_layout(extracted, dest)
    assert normalise_layout(extracted, dest, force=True) == dest
    assert tree(dest) == tree(ahe)


# ----------------------------------------------------------------------------------------------------------- kaggle


@pytest.fixture
def no_kaggle_token(monkeypatch, tmp_path):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))


def fake_kaggle(monkeypatch, archive: bytes, calls: list, exit_on_auth: bool = False) -> None:
    """A `kaggle` package whose API writes `archive` where the real one puts the dataset's zip."""

    class KaggleApi:
        def authenticate(self):
            calls.append("authenticate")
            if exit_on_auth:
                raise SystemExit(1)

        def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False):
            calls.append((dataset, unzip, quiet))
            (Path(path) / f"{dataset.split('/')[1]}.zip").write_bytes(archive)

    extended = types.ModuleType("kaggle.api.kaggle_api_extended")
    extended.KaggleApi = KaggleApi
    for name, module in [("kaggle", types.ModuleType("kaggle")), ("kaggle.api", types.ModuleType("kaggle.api"))]:
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", extended)


def test_kaggle_without_token(no_kaggle_token, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", None)
    assert kaggle_credentials() is None
    with pytest.raises(FetchError) as e:
        fetch("kaggle", tmp_path / "d", progress=False)
    assert "kaggle.json" in message(e) and "--source" in message(e)
    token = tmp_path / "home" / ".kaggle" / "kaggle.json"
    token.parent.mkdir(parents=True)
    token.write_text("{}")
    assert kaggle_credentials() == str(token)
    with pytest.raises(FetchError) as e:
        fetch("kaggle", tmp_path / "d", progress=False)
    assert "pip install 'heritagelens[kaggle]'" in message(e)
    assert not (tmp_path / "d").exists()


def test_kaggle_download(no_kaggle_token, monkeypatch, ahe, tmp_path):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123")
    calls = []
    fake_kaggle(monkeypatch, pack(ahe, "zip", top=KAGGLE_DATASET.split("/")[1], train="train", test="test"), calls)
    dest = tmp_path / "data" / "ahe64"
    assert fetch("kaggle", dest, progress=False) == dest
    assert calls == ["authenticate", (KAGGLE_DATASET, False, True)]
    assert tree(dest) == tree(ahe) and list(dest.parent.iterdir()) == [dest]

    calls.clear()
    fake_kaggle(monkeypatch, b"", calls, exit_on_auth=True)
    with pytest.raises(FetchError) as e:
        fetch("kaggle", tmp_path / "other", progress=False)
    assert "not accepted" in message(e) and "kaggle.json" in message(e)


# ---------------------------------------------------------------------------------------------------------- command


def test_data_fetch_command_prints_the_check_and_errors_in_one_line(ahe, server, tmp_path):
    from conftest import assert_one_line_error, cli

    url = serve(server, "ahe.zip", pack(ahe, "zip"))
    dest = tmp_path / "mine"
    p = cli("data", "fetch", "--source", url, "--dest", dest, "--quiet")
    assert p.returncode == 0, p.stderr
    assert f"dataset ready in {dest}" in p.stdout and "unreadable files: 0" in p.stdout
    total = next(line for line in p.stdout.splitlines() if line.startswith("total"))
    assert total.split()[1:] == ["9", "6"]  # train and test images
    assert f"--data {dest}" in p.stdout
    wrong = cli("data", "fetch", "--source", url, "--dest", tmp_path / "other", "--sha256", "0" * 64, "--quiet")
    assert_one_line_error(wrong, "sha256 mismatch", url)
    assert not (tmp_path / "other").exists()
