"""The real command, run as a user runs it: in a process of its own, reading its output and exit code."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SETS, TINY_JUDGES, assert_one_line_error, cli
from PIL import Image

from heritagelens.jobs.deconv import image_view_paths


def test_train_writes_a_complete_run_folder(trained):
    _, run = trained
    for name in ("config.json", "split.json", "metrics.csv", "train.log", "last.pt", "best.pt"):
        assert (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert not list(run.glob(".*.tmp"))  # no temporary files left by atomic writes


def test_evaluate_prints_tables_and_writes_json_and_png(trained):
    _, run = trained
    p = cli("evaluate", run / "last.pt", "--split", "test", "--no-tta")
    assert p.returncode == 0, p.stderr
    assert "accuracy on test (15 images)" in p.stdout and "macro avg" in p.stdout and "<- predicted" in p.stdout
    result = json.loads((run / "eval-test.json").read_text())
    assert result["split"] == "test" and result["n"] == 15 and len(result["confusion"]) == 3
    assert (run / "confusion-test.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_reports_each_image_and_names_bad_ones(trained, tmp_path):
    root, run = trained
    good = next((root / "test" / "bell").iterdir())
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    p = cli("predict", run, good, tmp_path / "bad.jpg", "--top", "2")
    assert p.returncode == 2
    assert p.stdout.startswith(f"{good}: ") and len(p.stdout.split(",")) == 2
    assert "bad.jpg: not an image" in p.stderr and "Traceback" not in p.stderr


def test_layers_lists_names_shapes_and_parameters(trained):
    p = cli("layers", trained[1] / "last.pt")
    assert p.returncode == 0, p.stderr
    table = {line.split()[0]: line for line in p.stdout.splitlines()[1:-2]}
    assert "(8, 64, 64)" in table["conv1_1"] and "head.fc" in table and "features.conv1_1" not in p.stdout
    taken = p.stdout.splitlines()[-1]
    assert taken.startswith("conv layers (what deconv --layer takes): conv1_1, conv2_1")
    assert all(name in table for name in taken.partition(": ")[2].split(", "))
    assert "classes: arch, bell, dome" in p.stdout


def test_data_check_table(trained):
    p = cli("data", "check", trained[0])
    assert p.returncode == 0, p.stderr
    assert "bell" in p.stdout and "unreadable files: 0" in p.stdout and "64x64 (87)" in p.stdout


def test_resume_a_finished_run_changes_nothing(trained):
    _, run = trained
    before = (run / "last.pt").read_bytes()
    p = cli("train", "--resume", run, "--quiet")
    assert p.returncode == 0, p.stderr
    assert (run / "last.pt").read_bytes() == before


def test_refuses_to_overwrite_a_run(trained):
    root, run = trained
    assert_one_line_error(cli("train", "--data", root, "--out", run, *SETS), "already holds a run")


@pytest.mark.parametrize(
    "args,needles",
    [
        (["data", "check", "/no/such/dir"], ["/no/such/dir: no such directory"]),
        (["evaluate", "/no/such.pt"], ["/no/such.pt: no such file"]),
        (["train", "--resume", "/no/run"], ["/no/run: no last.pt"]),
        (["train", "--data", "/no/dir", "--set", "train.epochs=1"], ["/no/dir: no such directory"]),
        (["train", "--data", ".", "--set", "train.bogus=1"], ["bad setting 'train.bogus=1'"]),
        (["train", "--preset", "fastest"], ["unknown preset 'fastest'"]),
    ],
)
def test_bad_input_gives_one_line(args, needles, tmp_path):
    assert_one_line_error(cli(*args, cwd=tmp_path), *needles)


def test_the_installed_command_starts_in_a_fresh_interpreter(tmp_path):
    """The tests' `cli` forks a warm process; this one is the console script a user types, started cold."""
    exe = Path(sys.executable).with_name("heritagelens")
    p = subprocess.run([exe, "layers", tmp_path / "no.pt"], capture_output=True, text=True, timeout=120)
    assert_one_line_error(p, "no.pt: no such file")
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "usage: heritagelens" in p.stdout and "sort" in p.stdout


def test_data_check_on_unusable_layout(tmp_path):
    (tmp_path / "train" / "apse").mkdir(parents=True)
    p = cli("data", "check", tmp_path)
    assert p.returncode == 2 and "empty class folder" in p.stdout and "layout unusable" in p.stderr


def test_foreign_checkpoint_gives_one_line(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04 not really a zip")
    assert_one_line_error(cli("layers", tmp_path / "model.pt"), "model.pt: not a HeritageLens checkpoint")


def test_run_without_data_says_where_to_get_it(tmp_path):
    p = cli("run", cwd=tmp_path)
    assert_one_line_error(
        p,
        "no AHE64 data found",
        "heritagelens data fetch",
        "ikobzev/architectural-heritage-elements-image64-dataset",
        "AHE_DATA",
    )


def test_main_job_writes_evaluation_figures_and_a_scored_gallery_from_a_robust_model(main_run):
    p, run = main_run
    summary = json.loads((run / "summary.json").read_text())
    g = summary["gallery"]
    robust_eval = json.loads((run / "robust" / "eval-val.json").read_text())  # the robust model, evaluated
    assert g["model"] == "robust" and g["figure"] == "dream-gallery.png"
    assert (
        g["robust_val_accuracy"] == robust_eval["accuracy"]
        and robust_eval["n"] == json.loads((run / "eval-val.json").read_text())["n"]
    )  # on the standard model's validation split
    assert set(g) >= {"gallery (this gallery)", "naive ascent (floor)", "real val (ceiling)", "naive, standard model"}
    meta = json.loads((run / "dream-gallery.json").read_text())
    scored, classes = meta["scores"], len(meta["classes"])
    assert scored["gallery (this gallery)"]["n"] == 2 * classes  # gallery.samples=2 per class
    assert scored["naive ascent (floor)"]["n"] == scored["naive, standard model"]["n"] == classes  # floor_samples=1
    robust_cfg = json.loads((run / "robust" / "config.json").read_text())
    assert robust_cfg["train"]["adv_eps"] == 4 and robust_cfg["train"]["epochs"] == 2
    assert robust_cfg["train"]["optimizer"] == "sgd"  # the robust recipe was measured with SGD, whatever the default
    assert robust_cfg["train"]["init_from"] == str(run / "last.pt")  # by default fine-tuned from the standard model
    assert robust_cfg["model"] == json.loads((run / "config.json").read_text())["model"]
    with Image.open(run / "dream-gallery.png") as im:  # a grid of classes x samples upscaled images
        assert im.format == "PNG" and im.width > 2 * 64 and im.height > classes * 64
    assert "class images" in p.stdout and "real val (ceiling)" in p.stdout
    stages = summary["stages_seconds"]
    assert list(stages) == ["train", "calibrate", "evaluate", "deconvnet figures", "robust model", "class images"]
    assert summary["calibration"]["plain"]["temperature"] > 0 and summary["calibration"]["tta"]["tta"]
    assert "expected calibration error on val" in p.stdout and (run / "reliability-val.png").exists()
    assert all(v > 0 for v in stages.values())
    assert f"report: {run / 'report.html'}" in p.stdout and (run / "report.html").exists()
    compute, n = summary["train_compute"], json.loads((run / "split.json").read_text())["train_images"]
    # 2 epochs at batch 16; the default progressive resizing trains the first at 32 px, the last always at 64
    assert compute["epochs_per_side"] == {"32": 1, "64": 1} and compute["steps"] == 2 * -(-n // 16)
    full = n * compute["gflop_per_image"]
    assert 1.2 * full < compute["tflop"] * 1e3 < 1.5 * full  # a 32 px epoch: about a quarter of a 64 px one
    assert "Training compute: " in (run / "report.html").read_text()
    split = json.loads((run / "split.json").read_text())
    source, val = set(split["source_files"]), set(split["val_files"])
    assert split["source_held_out"] == "flickr-newest" and len(source) == split["source_images"] > 0
    assert not source & val  # two validations, neither trained on
    assert set(summary["splits"]) >= {"val", "source"} and summary["splits"]["source"]["n"] == len(source)
    assert "accuracy on source (source-held-out validation" in (run / "report.html").read_text()


def test_deconv_top9_writes_the_figure_and_index(trained, tmp_path):
    root, run = trained
    p = cli("deconv", run / "last.pt", "--top9", "--layer", "conv2_1", "--channels", "0", "3", "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    png = tmp_path / "deconv-top9-conv2_1-ch0-3.png"  # named by the channels it shows
    index = json.loads(png.with_suffix(".json").read_text())
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert index["shown_channels"] == [0, 3] and len(index["channels"]) == 16
    top = index["channels"]["3"]
    assert len(top) == 9 and all((root / t["file"]).exists() for t in top)
    assert [t["activation"] for t in top] == sorted((t["activation"] for t in top), reverse=True)


def test_deconv_evolution_uses_the_snapshots(trained, tmp_path):
    _, run = trained  # trained for 2 epochs: the default snapshots give epoch-1.pt and epoch-2.pt, plus last.pt
    assert sorted(f.name for f in run.glob("epoch-*.pt")) == ["epoch-1.pt", "epoch-2.pt"]
    p = cli("deconv", run, "--evolution", "--layer", "conv2_1", "--channels", "1", "4", "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    index = json.loads((tmp_path / "deconv-evolution-conv2_1.json").read_text())
    assert [e["epoch"] for e in index["channels"]["4"]] == [1, 2, 2] and list(index["channels"]) == ["1", "4"]


def test_deconv_of_one_image_covers_every_layer(trained, tmp_path):
    root, run = trained
    image = next((root / "test" / "dome").iterdir())
    p = cli("deconv", run, "--image", image, "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    view, compared = image_view_paths(tmp_path, image)
    assert view.name.startswith(f"deconv-{image.stem}-") and compared.name.startswith(f"compare-{image.stem}-")
    index = json.loads(view.with_suffix(".json").read_text())
    assert list(index["layers"]) == ["conv1_1", "conv2_1"] and len(index["layers"]["conv2_1"]) == 9
    before = compared.read_bytes()
    again = cli("deconv", run, "--image", image, "--out", tmp_path, "--target", "bell")  # refused: nothing replaced
    assert_one_line_error(again, f"{view}: exists already", "--force")
    assert compared.read_bytes() == before
    p = cli("deconv", run, "--image", image, "--out", tmp_path, "--target", "bell", "--force")
    assert p.returncode == 0, p.stderr
    compare = json.loads(compared.with_suffix(".json").read_text())
    assert compare["target"] == "bell" and compare["layer"] == "conv2_1" and 0 <= compare["probability"] <= 1
    assert compared.read_bytes()[:4] == b"\x89PNG"
    twin = tmp_path / "card2" / image.name  # another card's photo of the same name: its own figures
    twin.parent.mkdir()
    shutil.copyfile(next((root / "test" / "arch").iterdir()), twin)
    assert cli("deconv", run, "--image", twin, "--out", tmp_path, "--layer", "conv1_1").returncode == 0
    assert compared.read_bytes() != image_view_paths(tmp_path, twin)[1].read_bytes()
    assert json.loads(image_view_paths(tmp_path, twin)[0].with_suffix(".json").read_text())["image"] == str(twin)


def test_deconv_of_a_folder_writes_one_set_per_photo_and_an_index(trained, tmp_path):
    """Two cards' IMG_0001.jpg and a truncated photo: two sets of figures, three rows, the bad one saying why."""
    import heritagelens as hl
    from heritagelens.jobs.deconv import INDEX

    root, run = trained
    photos = tmp_path / "photos"
    for card, cls in (("card1", "dome"), ("card2", "arch")):
        (photos / card).mkdir(parents=True)
        shutil.copyfile(next((root / "test" / cls).iterdir()), photos / card / "IMG_0001.jpg")
    (photos / "card2" / "IMG_0002.jpg").write_bytes((photos / "card1" / "IMG_0001.jpg").read_bytes()[:300])
    out = tmp_path / "out"
    p = cli("deconv", run, "--image", photos, "--out", out)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader((out / INDEX).open()))
    assert [r["photo"] for r in rows] == [str(f) for f in sorted(photos.rglob("*.jpg"))]
    good = [r for r in rows if not r["problem"]]
    assert len(good) == 2 and "truncated" in rows[2]["problem"] and rows[2]["compare"] == ""
    for r in good:  # each set its own, quoting the probability predict gives
        assert (out / r["deconv"]).is_file() and (out / r["compare"]).is_file()
        assert json.loads((out / r["compare"]).with_suffix(".json").read_text())["image"] == r["photo"]
        model, classes, ckpt = hl.load_model(run)
        want = hl.probabilities(model, hl.decode(r["photo"])[None], hl.temperature(ckpt, tta=False))[0]
        assert r["class"] == classes[int(want.argmax())] and float(r["probability"]) == pytest.approx(
            float(want.max()), abs=1e-3
        )
    assert len({r["compare"] for r in good}) == 2 and len(list(out.glob("*.png"))) == 4
    again = cli("deconv", run, "--image", photos, "--out", out)
    assert_one_line_error(again, "exists already", "--force")


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--top9", "--layer", "conv7_1"], ["unknown layer 'conv7_1'; conv layers: conv1_1, conv2_1"]),
        (["--top9"], ["needs --layer"]),
        (["--top9", "--layer", "conv1_1", "--channels", "8"], ["channel 8 out of range", "0..7"]),
        # checked before the dataset is read (here there is none): a bad channel costs no scan
        (["--top9", "--layer", "conv2_1", "--channels", "16", "--data", "/no/data"], ["channel 16 out of range"]),
        (["--image", __file__, "--channels", "12"], ["channel 12 out of range: layer 'conv1_1' has channels 0..7"]),
        (["--image", "/no/such.jpg"], ["/no/such.jpg: no such file"]),
        ([], ["exactly one of --top9"]),
        (["--evolution"], ["needs one --layer"]),
        (["--image", __file__, "--target", "gazebo"], ["unknown class 'gazebo'; classes: arch, bell, dome"]),
    ],
)
def test_deconv_bad_input_gives_one_line(trained, tmp_path, args, needles):
    assert_one_line_error(cli("deconv", trained[1] / "last.pt", "--out", tmp_path, *args), *needles)


def test_training_skips_unreadable_files_with_a_count_or_stops(tmp_path):
    from conftest import make_dataset

    root = make_dataset(tmp_path / "ahe")
    (root / "train" / "bell" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    p = cli("train", "--data", root, "--epochs", "1", "--out", tmp_path / "run", "--quiet", *SETS)
    assert p.returncode == 0, p.stderr
    assert "warning: skipped 1 unreadable file(s), first" in p.stderr and "broken.jpg" in p.stderr
    assert "broken.jpg" in (tmp_path / "run" / "train.log").read_text()
    p = cli("train", "--data", root, "--out", tmp_path / "run2", "--set", "data.on_bad_file=stop", *SETS)
    assert_one_line_error(p, "broken.jpg", "1 unreadable file(s)")
    assert not (tmp_path / "run2" / "last.pt").exists()


def test_deconv_refuses_a_model_it_cannot_mirror(trained, tmp_path):
    root, _ = trained
    sets = ["--set", "model.arch=resnet", "--set", "model.widths=[8,8]", "--set", "model.depths=[1,1]"]
    p = cli("train", "--data", root, "--epochs", "1", "--out", tmp_path / "res", "--quiet", *SETS[4:], *sets)
    assert p.returncode == 0, p.stderr
    p = cli("deconv", tmp_path / "res", "--top9", "--layer", "stem", "--out", tmp_path)
    assert_one_line_error(p, "layer 'block1_1' (ResidualBlock) cannot be mirrored by the deconvnet")


@pytest.fixture(scope="module")
def dreamed(trained, tmp_path_factory):
    """`dream --class bell` with scores, tiny judges trained into their own folder; (output folder, process)."""
    out = tmp_path_factory.mktemp("dream")
    args = ["--class", "bell", "--samples", "2", "--preset", "maco", "--out", out, "--judges", out / "judges"]
    p = cli("dream", trained[1], *args, *TINY_JUDGES, "--quiet")
    assert p.returncode == 0, p.stderr
    return out, p


def test_dream_writes_images_gallery_and_scores(dreamed):
    out, p = dreamed
    meta = json.loads((out / "dream-maco-bell.json").read_text())
    assert meta["classes"] == ["bell"] and meta["samples"] == 2 and meta["config"]["param"] == "phase"
    assert sorted(f.name for f in (out / "dream-maco-bell").iterdir()) == ["bell-0.png", "bell-1.png"]
    assert (out / "dream-maco-bell.png").read_bytes()[:4] == b"\x89PNG"
    sets = meta["scores"]
    assert list(sets) == ["maco (this gallery)", "naive ascent (floor)", "real val (ceiling)"]
    for s in sets.values():
        assert s["n"] == 2 and set(s["judges"]) == {"robust-resnet", "robust-cnn"} and list(s["per_class"]) == ["bell"]
        assert 0 <= s["judges"]["robust-cnn"]["recognised"] <= 1 and s["frechet"] >= 0
    assert sorted(meta["judges"]) == ["robust-cnn", "robust-resnet"]
    assert "real val (ceiling)" in p.stdout and (out / "dream-maco-bell.txt").read_text() in p.stdout + "\n"


def test_dream_score_scores_a_folder_beside_real_images(trained, dreamed, tmp_path):
    out, _ = dreamed
    p = cli(
        "dream-score",
        out / "dream-maco-bell",
        "--data",
        trained[0],
        "--judges",
        out / "judges",
        "--set",
        "data.val_folds=4",
        *TINY_JUDGES,
        "--json",
        tmp_path / "s.json",
    )
    assert p.returncode == 0, p.stderr
    assert "training judge" not in p.stdout  # the cached judges were found by their content key
    report = json.loads((tmp_path / "s.json").read_text())
    assert len(report["files"]) == 2 and set(report["scores"]) == {"dream-maco-bell", "real val (ceiling)"}
    assert report["scores"]["dream-maco-bell"]["n"] == 2 and report["scores"]["real val (ceiling)"]["n"] == 2


def test_dream_score_bad_folders(trained, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("dream-score", tmp_path / "empty", "--data", trained[0]), "empty: no images")
    (tmp_path / "odd").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "odd" / "tower-1.png")
    p = cli("dream-score", tmp_path / "odd", "--data", trained[0])
    assert_one_line_error(p, "tower-1.png: no class in its folder or file name (classes: arch, bell, dome)")
    assert_one_line_error(cli("dream-score", tmp_path / "nowhere", "--data", trained[0]), "nowhere: no such folder")


def test_dream_of_channels_and_of_a_class_from_a_photo(trained, tmp_path):
    root, run = trained
    p = cli("dream", run, "--channel", "conv2_1:3,5", "--samples", "2", "--unit", "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    meta = json.loads((tmp_path / "dream-default-conv2_1-ch3-5-centre.json").read_text())
    assert meta["channels"] == [3, 5] and meta["unit"] == "centre"
    photo = next((root / "train" / "arch").iterdir())
    p = cli("dream", run, "--class", "dome", "--from", photo, "--samples", "1", "--no-score", "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "dream-default-dome.json").read_text())["from_image"] == str(photo)
    p = cli("dream", run, "--class", "bell", "--samples", "1", "--no-score", "--out", tmp_path)  # another class
    assert p.returncode == 0 and (tmp_path / "dream-default-dome.png").exists(), p.stderr
    assert_one_line_error(cli("dream", run, "--class", "bell", "--out", tmp_path), "dream-default-bell.png: exists")


def test_dream_without_scores_trains_no_judges(trained, tmp_path):
    judges = Path(trained[0]) / ".heritagelens-cache" / "judges"  # where judges would be trained and cached
    before = sorted(judges.rglob("*")) if judges.exists() else []
    p = cli("dream", trained[1], "--class", "dome", "--samples", "1", "--no-score", "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    assert "scores" not in json.loads((tmp_path / "dream-default-dome.json").read_text())
    assert not (tmp_path / "dream-default-dome.txt").exists()
    assert "judge" not in p.stdout + p.stderr and (sorted(judges.rglob("*")) if judges.exists() else []) == before


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--class", "gazebo"], ["unknown class 'gazebo'; classes: arch, bell, dome"]),
        (["--all", "--preset", "pretty"], ["unknown dream preset 'pretty'"]),
        (["--all", "--samples", "0"], ["--samples must be at least 1"]),
        (["--all", "--set", "dream.steps=-3"], ["dream.steps must be at least 1"]),
        (["--all", "--set", "dream.tv=NaN"], ["bad setting 'dream.tv=NaN': takes a finite number"]),
        ([], ["exactly one of --class NAME, --all or --channel LAYER:C"]),
        (["--channel", "conv9_1:0"], ["unknown layer 'conv9_1'; conv layers: conv1_1, conv2_1"]),
        (["--channel", "conv2_1:99"], ["channel 99 out of range: layer 'conv2_1' has channels 0..15"]),
        (["--channel", "conv2_1:x"], ["--channel wants LAYER:C[,C...]"]),
        (["--class", "bell", "--from", "missing.jpg"], ["missing.jpg: no such file"]),
    ],
)
def test_dream_bad_input_gives_one_line(trained, tmp_path, args, needles):
    assert_one_line_error(cli("dream", trained[1], "--out", tmp_path, *args), *needles)


@pytest.mark.parametrize(
    "craft, needles",
    [
        (lambda c: c.pop("model"), ["no 'model' entry"]),
        (lambda c: c.update(classes="altar"), ["class names are not a list"]),
        (lambda c: c["calibration"]["plain"].update(temperature=-1.0), ["temperature (plain) is -1.0", "refused"]),
        (lambda c: c["calibration"]["tta"].update(temperature=float("nan")), ["temperature (tta) is nan"]),
        (lambda c: c["calibration"]["plain"].update(temperature=0), ["temperature (plain) is 0,"]),
        (lambda c: c["calibration"]["plain"].update(temperature=1e-320), ["is 1e-320", "not a fitted one"]),
        (lambda c: c["calibration"]["tta"].update(temperature=1e300), ["is 1e+300", "(0.05 to 20)"]),
        (lambda c: c["config"]["model"].update(widths=[10**5, 10**5]), ["do not fit", "shape"]),  # 360 GB if built
        (lambda c: c["config"]["model"].update(widths=[10**9, 10**9]), ["a model that cannot be built"]),
        (lambda c: c["model"].pop(next(iter(c["model"]))), ["do not fit", "missing"]),
    ],
)
def test_a_crafted_checkpoint_is_one_line_and_builds_nothing(trained, tmp_path, craft, needles):
    from heritagelens.files import safe_load

    root, run = trained
    ckpt = safe_load(run / "last.pt")
    ckpt["calibration"] = {"plain": {"temperature": 1.5}, "tta": {"temperature": 1.4}}
    craft(ckpt)
    torch.save(ckpt, tmp_path / "crafted.pt")
    image = next((root / "test").rglob("*.jpg"))
    assert_one_line_error(cli("predict", tmp_path / "crafted.pt", image), "crafted.pt: ", *needles)


@pytest.mark.parametrize("top", ["-1", "0"])
def test_predict_top_below_one_is_one_line(trained, top):
    root, run = trained
    image = next((root / "test").rglob("*.jpg"))
    assert_one_line_error(cli("predict", run, image, "--top", top), f"--top {top}: must be at least 1")


@pytest.mark.parametrize(
    "setting, needles",
    [
        ("train.epochs=abc", ["'train.epochs=abc'", "takes a whole number, not 'abc'"]),
        ("train.lr=nan", ["'train.lr=nan'", "takes a finite number"]),
        ("train.flip=yes", ["'train.flip=yes'", "takes true or false"]),
        ('model.widths=[8,"x"]', ["model.widths", "takes a list like [32, 64, 128, 256]"]),
    ],
)
def test_a_setting_of_the_wrong_type_names_key_and_value(trained, tmp_path, setting, needles):
    root, _ = trained
    p = cli("train", "--data", root, "--out", tmp_path / "r", "--set", setting)
    assert_one_line_error(p, "bad setting", *needles)
    assert not (tmp_path / "r").exists()


def test_export_into_an_existing_folder_is_one_line(trained, tmp_path):
    _, run = trained
    assert_one_line_error(cli("export", run, "--out", tmp_path), f"{tmp_path}: is a folder", "model.onnx")


def test_a_reader_that_goes_away_ends_the_output_quietly(trained):
    """`heritagelens predict MANY | head -1`: no BrokenPipeError, as `ls | head` has none."""
    root, run = trained
    images = [str(p) for p in sorted((root / "test").rglob("*.jpg"))] * 40
    p = subprocess.Popen(
        [sys.executable, "-m", "heritagelens", "predict", str(run), *images],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout.readline().startswith(images[0].encode())
    p.stdout.close()  # as `head -1` does after its line
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err


@pytest.mark.parametrize(
    "command, advice",
    [("cmd_sort", "run the same sort command again"), ("cmd_train", "train --resume RUN"), ("cmd_layers", "")],
)
def test_ctrl_c_gives_the_advice_of_the_command_interrupted(command, advice, monkeypatch, capsys):
    import dataclasses

    from heritagelens import cli as cli_module

    def interrupted(args):
        raise KeyboardInterrupt

    name = command.removeprefix("cmd_")
    monkeypatch.setitem(cli_module.COMMANDS, name, dataclasses.replace(cli_module.COMMANDS[name], func=interrupted))
    args = {"sort": ["sort", "m.pt", "photos", "--out", "o"], "train": ["train"], "layers": ["layers", "m"]}
    assert cli_module.main(args[name]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("heritagelens: interrupted") and advice in err and "\n" not in err
    assert name == "train" or "--resume" not in err


def test_evaluate_names_the_test_files_it_could_not_read_or_stops(trained, tmp_path):
    import shutil

    root, run = trained
    copy = tmp_path / "data"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".heritagelens-cache"))
    good = sorted((copy / "test" / "arch").glob("*.jpg"))
    (copy / "test" / "arch" / "zero.jpg").write_bytes(b"")
    (copy / "test" / "bell" / "half.jpg").write_bytes(good[0].read_bytes()[:200])
    p = cli("evaluate", run, "--split", "test", "--data", copy, "--out", tmp_path / "e", "--no-tta")
    assert p.returncode == 0, p.stderr
    assert "accuracy on test (15 images)" in p.stdout and "2 file(s) of test could not be read" in p.stdout
    assert "zero.jpg: empty file" in p.stdout and "half.jpg: corrupt or truncated" in p.stdout
    unreadable = json.loads((tmp_path / "e" / "eval-test.json").read_text())["unreadable"]
    assert sorted(Path(f).name for f, _ in unreadable) == ["half.jpg", "zero.jpg"]
    p = cli(
        "evaluate", run, "--split", "test", "--data", copy, "--out", tmp_path / "s", "--set", "data.on_bad_file=stop"
    )
    assert_one_line_error(p, "2 unreadable file(s)", "data check")
    assert not (tmp_path / "s").exists()
    p = cli("evaluate", run, "--data", copy, "--set", "train.epochs=3")
    assert_one_line_error(p, "evaluate --set takes data.* settings only")
    for command in (["dream", run, "--all"], ["dream-score", tmp_path]):  # a setting a command would ignore
        p = cli(*command, "--data", copy, "--set", "train.epochs=3")
        assert_one_line_error(p, f"{command[0]} --set takes", "gallery.judge_overrides settings only", "train.epochs=3")


def test_help_loads_neither_torch_nor_numpy():
    code = (
        "import sys\nfrom heritagelens import cli\n"
        "for argv in (['--help'], ['train', '--help'], ['dream', '--help'], ['data', 'fetch', '--help']):\n"
        "    try:\n        cli.main(argv)\n    except SystemExit as e:\n        assert e.code == 0\n"
        "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'matplotlib') if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "usage: heritagelens train" in p.stdout and p.stdout.splitlines()[-1] == "[]"


def test_serve_where_it_cannot_listen_is_one_line_before_the_model_loads(trained):
    import socket

    _, run = trained
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = cli("serve", run, "--port", port, timeout=60)
        assert_one_line_error(p, f"127.0.0.1:{port}: cannot listen there (the port is in use by another program)")
    p = cli("serve", run, "--host", "192.0.2.7", "--port", port, timeout=60)  # TEST-NET-1: no machine's address
    assert_one_line_error(p, "192.0.2.7", "not an address of this machine")
    assert_one_line_error(
        cli("serve", run, "--host", "no-such-host.invalid", timeout=60), "no-such-host.invalid: not a"
    )
    assert "serving" not in p.stdout


def test_a_read_only_folder_is_one_line_before_any_work(trained, read_only):
    import shutil

    root, run = trained
    folder, freeze = read_only
    shutil.copyfile(run / "last.pt", folder / "last.pt")
    before = (folder / "last.pt").read_bytes()
    freeze()
    image = next((root / "test").rglob("*.jpg"))
    why = "cannot write into this folder (Read-only file system)" if os.geteuid() == 0 else "cannot write into this"
    assert_one_line_error(cli("evaluate", run, "--out", folder), f"{folder}: {why}")
    assert_one_line_error(cli("calibrate", folder / "last.pt"), f"{folder}: {why}")
    assert_one_line_error(cli("deconv", run, "--image", image, "--out", folder), f"{folder}: {why}")
    assert_one_line_error(cli("export", run, "--out", folder / "m.onnx"), f"{folder}: {why}")
    assert_one_line_error(cli("train", "--data", root, "--out", folder / "run", *SETS), f"{folder / 'run'}: cannot")
    assert (folder / "last.pt").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["last.pt"]


@pytest.mark.parametrize(
    "args,first",
    [
        (["evaluate", "{run}", "--split", "test"], "heritagelens: evaluating {run} on test ("),
        (["calibrate", "{run}/last.pt"], "heritagelens: calibrating {run}/last.pt on its validation split"),
        (["deconv", "{run}", "--top9", "--layer", "conv2_1"], "heritagelens: deconv: {run}, the top 9 of every"),
        (["dream", "{run}", "--class", "dome", "--samples", "1", "--no-score"], "heritagelens: dream: {run}, 1 im"),
    ],
)
def test_a_slow_command_says_first_what_it_does(trained, tmp_path, args, first):
    """Its first line names the model and the photos; a later one how many (the bar is drawn on a terminal only)."""
    root, run = trained
    work = tmp_path / "run"
    shutil.copytree(run, work)  # calibrate rewrites its checkpoint, deconv and dream write beside it
    p = cli(*(a.format(run=work) for a in args))
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert lines[0].startswith(first.format(run=work)), p.stderr
    if args[0] in ("evaluate", "calibrate", "deconv"):
        assert any(" photos" in ln and any(c.isdigit() for c in ln) for ln in lines[1:]), p.stderr


def test_every_option_is_described_and_every_command_has_an_example_it_accepts():
    import shlex

    from heritagelens.cli import COMMANDS, EXAMPLES, parse

    assert set(EXAMPLES) == set(COMMANDS)
    for name, c in COMMANDS.items():
        for flags, options in c.arguments:
            assert options.get("help"), (name, flags)
        words = shlex.split(EXAMPLES[name].split(" > ")[0])
        assert words[0] == "heritagelens"
        assert parse(words[1:]).command_name == name, name  # the example parses as that command
    p = cli("predict", "--help")
    assert "example: heritagelens predict photos/ --top 5 --csv" in p.stdout and "(default: 3)" in p.stdout
