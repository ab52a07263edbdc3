"""Model folders (safetensors and a card) and the model bundled with the package, used when no checkpoint is given."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error, cli

from heritagelens.checkpoint import (
    BUNDLED,
    MODEL_CARD,
    MODEL_WEIGHTS,
    CheckpointError,
    describe_model,
    load_model,
    model_card,
    read_checkpoint,
    write_model_folder,
)
from heritagelens.config import Config


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
        (lambda f: f.joinpath(MODEL_WEIGHTS).write_bytes(f.joinpath(MODEL_WEIGHTS).read_bytes()[:-4] + b"\0\0\0\0"),
         ["model.safetensors: model weights not the file its card records (SHA-256 differs)"]),
        (lambda f: f.joinpath(MODEL_CARD).write_text("{"), ["card.json: unreadable model card"]),
        (lambda f: f.joinpath(MODEL_CARD).write_text('{"sha256": "0"}'), ["card.json: not a HeritageLens model card"]),
        (lambda f: f.joinpath(MODEL_WEIGHTS).unlink(), ["model.safetensors: model weights unreadable"]),
    ],
)  # fmt: skip
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
    assert sorted(p.name for p in BUNDLED.iterdir()) == [MODEL_CARD, MODEL_WEIGHTS]


def test_predict_still_tells_a_checkpoint_from_an_image(trained, tmp_path):
    root, run = trained
    image = next((root / "test").rglob("*.jpg"))
    assert_one_line_error(cli("predict", run / "last.pt"), "last.pt: no image given after the checkpoint")
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
    for split in ("val", "source"):
        got = json.loads((tmp_path / f"eval-{split}.json").read_text())
        want = card["figures"][split]
        assert got["n"] == want["n"] and got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-4), split
        assert got["macro"]["f1"] == pytest.approx(want["macro_f1"], abs=1e-4)
