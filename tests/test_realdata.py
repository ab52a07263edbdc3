"""A short real training run on the AHE64 train split, through the main job as a user runs it."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import cli
from PIL import Image

pytestmark = pytest.mark.realdata


def test_main_job_learns_real_classes_well_above_chance(ahe_root, tmp_path):
    p = cli(
        "run",
        "--out",
        tmp_path / "run",
        "--quiet",
        "--epochs",
        "5",
        "--set",
        "model.widths=[16,32,64,128]",
        "--set",
        "train.limit_train=2000",
        *("--set", "gallery.robust_from=standard", "--set", "gallery.robust_epochs=1"),
        *("--set", "gallery.samples=1", "--set", "gallery.floor_samples=1", "--set", "dream.steps=16"),
        *("--set", f"gallery.judges_dir={tmp_path / 'judges'}"),
        *("--set", "train.threads=2"),  # both cores, though `make test` gives each worker one: the longest test
        env={"AHE_DATA": str(ahe_root)},
        timeout=900,  # a guard against a hang, not a speed check: about 2.5 minutes on a 2-core CPU
    )
    assert p.returncode == 0, p.stderr
    assert "== val (group-aware validation from train/)" in p.stdout
    result = json.loads((tmp_path / "run" / "eval-val.json").read_text())
    assert result["split"] == "val" and result["n"] == 500 and len(result["classes"]) == 10
    assert result["accuracy"] > 0.5  # chance is 0.1, the largest class 0.19; measured here: 0.77
    source = json.loads((tmp_path / "run" / "eval-source.json").read_text())  # the newest Flickr uploads, held out
    assert "== source (source-held-out validation" in p.stdout and source["n"] == 500 and source["accuracy"] > 0.4
    assert "accuracy on source [each class's newest 10% of Flickr uploads]" in p.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["figures"] == ["deconv-top9-conv4_1.png", "deconv-top9-conv4_2.png"]
    assert all((tmp_path / "run" / f).read_bytes()[:4] == b"\x89PNG" for f in summary["figures"])
    gallery = summary["gallery"]
    # one epoch of adversarial fine-tuning of the standard model keeps most of its accuracy (measured: 0.59 of 0.77)
    assert gallery["model"] == "robust" and gallery["robust_val_accuracy"] > 0.4
    robust_cfg = json.loads((tmp_path / "run" / "robust" / "config.json").read_text())["train"]
    assert robust_cfg["init_from"] == str(tmp_path / "run" / "last.pt") and robust_cfg["adv_eps"] == 4
    meta = json.loads((tmp_path / "run" / "dream-gallery.json").read_text())
    assert len(meta["classes"]) == 10 and len(list((tmp_path / "run" / "dream-gallery").glob("*.png"))) == 10
    ceiling = meta["scores"]["real val (ceiling)"]
    assert ceiling["judges"]["robust-cnn"]["recognised"] > 0.6 and ceiling["n"] == 10  # chance is 0.1
    # the shipped panel scored it: no judge trained, none cached
    assert "training judge" not in p.stdout + p.stderr and not (tmp_path / "judges").exists()
    assert set(gallery) >= {"gallery (this gallery)", "naive ascent (floor)", "naive, standard model"}
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["groups"] > 7000 and split["images"] == 10130
    assert split["source_held_out"] == "flickr-newest" and not set(split["source_files"]) & set(split["val_files"])
    outside = summary["splits"]["outside"]  # ../shared/data/ahe64-outside, beside the data: evaluated when present
    assert outside["n"] == 703 and outside["interval"][0] < outside["accuracy"] < outside["interval"][1]
    assert outside["holds_out"] == str((ahe_root.parent / "ahe64-outside").resolve())
    assert f"accuracy on outside [{outside['holds_out']}]: " in p.stdout and "95% interval" in p.stdout
    report = (tmp_path / "run" / "report.html").read_text()
    assert report.count('<figure class="thumb">') == 36 and "image not found" not in report  # 12 per evaluation
    assert "on 703 photos from other sources than the training&#x27;s: " in report  # the headline says it first
    assert "lacks" not in report and "accuracy on val (group-aware validation from train/)" in report
    for views in summary["calibration"].values():  # the temperature can only lower the NLL it was fitted on
        assert views["nll_after"] <= views["nll_before"] and views["ece_after"] <= views["ece_before"] + 1e-9
    assert "expected calibration error on val" in report
    chosen = summary["precision"]  # chosen by timing on this machine (bf16 only where the CPU has it natively)
    assert chosen["mode"] in chosen["measured"] and chosen["measured"][chosen["mode"]] == max(
        chosen["measured"].values()
    )
    assert f"heritagelens: precision {chosen['mode']} on " in p.stdout and f"Precision: {chosen['mode']} on " in report

    # the sorted-collection path on real photos: 60 validation images enlarged to 200-800 px, in nested folders
    photos, truth = tmp_path / "photos", {}
    for i, f in enumerate(split["val_files"][:: len(split["val_files"]) // 60][:60]):
        src = ahe_root / f  # as split.json lists them: train/<class>/<file>
        rel = f"site{i % 4}/{'roof/' if i % 3 == 0 else ''}{i:03d}.jpg"
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        side = 200 + 10 * i
        Image.open(src).convert("RGB").resize((side, side * 3 // 4), Image.Resampling.BICUBIC).save(photos / rel)
        truth[rel] = src.parent.name
    p = cli("sort", tmp_path / "run", photos, "--out", tmp_path / "sorted", "--min-confidence", "0", "--quiet")
    assert p.returncode == 0, p.stderr
    with (tmp_path / "sorted" / "sort.csv").open() as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(truth)
    right = sum(rows[f]["class"] == c for f, c in truth.items())
    assert right / len(truth) > 0.4  # chance is 0.1; the quick model gets about 0.7 on the 64 px originals


def test_the_presets_figures_in_the_package_were_measured_on_the_real_split(ahe_root):
    from heritagelens.config import Config
    from heritagelens.data.split import prepare
    from heritagelens.jobs.report import PRESET_FIGURES, split_key

    cfg = Config()
    cfg.data.root = str(ahe_root)
    figures = json.loads(PRESET_FIGURES.read_text())
    assert split_key(prepare(cfg).record()) == figures["split_key"]  # so a report's "compares directly" holds
    assert {"default", "best"} <= set(figures["presets"])


def test_shipped_panel_serves_the_real_split_without_training_a_judge(ahe_root, tmp_path):
    from heritagelens.config import DataConfig
    from heritagelens.judging import judges

    card = judges.panel_card()
    assert set(card["judges"]) == set(judges.JUDGES)  # the panel ships with the package
    data_cfg = DataConfig(root=str(ahe_root))
    for name, entry in card["judges"].items():
        assert judges.judge_key(name, data_cfg) == entry["key"], f"{name}: the real split no longer matches the card"
        assert entry["val_accuracy"] > 0.6 and entry["config"]["train"]["adv_eps"] > 0  # robust, and well trained
    said = []
    panel = judges.ensure_judges(data_cfg, judges_dir=tmp_path / "judges", train=False, log=said.append)
    assert said == [] and not (tmp_path / "judges").exists()  # nothing trained, nothing cached
    assert {n: j.path.parent for n, j in panel.items()} == {n: judges.PANEL_DIR for n in judges.JUDGES}
