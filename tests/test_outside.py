"""Photos from other sources than the training's: found, evaluated with an interval, reported, and what a threshold
means on them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import assert_one_line_error, class_image, cli

from heritagelens.data.dataset import find_outside, load_folder
from heritagelens.data.images import DataError
from heritagelens.jobs.report import RunReader, expectation_section
from heritagelens.model.metrics import wilson_interval


def outside_photos(folder, classes=("arch", "bell", "dome"), per_class: int = 4, seed: int = 5):
    """`folder/<class>/*.jpg` of the synthetic classes, drawn apart from any training image."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            class_image(k, rng).save(folder / c / f"web-{c}-{i}.jpg", quality=85)
    return folder


def test_the_wilson_interval_of_known_cases():
    assert wilson_interval(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)  # never below 0, unlike p +- 1.96 se
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)
    low, high = wilson_interval(654, 703)  # 93% of the outside half: about +-1.9 points
    assert 0.018 < (high - low) / 2 < 0.020 and low < 654 / 703 < high
    assert wilson_interval(0, 0) == [0.0, 1.0]


def test_outside_photos_are_found_beside_the_root_only_when_their_classes_are_the_models(tmp_path):
    classes = ["arch", "bell", "dome"]
    root = tmp_path / "ahe"
    (root / "train").mkdir(parents=True)
    assert find_outside("", root, classes) is None  # not even ../shared/data/ahe64-outside: its classes are AHE's
    outside = outside_photos(tmp_path / "ahe-outside", classes[:2])  # a class may be missing
    assert find_outside("", root, classes) == outside
    assert find_outside("none", root, classes) is None
    assert find_outside(str(tmp_path / "elsewhere"), root, classes) == tmp_path / "elsewhere"  # given: taken as is
    (outside / "portal").mkdir()  # another taxonomy: not this model's outside photos
    assert find_outside("", root, classes) != outside
    (outside / "portal").rmdir()
    split = load_folder(tmp_path / "ahe-outside", classes)
    assert split.images.shape == (8, 3, 64, 64) and split.files[0] == "ahe-outside/arch/web-arch-0.jpg"


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p, "no such directory"),
        (lambda p: (p.mkdir(), p)[1], "no class folders"),
        (lambda p: ((p / "train" / "arch").mkdir(parents=True), p)[1], "a dataset root (it holds train/)"),
    ],
)
def test_a_folder_that_is_not_one_of_class_folders_is_refused_by_name(tmp_path, make, needle):
    folder = make(tmp_path / "photos")
    with pytest.raises(DataError) as e:
        load_folder(folder, ["arch"])
    assert str(e.value).startswith(f"{folder}: {needle}")


@pytest.fixture(scope="module")
def calibrated(trained, tmp_path_factory):
    """A calibrated copy of the tiny CLI-trained run, and outside photos of its classes."""
    base = tmp_path_factory.mktemp("outside")
    run = shutil.copytree(trained[1], base / "run")
    assert cli("calibrate", run / "last.pt").returncode == 0
    return run, outside_photos(base / "photos")


def test_evaluate_on_outside_photos_says_which_photos_with_an_interval_and_what_a_threshold_files(calibrated, tmp_path):
    run, photos = calibrated
    p = cli("evaluate", run / "last.pt", "--split", "outside", "--outside", photos, "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    r = json.loads((tmp_path / "eval-outside.json").read_text())
    assert r["split"] == "outside" and r["n"] == 12 and r["held_out"] == str(photos.resolve())
    assert r["interval"] == pytest.approx(wilson_interval(round(r["accuracy"] * 12), 12))
    assert r["folder"] == str(photos.resolve().parent)  # where the mistakes' files are
    assert f"accuracy on outside [{photos.resolve()}] (12 images, TTA): {r['accuracy']:.4f}, 95% interval " in p.stdout
    assert r["calibration"]["fitted_on"] == "val"  # the temperature of validation, nothing fitted on these photos
    risk = json.loads((tmp_path / "risk-coverage-outside.json").read_text())
    assert risk["split"] == "outside" and risk["n"] == 12 and risk["rows"][0]["coverage"] == 1.0
    assert (tmp_path / "risk-coverage-outside.png").read_bytes()[:4] == b"\x89PNG"
    p = cli("evaluate", run / "last.pt", "--outside", photos, "--out", tmp_path / "all")  # beside the validations
    assert p.returncode == 0, p.stderr
    assert [f.name for f in sorted((tmp_path / "all").glob("eval-*.json"))] == [
        "eval-outside.json",
        "eval-source.json",
        "eval-val.json",
    ]
    assert p.stdout.count("95% interval") >= 3 and f"accuracy on outside [{photos.resolve()}]: " in p.stdout


def test_evaluate_outside_bad_input_is_one_line(calibrated, tmp_path):
    run, photos = calibrated
    p = cli("evaluate", run / "last.pt", "--split", "outside", "--out", tmp_path, cwd=tmp_path)
    assert_one_line_error(p, "no outside photos to evaluate on", "--outside DIR")
    p = cli("evaluate", run / "last.pt", "--split", "outside", "--outside", tmp_path / "nope", "--out", tmp_path)
    assert_one_line_error(p, str(tmp_path / "nope"), "no such directory")
    other = outside_photos(tmp_path / "other", ("arch", "portal"))
    p = cli("evaluate", run / "last.pt", "--split", "outside", "--outside", other, "--out", tmp_path)
    assert_one_line_error(p, "portal", "is not one of the model's classes")
    assert not list(tmp_path.glob("eval-*.json"))


def write_eval(run, split: str, accuracy: float, n: int = 700, **extra) -> None:
    d = {"split": split, "n": n, "accuracy": accuracy, "interval": wilson_interval(round(accuracy * n), n), **extra}
    (run / f"eval-{split}.json").write_text(json.dumps(d))


def test_the_report_says_what_to_expect_on_photos_from_elsewhere(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_eval(run, "val", 0.95)
    write_eval(run, "source", 0.94)
    bundled = {"val": {"accuracy": 0.953}, "source": {"accuracy": 0.94}, "outside": {"accuracy": 0.919, "n": 703}}
    s = expectation_section(RunReader(run), bundled)  # no outside photos: the bundled model's gap is taken over
    assert "on photos from other sources expect about 91.9%" in s.headline  # 0.94 - (0.94 - 0.919)
    assert "it overstated by 2.1 points" in s.html and "validation splits carved from train/ only" in s.html
    assert "no outside photos were evaluated" in s.html
    s = expectation_section(RunReader(run), {})  # no measured gap to go by: said so
    assert "not measured on photos from other sources" in s.headline and "not known" in s.html
    write_eval(run, "outside", 0.92, n=703, held_out="/photos/ahe64-outside")
    s = expectation_section(RunReader(run), bundled)
    assert s.headline.startswith("on 703 photos from other sources than the training's: 92.0% (95% interval ")
    assert "the group-aware validation by +3.0 points" in s.html and "/photos/ahe64-outside" in s.html


def test_sort_with_a_model_measured_on_outside_photos_says_so(calibrated, tmp_path):
    from heritagelens.model.checkpoint import write_model_folder
    from heritagelens.sort.sorter import sort_photos

    run, photos = calibrated
    held = {"confidence": [0.9, 0.8, 0.6, 0.4], "predicted": [0, 1, 0, 2], "label": [0, 1, 1, 2]}
    folder = tmp_path / "model"
    write_model_folder(run / "last.pt", folder, outside_predictions=held)
    s = sort_photos(folder, photos, tmp_path / "out", progress=False)
    assert s.expected_on.startswith("outside photos") and s.expected.n == 4 and s.expected.filed == 3
    s = sort_photos(folder, photos, tmp_path / "out2", progress=False, target_accuracy=0.9)
    assert s.min_confidence == 0.8  # picked on the outside photos, the one miss at 0.6 left out
    s = sort_photos(run / "last.pt", photos, tmp_path / "out3", progress=False)
    assert s.expected_on == "held-out validation photos"  # a run's checkpoint: its validation's
