"""`heritagelens sort`: a nested folder of photos of any size, format and orientation sorted into class folders,
originals untouched, re-runs skipping what is done, a full disk stopping cleanly, and every bad input in one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, cli, digest, skip_outside_ci, sort_rows
from PIL import Image

from heritagelens.model.checkpoint import CheckpointError
from heritagelens.sort import sorter
from heritagelens.sort.inputs import load, views
from heritagelens.sort.journal import JOURNAL, SortError
from heritagelens.sort.sorter import sort_photos


def test_sort_files_every_photo_and_lists_it(trained, photos, tmp_path):
    _, run = trained
    folder, truth = photos
    before = digest(folder)
    out = tmp_path / "sorted"
    p = cli("sort", run, folder, "--out", out, "--min-confidence", "0", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "2 file(s) could not be read" in p.stdout
    assert float(p.stdout.split(" images/s")[0].rsplit("(", 1)[1]) > 0
    assert digest(folder) == before  # originals untouched
    r = sort_rows(out)
    assert set(r) == set(truth) | {"day0/notes.txt", "day1/broken.jpg"}
    assert r["day0/notes.txt"]["error"] and not r["day0/notes.txt"]["copied_to"]
    assert "truncated" in r["day1/broken.jpg"]["error"] or "corrupt" in r["day1/broken.jpg"]["error"]
    right = 0
    for rel, cls in truth.items():
        row = r[rel]
        copied = out / row["copied_to"]
        assert copied.read_bytes() == (folder / rel).read_bytes()  # a true copy, in its class folder
        assert row["copied_to"] == f"{row['class']}/{rel.replace('/', '__')}"
        assert len(row["top3"].split(";")) == 3 and 0 < float(row["probability"]) <= 1
        right += row["class"] == cls
    assert right >= 0.8 * len(truth)  # the tiny model knows its classes, the EXIF-rotated one included
    assert not list(out.rglob("*.tmp"))


def test_the_summary_gives_its_own_words_as_the_command_prints_them(trained, photos, tmp_path):
    _, run = trained
    folder, truth = photos
    s = sort_photos(run, folder, tmp_path / "sorted", min_confidence=0, progress=False, xmp=True)
    text = s.text()
    assert text.startswith(f"sorted {len(truth)} photo(s) in ") and f"into {tmp_path / 'sorted'}" in text
    assert "2 file(s) could not be read" in text and f"XMP sidecars beside the photos: {len(truth)} written" in text
    assert sum(int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("  ")) == len(truth)
    again = cli("sort", run, folder, "--out", tmp_path / "sorted", "--min-confidence", "0", "--xmp", "--quiet")
    assert "skipped" in again.stdout and again.stdout.startswith("sorted 0 photo(s)")


def test_rerun_skips_what_is_done_and_redoes_what_changed(trained, photos, tmp_path):
    _, run = trained
    folder, truth = photos
    out = tmp_path / "sorted"
    assert cli("sort", run, folder, "--out", out, "--quiet").returncode == 0
    first = sort_rows(out)
    again = cli("sort", run, folder, "--out", out, "--quiet")
    assert (
        again.returncode == 0 and f"skipped {len(truth)} photo(s)" in again.stdout and "sorted 0 photo" in again.stdout
    )
    assert sort_rows(out) == first
    changed = next(iter(truth))
    (folder / changed).write_bytes((folder / changed).read_bytes() + b"\0")  # a photo edited since
    third = cli("sort", run, folder, "--out", out, "--quiet")
    assert "sorted 1 photo(s)" in third.stdout and f"skipped {len(truth) - 1}" in third.stdout  # unreadable: retried


def test_confidence_threshold_and_hard_links(trained, photos, tmp_path):
    _, run = trained
    folder, truth = photos
    out = tmp_path / "unsure"
    assert cli("sort", run, folder, "--out", out, "--min-confidence", "1", "--link", "--quiet").returncode == 0
    r = sort_rows(out)
    assert all(r[rel]["copied_to"].startswith("_uncertain/") for rel in truth)
    for rel in truth:
        assert (out / r[rel]["copied_to"]).stat().st_ino == (folder / rel).stat().st_ino  # a link, not a copy


def test_views_apply_exif_rotation_and_crop_as_named(tmp_path):
    im = Image.new("RGB", (120, 60), (200, 10, 10))
    im.paste((10, 10, 200), (0, 0, 30, 60))  # a blue band on the left quarter
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    im.save(tmp_path / "side.jpg", exif=exif.tobytes(), quality=95)
    whole = load(tmp_path / "side.jpg", "whole")[0]
    assert whole.shape == (3, 64, 64)
    assert whole[2, :12].mean() > 150 and whole[2, -12:].mean() < 60  # upright: the band is now at the top
    centre = views(im, "centre")[0]
    assert centre[2].mean() < 30  # the central 60 px square misses the band
    assert views(im, "multi").shape == (6, 3, 64, 64)


def test_a_full_disk_stops_cleanly_and_the_next_run_continues(trained, photos, tmp_path, monkeypatch):
    _, run = trained
    folder, truth = photos
    out = tmp_path / "sorted"
    real, calls = shutil.copy2, []

    def filling(src, dst, **kw):
        calls.append(src)
        if len(calls) > 5:
            Path(dst).write_bytes(b"partial")  # half-written, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, **kw)

    monkeypatch.setattr(shutil, "copy2", filling)
    with pytest.raises(SortError, match="the disk is full") as e:
        sort_photos(run, folder, out, progress=False)
    assert "run the command again" in str(e.value) and "\n" not in str(e.value)
    copies = [f for f in out.rglob("*") if f.is_file() and not f.name.startswith(".")]
    assert not list(out.rglob("*.tmp")) and len(copies) == 5  # no half-written copy left
    assert len((out / JOURNAL).read_text().splitlines()) == 5
    monkeypatch.setattr(shutil, "copy2", real)  # space freed
    s = sort_photos(run, folder, out, progress=False)
    assert s.skipped == 5 and s.sorted == len(truth) - 5 and s.unreadable == 2
    assert len(sort_rows(out)) == len(truth) + 2


def test_bad_input_is_one_line_and_touches_nothing(trained, photos, tmp_path):
    _, run = trained
    folder, _ = photos
    before = digest(folder)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.doc").write_text("the user's")
    assert_one_line_error(cli("sort", run, folder, "--out", busy), "already holds other files")  # as the user sees it
    assert (busy / "mine.doc").read_text() == "the user's" and len(list(busy.iterdir())) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "x.pt").write_bytes(b"junk")
    cases = [
        ((run, tmp_path / "none", tmp_path / "o1"), {}, "no such folder"),
        ((run, folder / "day0" / "notes.txt", tmp_path / "o2"), {}, "not a folder"),
        ((run, folder, folder / "sorted"), {}, "must not be inside"),
        ((tmp_path / "x.pt", folder, tmp_path / "o3"), {}, "not a HeritageLens"),
        ((run, empty, tmp_path / "o4"), {}, "no files to sort"),
        ((run, folder, tmp_path / "o5"), {"min_confidence": 2}, "between 0"),
    ]
    for args, kw, needle in cases:
        with pytest.raises((SortError, CheckpointError), match=needle) as e:
            sort_photos(*args, progress=False, **kw)
        assert "\n" not in str(e.value)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6)) and not (folder / "sorted").exists()
    assert digest(folder) == before


def test_names_that_collide_keep_both_copies(trained, tmp_path):
    _, run = trained
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    im = Image.new("RGB", (80, 80), (120, 60, 200))
    im.save(folder / "a__b.png")  # flat name of a/b.png too
    Image.new("RGB", (80, 80), (10, 200, 10)).save(folder / "a" / "b.png")
    out = tmp_path / "sorted"
    s = sort_photos(run, folder, out, min_confidence=1, progress=False)  # both into _uncertain/
    assert s.sorted == 2
    r = sort_rows(out)
    copies = {r[f]["copied_to"] for f in ("a__b.png", "a/b.png")}
    assert len(copies) == 2 and any("~2" in c for c in copies)
    for f in ("a__b.png", "a/b.png"):
        assert (out / r[f]["copied_to"]).read_bytes() == (folder / f).read_bytes()


def test_a_new_threshold_moves_earlier_copies_and_a_deleted_copy_is_made_again(trained, photos, tmp_path):
    _, run = trained
    folder, truth = photos
    out = tmp_path / "sorted"
    sort_photos(run, folder, out, min_confidence=1, progress=False)
    unsure = [f for f, r in sort_rows(out).items() if r["copied_to"].startswith("_uncertain/")]
    assert unsure  # the tiny model is not certain of everything
    s = sort_photos(run, folder, out, min_confidence=0, progress=False)  # now nothing is uncertain
    assert s.moved == len(unsure) and s.sorted == 0
    r = sort_rows(out)
    assert all(r[f]["copied_to"].split("/")[0] == r[f]["class"] and (out / r[f]["copied_to"]).exists() for f in truth)
    assert not any((out / "_uncertain").iterdir())
    gone = next(iter(truth))
    (out / r[gone]["copied_to"]).unlink()
    s = sort_photos(run, folder, out, min_confidence=0, progress=False)
    assert s.sorted == 1 and (out / sort_rows(out)[gone]["copied_to"]).exists()


def test_other_settings_or_another_photo_folder_are_refused(trained, photos, tmp_path):
    _, run = trained
    folder, _ = photos
    out = tmp_path / "sorted"
    sort_photos(run, folder, out, progress=False)
    with pytest.raises(SortError, match="another --view"):
        sort_photos(run, folder, out, how="centre", progress=False)
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    with pytest.raises(SortError, match="another photo folder"):
        sort_photos(run, other, out, progress=False)
    inner = out / "inner"
    inner.mkdir()
    shutil.copy(next(folder.rglob("*.png")), inner)
    with pytest.raises(SortError, match="must not hold the photo folder"):
        sort_photos(run, inner, out, progress=False)


def test_a_disk_full_while_journaling_is_one_line_and_resumable(trained, photos, tmp_path, monkeypatch):
    _, run = trained
    folder, truth = photos
    out = tmp_path / "sorted"
    real_fsync, calls = os.fsync, []

    def failing(fd):
        calls.append(fd)
        if len(calls) == 2:  # the journal of the first batch
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(SortError, match="the disk is full") as e:
        sort_photos(run, folder, out, progress=False)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(os, "fsync", real_fsync)
    s = sort_photos(run, folder, out, progress=False)
    assert s.sorted + s.skipped == len(truth) and len(sort_rows(out)) == len(truth) + 2
    copies = [f for f in out.rglob("*") if f.is_file() and not f.name.startswith(".") and f.name != "sort.csv"]
    assert len(copies) == len(truth)  # each photo copied once, whatever the first run left


def test_an_unreadable_photo_folder_is_one_line(trained, tmp_path, monkeypatch):
    """Permissions do not stop root, who runs CI: the check is made to see a folder it may not read."""
    _, run = trained
    folder = tmp_path / "locked"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(folder / "a.png")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != folder)
    with pytest.raises(SortError, match="cannot read this folder"):
        sort_photos(run, folder, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "crafted",
    [
        {"copied_to": "../victim/victim.txt"},  # up and out of the output folder
        {"copied_to": "arch/../../victim/victim.txt"},
        {"class": "../victim", "copied_to": "arch/{name}"},  # a class that is a path: a re-threshold would move there
        {"copied_to": "linked/victim.txt"},  # a folder of the output that links outside it
    ],
)
def test_a_crafted_journal_never_touches_a_file_outside_the_output_folder(trained, photos, tmp_path, crafted, capfd):
    _, run = trained
    folder, truth = photos
    out, victim = tmp_path / "sorted", tmp_path / "victim" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("not yours")
    sort_photos(run, folder, out, min_confidence=0, progress=False)
    (out / "linked").symlink_to(victim.parent)
    first = next(iter(sorted(truth)))
    row = json.loads((out / JOURNAL).read_text().splitlines()[0]) | {"file": first}
    row = row | {k: v.format(name=Path(row["copied_to"]).name) for k, v in crafted.items()}
    row["identity"] = [0, 0]  # as if the photo changed since: its old copy would be dropped
    line = len((out / JOURNAL).read_text().splitlines()) + 1
    with (out / JOURNAL).open("a") as f:
        f.write(json.dumps(row) + "\n")
    capfd.readouterr()
    s = sort_photos(run, folder, out, min_confidence=0.99, progress=False)  # also moves copies (a new threshold)
    assert victim.read_text() == "not yours"
    err = capfd.readouterr().err.strip()
    assert "\n" not in err and f"{out / JOURNAL}: line {line} refused" in err
    assert s.sorted + s.skipped == len(truth)
    copies = [p for p in out.rglob("*") if p.parent.parent == out and "linked" not in p.parts]
    assert len(copies) == len(truth) and (out / "linked" / "victim.txt").exists()


def test_a_journal_of_garbage_is_one_warning_and_the_photos_are_sorted_again(trained, photos, tmp_path, capfd):
    _, run = trained
    folder, truth = photos
    out = tmp_path / "sorted"
    sort_photos(run, folder, out, progress=False)
    (out / JOURNAL).write_bytes(bytes(range(256)) * 8 + b"\n\xff\xfe{not json\n[1, 2]\n")
    capfd.readouterr()
    s = sort_photos(run, folder, out, progress=False)
    err = capfd.readouterr().err.strip()
    assert "\n" not in err and "refused" in err and "sorted again" in err
    assert s.sorted == len(truth) and s.skipped == 0


def test_a_fifo_among_the_photos_is_listed_not_read(trained, photos, tmp_path):
    _, run = trained
    folder, truth = photos
    os.mkfifo(folder / "day2" / "pipe.jpg")  # reading it would block for ever
    s = sort_photos(run, folder, tmp_path / "sorted", progress=False)
    r = sort_rows(tmp_path / "sorted")
    assert r["day2/pipe.jpg"]["error"] == "not a regular file, not read" and not r["day2/pipe.jpg"]["copied_to"]
    assert s.sorted == len(truth) and len(r) == len(truth) + 3


# ------------------------------------------------------------------------------ interruptions, with real processes


@pytest.fixture
def many(trained, tmp_path) -> Path:
    """1,200 small photos in 12 folders: enough batches (64 each) for a sort to be stopped in the middle."""
    root, _ = trained
    sources = sorted((root / "test").rglob("*.jpg"))
    folder = tmp_path / "many"
    for i in range(1200):
        sub = folder / f"roll{i % 12:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"IMG_{i:05d}.jpg").write_bytes(sources[i % len(sources)].read_bytes())
    return folder


def start_sort(run: Path, photos: Path, out: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "heritagelens", "sort", run, photos, "--out", out, "--quiet", "--min-confidence", "0"]
    return subprocess.Popen(  # Ctrl-C handled as in a terminal, even when the tests run with SIGINT ignored (nohup &)
        [str(a) for a in argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_journal(out: Path, lines: int, p: subprocess.Popen, timeout: float = 120) -> None:
    t = time.monotonic()
    while time.monotonic() - t < timeout and p.poll() is None:
        if (out / JOURNAL).exists() and (out / JOURNAL).read_bytes().count(b"\n") >= lines:
            return
        time.sleep(0.005)
    raise AssertionError(f"the sort ended or stalled before {lines} journal lines: {p.poll()} {p.stderr.read()}")


def caught_unrecorded_copies(out: Path, p: subprocess.Popen, timeout: float = 120, before: int = 1000) -> bool:
    """Wait for copies that the journal does not record yet (the moment a kill can orphan them) while at least
    `before` journal lines are still to come, so that the sort is still running when the signal arrives: False
    when the sort got that far first."""
    t = time.monotonic()
    while time.monotonic() - t < timeout and p.poll() is None:
        lines = (out / JOURNAL).read_bytes().count(b"\n") if (out / JOURNAL).exists() else 0
        if lines >= before:
            return False
        names = [e.name for d in os.scandir(out) if d.is_dir() for e in os.scandir(d.path)]
        if lines and (len(names) > lines or any(n.startswith(".") for n in names)):
            return True
    return False


def assert_one_copy_per_photo(out: Path, photos: int) -> None:
    copies = sorted(p for p in out.glob("*/*") if p.is_file() and not p.name.startswith("."))
    pending = [p for p in out.glob("*/.*") if p.is_file()]
    listed = sort_rows(out)
    assert len(listed) == photos and not pending, (len(listed), pending[:3])
    assert sorted(out / r["copied_to"] for r in listed.values()) == copies  # each copy listed once, nothing else


@pytest.mark.parametrize("sig, after", [(signal.SIGKILL, 100), (signal.SIGKILL, 420), (signal.SIGINT, 250)])
def test_an_interrupted_sort_leaves_exactly_one_copy_per_photo(trained, many, tmp_path, sig, after):
    _, run = trained
    for attempt in range(6):  # the moment is short: a sort may end before it comes
        out = tmp_path / f"sorted{attempt}"
        p = start_sort(run, many, out)
        wait_for_journal(out, after, p)
        if caught_unrecorded_copies(out, p):
            break
        assert p.wait(timeout=60) == 0
    else:
        raise AssertionError("no sort was caught with copies not yet recorded in 6 attempts")
    p.send_signal(sig)
    code = p.wait(timeout=60)
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), p.stderr.read()
    if sig == signal.SIGINT:
        assert "run the same sort command again" in p.stderr.read()
    again = cli("sort", run, many, "--out", out, "--quiet", "--min-confidence", "0")
    assert again.returncode == 0, again.stderr
    assert_one_copy_per_photo(out, 1200)


def test_a_stop_between_a_copy_and_its_row_leaves_no_unrecorded_copy(trained, many, tmp_path, monkeypatch):
    """Ctrl-C can land after a photo's copy is staged and before its journal row exists (the window in which the
    row is being made): that copy must not take its name, or the next run copies the photo a second time."""
    _, run = trained
    out = tmp_path / "sorted"
    where, made = sorter._Sort.where, []

    def stopped_on_the_hundredth_row(self, dest):  # a row's destination, named just after its copy is staged
        if len(made) == 99:
            raise KeyboardInterrupt
        made.append(dest)
        return where(self, dest)

    monkeypatch.setattr(sorter._Sort, "where", stopped_on_the_hundredth_row)
    with pytest.raises(KeyboardInterrupt):
        sort_photos(run, many, out, min_confidence=0, progress=False)
    monkeypatch.undo()
    journaled = {json.loads(line)["copied_to"] for line in (out / JOURNAL).read_text().splitlines()}
    named = {p.relative_to(out).as_posix() for p in out.glob("*/*") if not p.name.startswith(".")}
    assert len(journaled) == 99 and named <= journaled, sorted(named - journaled)
    assert not list(out.glob("*/.*"))  # the unrecorded copy is gone, not left pending
    sort_photos(run, many, out, min_confidence=0, progress=False)
    assert_one_copy_per_photo(out, 1200)


def test_two_sorts_into_one_folder_the_second_refused_in_one_line(trained, many, tmp_path):
    _, run = trained
    out = tmp_path / "sorted"
    first = start_sort(run, many, out)
    wait_for_journal(out, 1, first)
    assert_one_line_error(cli("sort", run, many, "--out", out), f"{out}: another sort is writing into this folder")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert_one_copy_per_photo(out, 1200)


def test_a_full_filesystem_stops_in_one_line_and_the_rerun_completes(trained, many, tmp_path):
    _, run = trained
    out = tmp_path / "small"
    out.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", out]).returncode:
        skip_outside_ci("needs root and tmpfs to make a small filesystem")
    try:
        assert_one_line_error(cli("sort", run, many, "--out", out, "--quiet"), f"{out}", "the disk is full")
        done = len(sort_rows(out)) if (out / "sort.csv").exists() else 0
        assert done < 1200
        subprocess.run(["mount", "-o", "remount,size=64m", out], check=True)  # space freed
        again = cli("sort", run, many, "--out", out, "--quiet", "--min-confidence", "0.5")
        assert again.returncode == 0, again.stderr
        assert_one_copy_per_photo(out, 1200)
    finally:
        subprocess.run(["umount", out], check=True)


def test_a_line_torn_by_a_crash_is_cut_off_and_never_warned_about(trained, photos, tmp_path, capfd):
    _, run = trained
    folder, truth = photos
    out = tmp_path / "sorted"
    sort_photos(run, folder, out, progress=False)
    lines = (out / JOURNAL).read_bytes().splitlines(keepends=True)
    (out / JOURNAL).write_bytes(b"".join(lines[:-1]) + lines[-1][:40])  # the last row half-written
    capfd.readouterr()
    for _ in range(2):  # the rerun sorts that photo again; the run after it finds nothing to say
        sort_photos(run, folder, out, progress=False)
        assert capfd.readouterr().err == ""
    assert all(json.loads(line) for line in (out / JOURNAL).read_bytes().splitlines())
    assert len(sort_rows(out)) == len(truth) + 2


def test_the_threshold_says_what_it_means_on_held_out_photos_and_a_target_accuracy_picks_it(trained, photos, tmp_path):
    import torch

    from heritagelens.files import safe_load

    _, run = trained
    folder, _ = photos
    ckpt = safe_load(run / "last.pt")
    held = {"confidence": [0.9, 0.8, 0.6, 0.4], "predicted": [0, 1, 0, 2], "label": [0, 1, 1, 2]}
    ckpt["calibration"] = {v: {"temperature": 1.0, "held_out": held} for v in ("plain", "tta")}
    torch.save(ckpt, tmp_path / "measured.pt")
    p = cli("sort", tmp_path / "measured.pt", folder, "--out", tmp_path / "a", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "--min-confidence at 0.50: 75.0% of photos filed, 66.7% of those right, on 4 held-out" in p.stdout
    p = cli("sort", tmp_path / "measured.pt", folder, "--out", tmp_path / "b", "--target-accuracy", "0.9", "--quiet")
    assert p.returncode == 0, p.stderr  # 0.6 is the one miss: the threshold that files the most at 90% is 0.8
    assert "--min-confidence at 0.80: 50.0% of photos filed, 100.0% of those right" in p.stdout
    assert "(top-class probability below 0.80)" in p.stdout or "_uncertain" not in p.stdout
    held |= {"confidence": [0.9, 0.5], "predicted": [0, 0], "label": [1, 0]}  # the surest photo is wrong
    ckpt["calibration"]["plain"]["held_out"] = held
    torch.save(ckpt, tmp_path / "unsure.pt")
    with pytest.raises(SortError, match=r"no threshold reaches it on the held-out validation photos \(best 50.0%\)"):
        sort_photos(tmp_path / "unsure.pt", folder, tmp_path / "c", progress=False, target_accuracy=0.9)
    assert not (tmp_path / "c").exists()
    with pytest.raises(SortError, match="calibrate it"):  # not measured: nothing to pick from
        sort_photos(run, folder, tmp_path / "d", progress=False, target_accuracy=0.9)
    with pytest.raises(SortError, match="give one of them"):
        sort_photos(run, folder, tmp_path / "e", progress=False, target_accuracy=0.9, min_confidence=0.5)
