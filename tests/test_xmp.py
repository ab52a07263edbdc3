"""XMP sidecars: `sort --xmp` puts each photo's class where photo managers read keywords, merged into sidecars that
exist, never touching the photos; read back with ExifTool (Debian's libimage-exiftool-perl)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import pytest
from conftest import cli, digest, skip_outside_ci

from heritagelens.sort.xmp import Tag, XmpError, merged, read_tag, sidecar_path, write_sidecar


def need_exiftool() -> None:
    if shutil.which("exiftool") is None:
        skip_outside_ci("ExifTool is not installed (apt-get install libimage-exiftool-perl)")
        pytest.skip("no ExifTool")


def exiftool(*args) -> list[dict]:
    """What ExifTool reads from files, as JSON with group names (XMP-dc:Subject...)."""
    need_exiftool()
    p = subprocess.run(["exiftool", "-j", "-G1", "-struct", *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def as_list(v) -> list:
    return v if isinstance(v, list) else [] if v is None else [v]


def test_a_new_sidecar_reads_back_as_written():
    tag = Tag("dome(outer)", "dome(outer)", 0.9346, "bundled model")
    assert read_tag(merged(None, tag)) == tag
    unsure = Tag(None, "apse", 0.41, "bundled model")
    assert read_tag(merged(merged(None, tag), unsure)) == unsure  # the keyword goes, the guess stays


def test_exiftool_reads_our_keywords_and_fields(tmp_path):
    (tmp_path / "a.jpg.xmp").write_bytes(merged(None, Tag("altar", "altar", 0.93, "m")))
    (info,) = exiftool(tmp_path / "a.jpg.xmp")
    assert as_list(info["XMP-dc:Subject"]) == ["altar"]
    assert as_list(info["XMP-lr:HierarchicalSubject"]) == ["HeritageLens|altar"]
    assert info["XMP-heritagelens:Class"] == "altar" and float(info["XMP-heritagelens:Probability"]) == 0.93
    assert info["XMP-heritagelens:DecidedBy"] == "model"


def exiftool_sidecar(path) -> None:
    """A sidecar as ExifTool writes one from nothing (one rdf:Description per namespace): keywords, a hierarchical
    keyword, a rating, a title and a creator."""
    need_exiftool()
    p = subprocess.run(
        [
            "exiftool",
            "-o",
            path,
            "-XMP-dc:Subject=nave",
            "-XMP-dc:Subject=altar",
            "-XMP-xmp:Rating=4",
            "-XMP-dc:Title=Chapel, north side",
            "-XMP-lr:HierarchicalSubject=Places|Chapel",
            "-XMP-dc:Creator=A. Person",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and path.exists(), p.stderr


def test_a_sidecar_another_tool_wrote_keeps_everything_and_a_later_run_replaces_only_its_own(tmp_path):
    photo = tmp_path / "IMG_1.jpg"
    photo.write_bytes(b"not read")
    side = sidecar_path(photo)
    exiftool_sidecar(side)
    (before,) = exiftool(side)
    write_sidecar(photo, Tag("column", "column", 0.8, "m"))
    (info,) = exiftool(side)
    assert as_list(info["XMP-dc:Subject"]) == ["nave", "altar", "column"]
    assert as_list(info["XMP-lr:HierarchicalSubject"]) == ["Places|Chapel", "HeritageLens|column"]
    for key in ("XMP-xmp:Rating", "XMP-dc:Title", "XMP-dc:Creator"):
        assert info[key] == before[key]
    # a later run that files it as an altar: 'altar' was the person's keyword already, so it is not ours to remove
    write_sidecar(photo, Tag("altar", "altar", 0.7, "m"))
    (info,) = exiftool(side)
    assert as_list(info["XMP-dc:Subject"]) == ["nave", "altar"]
    assert as_list(info["XMP-lr:HierarchicalSubject"]) == ["Places|Chapel", "HeritageLens|altar"]
    write_sidecar(photo, Tag(None, "altar", 0.3, "m"))  # unsure now: our keyword says so, the person's stay
    (info,) = exiftool(side)
    assert as_list(info["XMP-dc:Subject"]) == ["nave", "altar", "to review"] and info["XMP-xmp:Rating"] == 4
    assert as_list(info.get("XMP-lr:HierarchicalSubject")) == ["Places|Chapel", "HeritageLens|to review"]
    write_sidecar(photo, Tag("apse", "altar", 0.3, "m", "person"))  # a person filed it: 'to review' goes
    (info,) = exiftool(side)
    assert (
        as_list(info["XMP-dc:Subject"]) == ["nave", "altar", "apse"] and info["XMP-heritagelens:DecidedBy"] == "person"
    )
    assert as_list(info.get("XMP-lr:HierarchicalSubject")) == ["Places|Chapel", "HeritageLens|apse"]
    assert photo.read_bytes() == b"not read"


def test_the_sidecar_name_follows_what_is_there(tmp_path):
    photo = tmp_path / "IMG_2.CR2.jpg"
    assert sidecar_path(photo).name == "IMG_2.CR2.jpg.xmp"
    (tmp_path / "IMG_2.CR2.xmp").write_bytes(merged(None, Tag(None, "apse", 0.2, "m")))  # Lightroom's naming
    assert sidecar_path(photo).name == "IMG_2.CR2.xmp"
    assert write_sidecar(photo, Tag(None, "apse", 0.2, "m")) is None  # says so already: not rewritten


def test_a_sidecar_that_is_not_xmp_is_left_as_it_is(tmp_path):
    photo = tmp_path / "p.jpg"
    for junk in (b"<html><body>notes</body></html>", b"\x00\x01 not xml at all"):
        sidecar_path(photo).write_bytes(junk)
        with pytest.raises(XmpError, match=r"p\.jpg\.xmp: not XMP .*left as it is"):
            write_sidecar(photo, Tag("apse", "apse", 0.9, "m"))
        assert sidecar_path(photo).read_bytes() == junk


def test_sort_xmp_tags_every_photo_beside_its_original_and_reruns_change_only_what_moved(trained, photos, tmp_path):
    _, run = trained
    folder, truth = photos
    before = digest(folder)
    p = cli("sort", run, folder, "--out", tmp_path / "out", "--xmp", "--min-confidence", "0", "--quiet")
    assert p.returncode == 0, p.stderr
    readable = [f for f in truth]  # the photos that decode (the broken JPEG and the text file are not in truth)
    assert f"XMP sidecars beside the photos: {len(readable)} written, 0 up to date" in p.stdout
    after = digest(folder)
    assert {f: h for f, h in after.items() if not f.endswith(".xmp")} == before  # the photos' bytes unchanged
    with (tmp_path / "out" / "sort.csv").open() as fh:
        classes = {r["file"]: r["class"] for r in csv.DictReader(fh) if r["class"]}
    infos = {i["SourceFile"]: i for i in exiftool(*(folder / f"{f}.xmp" for f in readable))}
    for f in readable:
        info = infos[str(folder / f"{f}.xmp")]
        assert as_list(info["XMP-dc:Subject"]) == [classes[f]] and info["XMP-heritagelens:Class"] == classes[f]
    p = cli("sort", run, folder, "--out", tmp_path / "out", "--xmp", "--min-confidence", "0", "--quiet")
    assert f"0 written, {len(readable)} up to date" in p.stdout  # nothing changed: nothing rewritten
    p = cli("sort", run, folder, "--out", tmp_path / "out", "--xmp", "--min-confidence", "1", "--quiet")
    assert f"{len(readable)} written, 0 up to date" in p.stdout  # all unsure now: every class keyword taken back
    info = exiftool(folder / f"{readable[0]}.xmp")[0]
    assert as_list(info["XMP-dc:Subject"]) == ["to review"] and info["XMP-heritagelens:Class"] == classes[readable[0]]
    assert as_list(info["XMP-lr:HierarchicalSubject"]) == ["HeritageLens|to review"]


def test_a_folder_where_sidecars_cannot_be_written_is_one_row_of_sort_csv(trained, read_only, tmp_path):
    root, run = trained
    locked, freeze = read_only  # tmp_path/ro: the photo folder is tmp_path, with ro/ and open/ in it
    images = sorted((root / "test").rglob("*.jpg"))[:6]
    (tmp_path / "open").mkdir()
    for i, f in enumerate(images):
        shutil.copyfile(f, tmp_path / ("ro" if i % 2 else "open") / f"{i}.jpg")
    freeze()
    out = tmp_path.parent / f"{tmp_path.name}-sorted"
    p = cli("sort", run, tmp_path, "--out", out, "--xmp", "--min-confidence", "0", "--quiet")
    assert p.returncode == 0, p.stderr  # the photos are sorted all the same
    assert "XMP sidecars beside the photos: 3 written, 0 up to date, 3 not written" in p.stdout
    with (out / "sort.csv").open() as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    assert len(rows) == 7 and all(
        rows[f"{d}/{i}.jpg"]["copied_to"] for i in range(6) for d in ["ro" if i % 2 else "open"]
    )
    assert rows["ro/"]["error"].startswith(f"XMP sidecar(s) not written: {tmp_path / 'ro'}/")
    assert "cannot write the sidecar (" in rows["ro/"]["error"]  # read-only file system, or permission denied
    assert sorted(f.name for f in (tmp_path / "open").iterdir()) == [
        "0.jpg",
        "0.jpg.xmp",
        "2.jpg",
        "2.jpg.xmp",
        "4.jpg",
        "4.jpg.xmp",
    ]


def test_a_sidecar_keeps_its_mode_and_a_new_one_gets_the_user_s_umask(tmp_path, monkeypatch):
    import stat

    from heritagelens import files

    monkeypatch.setattr(files, "UMASK", 0o027)
    photo = tmp_path / "a.jpg"
    write_sidecar(photo, Tag("apse", "apse", 0.9, "m"))
    assert stat.S_IMODE(sidecar_path(photo).stat().st_mode) == 0o640  # not the temporary file's 0600
    other = tmp_path / "b.jpg"
    sidecar_path(other).write_bytes(merged(None, Tag("altar", "altar", 0.9, "m")))
    sidecar_path(other).chmod(0o664)  # a shared folder's sidecar, readable and writable by the group
    write_sidecar(other, Tag("column", "column", 0.8, "m"))
    assert read_tag(sidecar_path(other).read_bytes()).top == "column"
    assert stat.S_IMODE(sidecar_path(other).stat().st_mode) == 0o664
