"""Model folders (safetensors and a card) and the model bundled with the package, used when no checkpoint is given."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, cli

from heritagelens.config import Config
from heritagelens.files import file_sha256
from heritagelens.model.card import (
    BUNDLED,
    MODEL_CARD,
    MODEL_ONNX,
    MODEL_WEIGHTS,
    CheckpointError,
    describe_model,
    model_card,
)
from heritagelens.model.checkpoint import load_model, read_checkpoint, write_model_folder


@pytest.fixture(scope="module")
def folder(trained, tmp_path_factory):
    """The tiny CLI-trained model as a model folder, calibrated first."""
    import shutil

    calibrated = tmp_path_factory.mktemp("calibrated")
    run = shutil.copytree(trained[1], calibrated / "run")  # the shared run stays as it is
    assert cli("calibrate", run / "last.pt").returncode == 0
    out = calibrated / "model"
    write_model_folder(run / "last.pt", out, made_by={"recipe": "tiny", "seed": 7}, figures={"val": {"accuracy": 0.5}})
    return out


def test_a_model_folder_predicts_exactly_as_its_checkpoint(trained, folder):
    root, run = trained[0], folder.parent / "run"
    model, classes, ckpt = load_model(run / "last.pt")
    again, again_classes, from_folder = load_model(folder)
    x = torch.rand(5, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.equal(model(x), again(x)) and classes == again_classes
    assert from_folder["calibration"] == ckpt["calibration"]  # calibrated probabilities too
    image = next((root / "test").rglob("*.jpg"))
    assert cli("predict", folder, image).stdout == cli("predict", run, image).stdout.replace(str(run), str(folder))


def test_a_model_folder_card_says_how_it_was_made_and_not_where(trained, folder):
    card = model_card(folder)
    assert card["made_by"] == {"recipe": "tiny", "seed": 7} and card["classes"] == ["arch", "bell", "dome"]
    assert card["config"]["data"]["root"] == Config().data.root  # not the trainer's folders
    assert describe_model(folder) == f"{folder} (tiny recipe, seed 7, 50.0% on its group-aware validation split)"
    assert "optimizer" not in read_checkpoint(folder)  # it serves predictions: nothing to resume


@pytest.mark.parametrize(
    "spoil, needles",
    [
        (
            lambda f: f.joinpath(MODEL_WEIGHTS).write_bytes(f.joinpath(MODEL_WEIGHTS).read_bytes()[:-4] + b"\0\0\0\0"),
            ["model.safetensors: model weights not the file its card records (SHA-256 differs)"],
        ),
        (lambda f: f.joinpath(MODEL_CARD).write_text("{"), ["card.json: unreadable model card"]),
        (lambda f: f.joinpath(MODEL_CARD).write_text('{"sha256": "0"}'), ["card.json: not a HeritageLens model card"]),
        (lambda f: f.joinpath(MODEL_WEIGHTS).unlink(), ["model.safetensors: model weights unreadable"]),
    ],
)
def test_a_spoiled_model_folder_is_one_line(trained, folder, tmp_path, spoil, needles):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    spoil(copy)
    with pytest.raises(CheckpointError):
        read_checkpoint(copy)
    image = next((trained[0] / "test").rglob("*.jpg"))
    assert_one_line_error(cli("predict", copy, image), *needles)


def test_a_model_folder_is_not_calibrated_in_place(folder):
    before = (folder / MODEL_CARD).read_bytes()
    assert_one_line_error(cli("calibrate", folder), "a model folder only serves predictions")
    assert (folder / MODEL_CARD).read_bytes() == before


def test_the_bundled_model_ships_with_its_card():
    card = model_card(BUNDLED)
    assert card["made_by"]["recipe"] == "default" and card["made_by"]["seed"] == 0
    assert card["made_by"]["rebuild"].endswith("python bench/bundled.py")
    assert set(card["calibration"]) == {"plain", "tta"} and len(card["classes"]) == 10
    val = card["figures"]["val"]
    assert 0.9 < val["accuracy"] <= 1 and 0.9 < val["accuracy_one_view"] <= 1 and 0.9 < val["macro_f1"] <= 1
    assert val["ece"] < val["ece_before_calibration"] and "source" in card["figures"] and card["data_key"]
    assert (BUNDLED / MODEL_WEIGHTS).stat().st_size < 10e6  # a few MB: the package stays small
    assert card["onnx"]["sha256"] == file_sha256(BUNDLED / MODEL_ONNX) and card["onnx"]["max_logit_difference"] < 1e-4
    outside = card["figures"]["outside"]  # photos from other sources than the training's, with their interval
    assert outside["n"] == 703 and outside["interval"][0] < outside["accuracy"] < outside["interval"][1]
    assert outside["accuracy"] < val["accuracy"] and "never trained" in outside["photos"]


def test_sort_with_the_bundled_model_says_what_its_threshold_means_on_outside_photos(tmp_path):
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (300, 200), (120, 110, 100)).save(tmp_path / "photos" / "a.jpg")
    p = cli("sort", tmp_path / "photos", "--out", tmp_path / "out", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "--min-confidence at 0.50: " in p.stdout
    assert "of those right, on 703 outside photos (other sources than the training's)" in p.stdout
    p = cli("sort", tmp_path / "photos", "--out", tmp_path / "out2", "--quiet", "--target-accuracy", "0.98")
    assert p.returncode == 0 and "98." in p.stdout.split("--min-confidence at ")[1].split(" of those right")[0]


def test_the_bundled_graph_gives_the_probabilities_pytorch_gives():
    from heritagelens.model.inference import probabilities
    from heritagelens.model.onnx_runner import folder_classifier

    model, classes, ckpt = load_model(BUNDLED)
    x = torch.randint(0, 256, (16, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    graph = folder_classifier(BUNDLED)
    assert graph.classes == classes and graph.temperature == ckpt["calibration"]["plain"]["temperature"]
    want = probabilities(model, x, graph.temperature).numpy()
    assert abs(graph.probabilities(x.numpy()) - want).max() < 1e-5


def test_predict_with_the_bundled_model_never_loads_pytorch(tmp_path):
    from PIL import Image

    from heritagelens.model.checkpoint import temperature
    from heritagelens.model.inference import probabilities

    photos = [tmp_path / f"p{i}.jpg" for i in range(3)]
    for i, photo in enumerate(photos):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (90, 120, 3), np.uint8)).save(photo)
    code = "import sys\nfrom heritagelens import cli\ncli.main(sys.argv[1:])\nprint('torch' in sys.modules)"
    p = subprocess.run(
        [sys.executable, "-c", code, "predict", *map(str, photos), "--top", "10"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    *lines, loaded = p.stdout.splitlines()
    assert loaded == "False" and "the bundled model" in p.stderr
    model, classes, ckpt = load_model(BUNDLED)  # the same photos under PyTorch
    from heritagelens.data.images import decode

    x = torch.from_numpy(np.stack([decode(f) for f in photos]))
    want = probabilities(model, x, temperature(ckpt, False)).numpy()
    for line, row in zip(lines, want):
        got = dict(t.rsplit(" ", 1) for t in line.split(": ", 1)[1].split(", "))
        assert sorted(got) == sorted(classes)
        assert all(abs(float(got[c]) - row[k]) <= 0.0006 for k, c in enumerate(classes)), (line, row)


def test_a_model_folder_graph_is_checked_and_spoiled_is_one_line(trained, folder, tmp_path):
    import shutil

    from heritagelens.model.export import write_folder_graph

    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    entry = write_folder_graph(copy, trained[0])
    assert entry["max_logit_difference"] < 1e-4 and model_card(copy)["onnx"] == entry
    image = next((trained[0] / "test").rglob("*.jpg"))
    with_graph, with_weights = cli("predict", copy, image), cli("predict", folder, image)
    assert with_graph.returncode == 0 and with_graph.stdout == with_weights.stdout.replace(str(folder), str(copy))
    blob = (copy / MODEL_ONNX).read_bytes()
    (copy / MODEL_ONNX).write_bytes(blob[:-8] + bytes(8))
    assert_one_line_error(cli("predict", copy, image), "model.onnx: model graph not the file its card records")


def test_commands_given_no_checkpoint_use_the_bundled_model_and_say_so(tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (300, 200), (120, 110, 100)).save(photo)
    card = model_card(BUNDLED)
    p = cli("predict", photo, "--top", "2")
    assert p.returncode == 0, p.stderr
    assert "no checkpoint given: the bundled model" in p.stderr and "default recipe, seed 0" in p.stderr
    top = p.stdout.removeprefix(f"{photo}: ").split(", ")
    assert len(top) == 2 and all(t.rsplit(" ", 1)[0] in card["classes"] for t in top)
    p = cli("layers")
    assert p.returncode == 0 and "classes: " + ", ".join(card["classes"]) in p.stdout
    p = cli("deconv", "--image", photo, "--layer", "conv1_1", cwd=tmp_path)  # written in the current folder
    assert p.returncode == 0, p.stderr
    assert list(tmp_path.glob("deconv-*.png")) and not list(BUNDLED.glob("*.png"))
    assert sorted(p.name for p in BUNDLED.iterdir()) == [MODEL_CARD, MODEL_ONNX, MODEL_WEIGHTS]


def test_predict_still_tells_a_checkpoint_from_an_image(trained, tmp_path):
    root, run = trained
    image = next((root / "test").rglob("*.jpg"))
    assert_one_line_error(cli("predict", run / "last.pt"), "last.pt: no image given after the model")
    p = cli("predict", image, image)
    assert p.returncode == 0 and p.stdout.count(f"{image}: ") == 2 and "bundled model" in p.stderr
    first, second = p.stdout.splitlines()
    assert first == second  # both paths were images


@pytest.mark.realdata
def test_the_bundled_model_scores_on_the_real_split_what_its_card_says(ahe_root, tmp_path):
    card = model_card(BUNDLED)
    p = cli("evaluate", "--split", "val", "--out", tmp_path, env={"AHE_DATA": str(ahe_root)}, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "no checkpoint given: the bundled model" in p.stderr
    for split in ("val", "source", "outside"):  # the outside photos beside the data root: evaluated too
        got = json.loads((tmp_path / f"eval-{split}.json").read_text())
        want = card["figures"][split]
        assert got["n"] == want["n"] and got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-4), split
        assert got["macro"]["f1"] == pytest.approx(want["macro_f1"], abs=1e-4)
    assert got["interval"] == pytest.approx(want["interval"], abs=1e-4) and want["n"] == 703
    risk = json.loads((tmp_path / "risk-coverage-outside.json").read_text())  # what sort quotes, measured again
    held = card["outside_predictions"]
    assert risk["n"] == len(held["label"]) == 703
    assert risk["rows"][2]["filed"] == sum(c >= 0.5 for c in held["confidence"])  # at the default threshold 0.5
