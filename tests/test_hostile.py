"""Hostile inputs, round 2: class names that are paths, names the file system stores as bytes or refuses, sidecars
shared, read-only or nested without end, and a journal or an output folder crafted to lead a sort elsewhere. Each
test fails on the code before its fix."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SETS, assert_one_line_error, cli, digest, sort_rows

from heritagelens.data import dataset
from heritagelens.files import safe_load
from heritagelens.model.card import MODEL_CARD, check_class_names
from heritagelens.model.checkpoint import CheckpointError, read_checkpoint, write_model_folder
from heritagelens.sort.journal import JOURNAL, SortError
from heritagelens.sort.place import NAME_BYTES, photo_in
from heritagelens.sort.sorter import sort_photos

BAD_NAMES = ["..", "../../escaped", "/tmp/abs", "a/b", "a\\b", ".hidden", "_uncertain", "", "x" * 101, "tab\there"]


def photo(trained, k: int = 0) -> Path:
    return sorted((trained[0] / "test").rglob("*.jpg"))[k]


def crafted(trained, tmp_path: Path, classes: list[str]) -> Path:
    ckpt = safe_load(trained[1] / "last.pt")
    ckpt["classes"] = classes
    torch.save(ckpt, tmp_path / "crafted.pt")
    return tmp_path / "crafted.pt"


# ------------------------------------------------------------------------------------------------- class names


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_class_name_that_is_not_a_plain_folder_name_is_refused_wherever_a_model_is_read(trained, tmp_path, bad):
    classes = list(safe_load(trained[1] / "last.pt")["classes"])
    classes[1] = bad
    with pytest.raises(CheckpointError, match="crafted.pt: (class name|its class names)"):
        read_checkpoint(crafted(trained, tmp_path, classes))
    with pytest.raises(CheckpointError):
        check_class_names(classes, "card.json")


def test_a_model_folder_or_onnx_file_with_a_path_for_a_class_is_refused(trained, tmp_path):
    from heritagelens.model.card import BUNDLED, MODEL_ONNX
    from heritagelens.model.onnx_runner import ExportError, OnnxClassifier

    folder = write_model_folder(trained[1] / "last.pt", tmp_path / "model").parent
    card = json.loads((folder / MODEL_CARD).read_text())
    card["classes"][0] = "../../outside"
    (folder / MODEL_CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="class name '../../outside' holds a path separator"):
        read_checkpoint(folder)

    import onnx

    graph = onnx.load(BUNDLED / MODEL_ONNX)
    meta = {p.key: p for p in graph.metadata_props}
    for value, needle in (('["..", "b"]', "class name '..' begins with '.'"), ('"altar"', "not a list of names")):
        meta["heritagelens.classes"].value = value
        onnx.save(graph, tmp_path / "crafted.onnx")
        with pytest.raises(ExportError, match=needle):
            OnnxClassifier(tmp_path / "crafted.onnx")


def test_sort_with_a_crafted_class_copies_nothing_anywhere(trained, tmp_path):
    classes = list(safe_load(trained[1] / "last.pt")["classes"])
    classes[0] = "../../escaped"
    model = crafted(trained, tmp_path, classes)
    (tmp_path / "photos").mkdir()
    shutil.copy(photo(trained), tmp_path / "photos" / "a.jpg")
    p = cli("sort", model, tmp_path / "photos", "--out", tmp_path / "a" / "b" / "out", "--min-confidence", "0")
    assert_one_line_error(p, "class name '../../escaped' holds a path separator")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.pt", "photos"]  # no 'escaped', no out


def test_a_class_folder_named_as_the_unsure_folder_or_a_hidden_one_is_refused_in_a_dataset(tmp_path):
    (tmp_path / "train" / "_uncertain").mkdir(parents=True)
    (tmp_path / "train" / "apse").mkdir()
    with pytest.raises(dataset.DataError, match="_uncertain: the class folder's name is the name of a sort's folder"):
        dataset.list_classes(tmp_path)


# ------------------------------------------------------------------------------------------ names as the disk has them


def test_a_photo_whose_name_is_not_utf8_is_sorted_once_and_listed_readably(trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    odd = os.fsdecode(b"caf\xe9.jpg")  # Latin-1, from an old camera or a Windows share
    shutil.copy(photo(trained), folder / odd)
    out = tmp_path / "out"
    first = sort_photos(trained[1], folder, out, min_confidence=0, progress=False)
    assert first.sorted == 1
    row = sort_rows(out)["caf\\xe9.jpg"]
    assert row["copied_to"].endswith("/caf\\xe9.jpg") and not row["error"]
    copies = [p for p in out.rglob("*.jpg")]
    assert [os.fsencode(p.name) for p in copies] == [b"caf\xe9.jpg"]  # the copy keeps the photo's bytes
    again = sort_photos(trained[1], folder, out, min_confidence=0, progress=False)
    assert (again.sorted, again.skipped) == (0, 1) and len(list(out.rglob("*.jpg"))) == 1


def test_a_long_legal_name_is_shortened_by_bytes_and_stays_unique(trained, tmp_path):
    folder = tmp_path / "photos"
    deep = folder / ("\u5efa" * 83)  # 249 bytes, a legal folder name
    deep.mkdir(parents=True)
    names = ["\U0001f3db" * 62 + ".jpg", "\U0001f3db" * 61 + "\u00e9.jpg"]  # 252 and 249 bytes
    for n in names:
        shutil.copy(photo(trained), deep / n)
    out = tmp_path / "out"
    s = sort_photos(trained[1], folder, out, min_confidence=0, progress=False)
    assert s.sorted == 2 and s.unreadable == 0
    copies = sorted(out.rglob("*.jpg"))
    assert len(copies) == 2 and len({p.name for p in copies}) == 2
    assert all(len(os.fsencode(p.name)) <= NAME_BYTES for p in copies)
    assert all(p.name.endswith(".jpg") for p in copies)
    again = sort_photos(trained[1], folder, out, min_confidence=0, progress=False)
    assert (again.sorted, again.skipped) == (0, 2)


def test_a_name_with_a_backslash_is_copied_once_however_often_the_sort_runs(trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photo(trained), folder / "a\\b.jpg")
    out = tmp_path / "out"
    sort_photos(trained[1], folder, out, min_confidence=0, progress=False)
    for _ in range(2):
        again = sort_photos(trained[1], folder, out, min_confidence=0, progress=False)
        assert (again.sorted, again.skipped) == (0, 1)
    assert [p.name for p in out.rglob("*.jpg")] == ["a_b.jpg"]


# ----------------------------------------------------------------------------------------------------- sidecars


def test_two_photos_beside_one_lightroom_sidecar_leave_it_alone_and_get_their_own(trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photo(trained, 0), folder / "pair.jpg")
    from PIL import Image

    Image.open(photo(trained, -1)).save(folder / "pair.png")
    shared = folder / "pair.xmp"
    shared.write_text('<x:xmpmeta xmlns:x="adobe:ns:meta/"/>')
    before = shared.read_bytes()
    out = tmp_path / "out"
    s = sort_photos(trained[1], folder, out, min_confidence=0, progress=False, xmp=True)
    assert s.sidecars["written"] == 2 and shared.read_bytes() == before
    assert (folder / "pair.jpg.xmp").is_file() and (folder / "pair.png.xmp").is_file()
    again = sort_photos(trained[1], folder, out, min_confidence=0, progress=False, xmp=True)
    assert again.sidecars["unchanged"] == 2 and shared.read_bytes() == before


def test_a_read_only_nested_or_special_sidecar_is_left_as_it_is_and_the_sort_finishes(trained, tmp_path):
    folder = tmp_path / "photos"
    for k, sub in enumerate(("ro", "deep", "fifo", "link")):
        (folder / sub).mkdir(parents=True)
        shutil.copy(photo(trained, k), folder / sub / "a.jpg" if k == 0 else folder / sub / f"{'abcd'[k]}.jpg")
    os.mkfifo(folder / "fifo" / "c.jpg.xmp")  # reading it would wait for a writer that never comes
    (folder / "link" / "d.jpg.xmp").symlink_to("/dev/zero")
    ro = folder / "ro" / "a.jpg.xmp"
    ro.write_text('<x:xmpmeta xmlns:x="adobe:ns:meta/"/>')
    ro.chmod(0o444)
    nested = "<n>" * 5000 + "</n>" * 5000
    deep = folder / "deep" / "b.jpg.xmp"
    deep.write_text(f'<x:xmpmeta xmlns:x="adobe:ns:meta/">{nested}</x:xmpmeta>')
    before = digest(folder)
    out = tmp_path / "out"
    s = sort_photos(trained[1], folder, out, min_confidence=0, progress=False, xmp=True)
    assert s.sorted == 4 and s.sidecars["failed"] == 4
    rows = sort_rows(out)
    assert "read-only: left as it is" in rows["ro/"]["error"]
    assert "nested too deeply" in rows["deep/"]["error"]
    assert "not a regular file" in rows["fifo/"]["error"] and "a symbolic link" in rows["link/"]["error"]
    assert digest(folder) == before


# ------------------------------------------------------------------------------------------- journal and OUT


def test_a_crafted_journal_row_never_leads_a_sidecar_or_the_review_outside_the_photo_folder(trained, tmp_path):
    folder, outside = tmp_path / "photos", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    shutil.copy(photo(trained), folder / "a.jpg")
    shutil.copy(photo(trained), outside / "victim.jpg")
    out = tmp_path / "out"
    sort_photos(trained[1], folder, out, min_confidence=0, progress=False)
    row = json.loads((out / JOURNAL).read_text().splitlines()[0])
    with (out / JOURNAL).open("a") as f:
        f.write(json.dumps({**row, "file": "../elsewhere/victim.jpg"}) + "\n")
    s = sort_photos(trained[1], folder, out, min_confidence=0, progress=False, xmp=True)
    assert s.sidecars["written"] == 1
    assert sorted(p.name for p in outside.iterdir()) == ["victim.jpg"]  # no sidecar written beside it
    assert "../elsewhere/victim.jpg" not in sort_rows(out)
    (folder / "linked").symlink_to(outside)
    with pytest.raises(SortError, match="not a photo inside the photo folder"):
        photo_in(folder, "linked/victim.jpg")
    with pytest.raises(SortError, match="not a photo inside the photo folder"):
        photo_in(folder, "../elsewhere/victim.jpg")


def test_a_class_folder_in_out_that_is_a_link_stops_the_sort_before_a_copy_goes_through(trained, tmp_path):
    folder, outside = tmp_path / "photos", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    shutil.copy(photo(trained), folder / "a.jpg")
    out = tmp_path / "out"
    sort_photos(trained[1], folder, out, min_confidence=0, progress=False)
    (cls,) = [p for p in out.iterdir() if p.is_dir()]
    shutil.rmtree(cls)
    cls.symlink_to(outside)
    shutil.copy(photo(trained), folder / "b.jpg")
    for _ in range(2):
        with pytest.raises(SortError, match=f"{cls.name}: a symbolic link or not a folder"):
            sort_photos(trained[1], folder, out, min_confidence=0, progress=False)
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------------------------ where commands write


def test_train_into_a_folder_holding_other_files_is_refused_and_touches_nothing(trained, tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    (mine / "train.log").write_text("my log\n")
    before = digest(mine)
    p = cli("train", "--data", trained[0], "--epochs", "1", "--out", mine, "--quiet", *SETS)
    assert_one_line_error(p, f"{mine}: already holds files (not a run to resume)")
    assert digest(mine) == before


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_the_last_good_one_is_kept(
    trained, tmp_path, monkeypatch, capsys
):
    import errno

    from heritagelens import cli as hl_cli
    from heritagelens.train import runs

    real, saved = runs.atomic_save, []

    def full_after_the_first_epoch(obj, path):
        if Path(path).name == "last.pt" and saved:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(path)
        return real(obj, path)

    monkeypatch.setattr(runs, "atomic_save", full_after_the_first_epoch)
    run = tmp_path / "run"
    rc = hl_cli.main(["train", "--data", str(trained[0]), "--epochs", "3", "--out", str(run), "--quiet", *SETS])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("heritagelens: error: ") and "Traceback" not in "\n".join(err)
    assert f"{run / 'last.pt'}: cannot write the checkpoint (No space left on device)" in err[-1]
    assert "the one written before is kept" in err[-1]
    assert safe_load(run / "last.pt")["epoch"] == 1  # whole, from the epoch before the disk filled


@pytest.mark.parametrize("what", ["folder", "fifo", "link"])
def test_report_out_is_a_new_path_or_a_regular_file_never_what_else_is_there(trained, tmp_path, what):
    target = tmp_path / "target"
    if what == "folder":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    elif what == "fifo":
        os.mkfifo(target)
    else:
        (tmp_path / "real.html").write_text("mine")
        target.symlink_to(tmp_path / "real.html")
    p = cli("report", trained[1], "--out", target)
    assert_one_line_error(p, f"{target}: exists and is not a regular file")
    assert what != "folder" or (target / "keep.txt").read_text() == "mine"
    assert what != "link" or (tmp_path / "real.html").read_text() == "mine" and target.is_symlink()
    assert cli("report", trained[1], "--out", tmp_path / "new.html").returncode == 0


def test_tune_against_a_server_that_accepts_and_never_answers_is_one_line(monkeypatch):
    import socket
    import threading

    from heritagelens.jobs import tune

    monkeypatch.setattr(tune, "CONNECT_SECONDS", 2)  # libpq's least
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel accepts; nothing ever answers
        url = f"postgresql://heritagelens@127.0.0.1:{server.getsockname()[1]}/studies"
        outcome = []

        def attempt():
            try:
                tune.open_study(url, "study")
            except tune.TuneError as e:
                outcome.append(str(e))

        t = threading.Thread(target=attempt, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "tune waited on the server without end"
    assert outcome and "the database server did not answer within 2 s" in outcome[0]


# ------------------------------------------------------------------------------------ a crafted sort folder


def sorted_once(trained, tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(2):
        shutil.copy(photo(trained, k), folder / f"p{k}.jpg")
    out = tmp_path / "out"
    sort_photos(trained[1], folder, out, min_confidence=1, progress=False)  # both wait in _uncertain/
    return folder, out


@pytest.mark.parametrize(
    "line",
    [
        lambda row: json.dumps({k: v for k, v in row.items() if k != "class"}),
        lambda row: json.dumps({**row, "p": "", "probability": ""}),
        lambda row: json.dumps({**row, "p": float("nan")}),
        lambda row: json.dumps({**row, "top3": 7, "model_class": ["x"]}),
        lambda row: "[" * 100_000 + "]" * 100_000,
    ],
)
def test_a_crafted_journal_row_is_refused_with_a_warning_not_a_traceback(trained, tmp_path, line, capsys):
    folder, out = sorted_once(trained, tmp_path)
    row = json.loads((out / JOURNAL).read_text().splitlines()[0])
    with (out / JOURNAL).open("a") as f:
        f.write(line(row) + "\n")
    s = sort_photos(trained[1], folder, out, min_confidence=0.5, progress=False, xmp=True)
    assert "refused (not a row of this sort" in capsys.readouterr().err
    assert s.done + s.skipped == 2 and set(sort_rows(out)) == {"p0.jpg", "p1.jpg"}


@pytest.mark.parametrize("settings", ["[]", '{"photos": 3}', "[" * 100_000])
def test_crafted_sort_settings_are_one_line(trained, tmp_path, settings):
    from heritagelens.sort.journal import META
    from heritagelens.sort.review import sort_settings

    folder, out = sorted_once(trained, tmp_path)
    (out / META).write_text(settings)
    with pytest.raises(SortError, match="unreadable"):
        sort_settings(out)
    with pytest.raises(SortError, match="unreadable|sorted earlier with another photo folder"):
        sort_photos(trained[1], folder, out, progress=False)


def test_a_review_of_a_copy_deleted_since_records_nothing(trained, tmp_path):
    from heritagelens.sort.review import decide, sorted_rows

    folder, out = sorted_once(trained, tmp_path)
    classes = list(safe_load(trained[1] / "last.pt")["classes"])
    rows = sorted_rows(out, classes)
    (out / rows["p0.jpg"]["copied_to"]).unlink()  # deleted in a file manager while the page showed it
    journal = (out / JOURNAL).read_bytes()
    with pytest.raises(SortError, match="the copy of p0.jpg is gone"):
        decide(out, "p0.jpg", classes[0], classes)
    assert (out / JOURNAL).read_bytes() == journal


def test_the_review_tab_answers_a_folder_name_too_long_for_the_file_system(trained):
    from heritagelens.webapp import UNSURE, Explorer

    r = Explorer(trained[1], trained[0]).review("x" * 5000, UNSURE)
    assert r.error and "File name too long" in r.status and len(r.status) < 400


# ------------------------------------------------------------------------------ low: one line, nothing lost, no hang


def with_calibration(trained, tmp_path: Path, held_out) -> Path:
    ckpt = safe_load(trained[1] / "last.pt")
    ckpt["calibration"] = {"plain": {"temperature": 1.5, "held_out": held_out}, "tta": {"temperature": 1.4}}
    torch.save(ckpt, tmp_path / "calibrated.pt")
    return tmp_path / "calibrated.pt"


@pytest.mark.parametrize(
    "held_out",
    [
        {"confidence": ["x"], "predicted": [0], "label": [0]},
        {"confidence": [float("nan"), 0.9], "predicted": [0, 1], "label": [0, 1]},
        {"confidence": [0.9, 0.8], "predicted": [0], "label": [0, 1]},
        "garbage",
    ],
)
def test_garbage_held_out_figures_count_as_none_measured(trained, tmp_path, held_out):
    model = with_calibration(trained, tmp_path, held_out)
    (tmp_path / "photos").mkdir()
    shutil.copy(photo(trained), tmp_path / "photos" / "a.jpg")
    p = cli("sort", model, tmp_path / "photos", "--out", tmp_path / "out", "--target-accuracy", "0.9")
    assert_one_line_error(p, "--target-accuracy needs the held-out figures")
    p = cli("sort", model, tmp_path / "photos", "--out", tmp_path / "out2", "--quiet")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize(
    "craft, needle",
    [
        (lambda c: c.update(config=[]), "checkpoint config unreadable"),
        (lambda c: c.update(config={"model": []}), "checkpoint config unreadable"),
        (lambda c: c["config"]["model"].update(widths="abc"), "checkpoint config unreadable"),
    ],
)
def test_a_config_that_is_not_a_table_is_one_line(trained, tmp_path, craft, needle):
    ckpt = safe_load(trained[1] / "last.pt")
    craft(ckpt)
    torch.save(ckpt, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match=needle):
        read_checkpoint(tmp_path / "crafted.pt")


def test_a_card_nested_without_end_is_one_line(trained, tmp_path):
    folder = write_model_folder(trained[1] / "last.pt", tmp_path / "model").parent
    (folder / MODEL_CARD).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(CheckpointError, match="unreadable model card"):
        read_checkpoint(folder)


def onnx_graph(path: Path, nodes: list, inits: list, in_type: int | None = None) -> Path:
    import onnx
    from onnx import TensorProto
    from onnx import helper as h

    inputs = [h.make_tensor_value_info("images", in_type or TensorProto.FLOAT, ["N", 3, 64, 64])]
    outputs = [h.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])]
    model = h.make_model(h.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=[h.make_opsetid("", 18)])
    h.set_model_props(model, {"heritagelens.classes": json.dumps([f"c{k}" for k in range(10)])})
    onnx.save(model, path)
    return path


def test_an_onnx_graph_of_another_input_of_nan_or_without_end_is_one_line(tmp_path, monkeypatch):
    import numpy as np
    from onnx import TensorProto
    from onnx import helper as h

    from heritagelens.model import onnx_runner
    from heritagelens.model.onnx_runner import ExportError, OnnxClassifier

    w = h.make_tensor("W", TensorProto.FLOAT, [12288, 10], np.zeros(12288 * 10, np.float32))
    flat = [h.make_node("Flatten", ["images"], ["f"]), h.make_node("MatMul", ["f", "W"], ["z"])]
    images = np.zeros((2, 3, 64, 64), np.uint8)
    ints = onnx_graph(
        tmp_path / "int.onnx",
        [
            h.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
            h.make_node("Flatten", ["x"], ["f"]),
            h.make_node("MatMul", ["f", "W"], ["logits"]),
        ],
        [w],
        TensorProto.INT64,
    )
    with pytest.raises(ExportError, match="inputs or outputs are not those of a HeritageLens export"):
        OnnxClassifier(ints)
    one = h.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nan = onnx_graph(
        tmp_path / "nan.onnx",
        [*flat, h.make_node("Sub", ["z", "one"], ["m"]), h.make_node("Log", ["m"], ["logits"])],
        [w, one],
    )
    with pytest.raises(ExportError, match="not a finite logit per class and image"):
        OnnxClassifier(nan).probabilities(images)
    body = h.make_graph(
        [h.make_node("Identity", ["c_in"], ["c_out"]), h.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [
            h.make_tensor_value_info("i", TensorProto.INT64, []),
            h.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            h.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            h.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            h.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    trip = h.make_tensor("trip", TensorProto.INT64, [], [10**15])
    cond = h.make_tensor("cond", TensorProto.BOOL, [], [True])
    loop = onnx_graph(
        tmp_path / "loop.onnx",
        [*flat, h.make_node("Loop", ["trip", "cond", "z"], ["logits"], body=body)],
        [w, trip, cond],
    )
    monkeypatch.setattr(onnx_runner, "RUN_SECONDS", 1.0)
    with pytest.raises(ExportError, match=r"the graph failed on 2 image\(s\) \(stopped after 1.0 s\)"):
        OnnxClassifier(loop).probabilities(images)


@pytest.mark.parametrize("name", ["model.safetensors", "card.json", "model.onnx", "last.pt"])
@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_a_fifo_or_endless_device_in_place_of_a_model_file_is_refused_unread(trained, tmp_path, name, kind):
    from heritagelens.model.onnx_runner import ExportError, OnnxClassifier

    folder = write_model_folder(trained[1] / "last.pt", tmp_path / "model").parent
    target = folder / name
    target.unlink(missing_ok=True)
    os.mkfifo(target) if kind == "fifo" else target.symlink_to("/dev/zero")
    with pytest.raises((CheckpointError, ExportError), match="not a regular file"):
        if name == "model.onnx":
            OnnxClassifier(target)
        else:
            read_checkpoint(target if name == "last.pt" else folder)


def test_a_fifo_in_place_of_the_sort_lock_is_one_line(trained, tmp_path):
    from heritagelens.sort.journal import LOCK

    folder, out = sorted_once(trained, tmp_path)
    (out / LOCK).unlink()
    os.mkfifo(out / LOCK)
    with pytest.raises(SortError, match="cannot hold the sort's lock"):
        sort_photos(trained[1], folder, out, progress=False)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["dream", "{run}", "--class", "arch", "--seed", str(2**64)], "must be a whole number from 0 to 2**63 - 1"),
        (["dream", "{run}", "--class", "arch", "--samples", "100000000"], "at most 256, not 100000000"),
        (["train", "--data", "{root}", "--set", "model.kernel_size=-1"], "model.kernel_size must be odd and positive"),
        (
            ["train", "--data", "{root}", "--set", "train.threads=-1"],
            "train.threads, train.limit_train and train.min_steps",
        ),
        (
            ["train", "--data", "{root}", "--set", "train.limit_train=-5"],
            "train.limit_train and train.min_steps must be 0",
        ),
        (["train", "--data", "{root}", "--seed", "-1"], "--seed -1: must be a whole number from 0"),
        (["serve", "{run}", "--host", "::1"], "an IPv6 address"),
        (["serve", "{run}", "--host", "h" * 300], "not a host name"),
        (["train", "--data", "{root}", "--preset", "{deep}"], "deep.json"),
    ],
)
def test_settings_out_of_range_are_one_line(trained, tmp_path, args, needle):
    root, run = trained
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    argv = [a.format(run=run, root=root, deep=tmp_path / "deep.json") for a in args]
    p = cli(*argv, "--out", tmp_path / "o") if argv[0] != "serve" else cli(*argv)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert needle in p.stderr.strip().splitlines()[-1], p.stderr


@pytest.mark.parametrize(
    "craft, needle",
    [
        (lambda c: c.update(epoch="garbage"), "its epoch (garbage) is not one of its training's"),
        (lambda c: c.update(epoch=10**9), "is not one of its training's"),
        (lambda c: c.update(optimizer={"state": 5, "param_groups": "x"}), "its optimizer state does not fit"),
    ],
)
def test_resume_of_a_checkpoint_with_a_garbage_training_state_is_one_line(trained, tmp_path, craft, needle):
    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    ckpt = safe_load(run / "last.pt")
    ckpt["epoch"] = 1
    craft(ckpt)
    torch.save(ckpt, run / "last.pt")
    assert_one_line_error(cli("train", "--resume", run, "--quiet"), needle)


def test_a_keyword_in_resource_form_stays_in_the_sidecar():
    from heritagelens.sort.xmp import Tag, merged, read_tag

    person = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag>'
        b'<rdf:li rdf:resource="http://vocab.getty.edu/aat/300002775"/><rdf:li>Lincoln</rdf:li>'
        b"</rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    once = merged(person, Tag("apse", "apse", 0.9, "m"))
    twice = merged(once, Tag(None, "apse", 0.4, "m"))
    for xml in (once, twice):
        assert b'rdf:resource="http://vocab.getty.edu/aat/300002775"' in xml and b"Lincoln" in xml
    assert b"<rdf:li />" not in twice and read_tag(twice).filed is None


def test_dream_dream_score_and_tune_check_where_they_write_before_the_work(trained, read_only, tmp_path):
    root, run = trained
    folder, freeze = read_only
    freeze()
    why = f"{folder}: cannot write into this folder"
    assert_one_line_error(cli("dream", run, "--class", "arch", "--samples", "1", "--out", folder), why)
    (tmp_path / "imgs").mkdir()
    assert_one_line_error(cli("dream-score", tmp_path / "imgs", "--json", folder / "s.json", "--data", root), why)
    assert_one_line_error(cli("tune", "--trials", "1", "--runs", folder, "--data", root), why)
    (tmp_path / "file").write_text("mine")
    p = cli("tune", "--show", "--runs", tmp_path / "file")
    assert_one_line_error(p, f"{tmp_path / 'file'}: --runs names a file, not a folder")
    assert (tmp_path / "file").read_text() == "mine"


def test_an_unreadable_class_folder_or_photo_is_one_line_in_data_check_and_train(trained, tmp_path):
    """Run without the capability that lets root read anything, so that permissions hold as for any user."""
    if shutil.which("setpriv") is None:
        pytest.skip("util-linux setpriv missing")
    root = tmp_path / "ahe"
    shutil.copytree(trained[0], root)
    locked = sorted((root / "train").iterdir())[1]
    as_a_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}

    def run(*args):
        import subprocess
        import sys

        cmd = [*as_a_user, sys.executable, "-m", "heritagelens", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    first = sorted(locked.iterdir())[0]
    first.chmod(0)
    p = run("data", "check", root)
    assert "Traceback" not in p.stderr and f"{first}: cannot read this file (Permission denied)" in p.stdout
    locked.chmod(0)
    try:
        p = run("data", "check", root)
        assert "Traceback" not in p.stderr and f"{locked}: cannot read this folder (Permission denied)" in p.stdout
        assert_one_line_error(
            run("train", "--data", root, "--out", tmp_path / "run", "--quiet", *SETS),
            f"{locked}: cannot read this folder (Permission denied)",
        )
    finally:
        locked.chmod(0o755)
