"""Judges: the content key, the cache, and the scores they give (on tiny synthetic data and tiny judges)."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import TINY_MODEL, make_dataset

from heritagelens.config import Config, DataConfig
from heritagelens.judging import judges, scores
from heritagelens.model.checkpoint import CheckpointError

TINY_JUDGES = [*TINY_MODEL, "train.batch_size=16", "train.epochs=3", "train.precision=fp32"]


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("judges") / "ahe", per_class=24)
    return DataConfig(root=str(root), val_folds=4)


@pytest.fixture(scope="module")
def panel(data_cfg, tmp_path_factory):
    folder = tmp_path_factory.mktemp("panel")
    return judges.ensure_judges(data_cfg, folder, extra=TINY_JUDGES, progress=False, log=lambda s: None), folder


def test_key_follows_recipe_and_files_not_location(data_cfg, tmp_path, monkeypatch):
    key = judges.judge_key("robust-cnn", data_cfg, TINY_JUDGES)
    assert key != judges.judge_key("robust-resnet", data_cfg, TINY_JUDGES)
    assert key != judges.judge_key("robust-cnn", data_cfg, [*TINY_JUDGES, "train.epochs=4"])
    assert key != judges.judge_key("robust-cnn", DataConfig(root=data_cfg.root, val_folds=5), TINY_JUDGES)
    held = DataConfig(root=data_cfg.root, val_folds=4, source_val="wikimedia", source_share=0.2)
    assert judges.judge_key("robust-cnn", held, TINY_JUDGES) == key  # judges never hold a source out
    assert judges.judge_config("robust-cnn", held).data.source_val == "none"
    monkeypatch.setattr(judges, "PANEL_VERSION", judges.PANEL_VERSION + 1)
    assert key != judges.judge_key("robust-cnn", data_cfg, TINY_JUDGES)  # a new panel version: new judges
    monkeypatch.undo()
    moved = shutil.copytree(data_cfg.root, tmp_path / "elsewhere")
    data_moved = DataConfig(root=str(moved), val_folds=4)
    assert judges.judge_key("robust-cnn", data_moved, TINY_JUDGES) == key  # where the data sits is not part of it
    victim = next((moved / "train" / "bell").iterdir())
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert judges.judge_key("robust-cnn", data_moved, TINY_JUDGES) != key  # a changed file is


def test_panel_is_trained_once_then_read_from_the_cache(panel, data_cfg):
    p, folder = panel
    assert set(p) == {"robust-resnet", "robust-cnn"}
    assert p["robust-resnet"].model.cfg.arch == "resnet" and p["robust-cnn"].model.cfg.arch == "plain"
    messages = []
    again = judges.ensure_judges(data_cfg, folder, extra=TINY_JUDGES, train=False, log=messages.append)
    assert messages == [] and {n: j.path for n, j in again.items()} == {n: j.path for n, j in p.items()}
    with pytest.raises(judges.JudgeError, match="judge 'robust-resnet' not trained yet"):
        judges.ensure_judges(data_cfg, folder, extra=[*TINY_JUDGES, "train.epochs=4"], train=False)


def test_a_judge_that_is_not_ours_is_refused(panel, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    folder = tmp_path / "robust-x"
    folder.mkdir()
    (folder / "last.pt").write_bytes(pickle.dumps({"format": Evil()}))
    with pytest.raises(CheckpointError, match="not a HeritageLens checkpoint"):
        judges.load_judge("robust-cnn", folder)


def test_recognisability_exact_values():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    targets = torch.tensor([0, 0, 2, 1])
    r = scores.recognisability(probs, targets, ["a", "b", "c"])
    assert r["recognised"] == pytest.approx(0.5) and r["mean_prob"] == pytest.approx((0.7 + 0.4 + 0.8 + 0.3) / 4)
    assert r["per_class"]["a"] == pytest.approx({"recognised": 0.5, "mean_prob": 0.55})
    assert r["per_class"]["b"] == pytest.approx({"recognised": 0.0, "mean_prob": 0.3})


def test_ceiling_sample_and_reference_are_disjoint_and_cover_everything():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 7)
    sample, rest = scores.ceiling_split(labels, 2, seed=1)
    assert torch.bincount(labels[sample]).tolist() == [2, 2, 2]
    assert sorted(sample.tolist() + rest.tolist()) == list(range(len(labels)))
    assert torch.equal(scores.ceiling_split(labels, 2, seed=1)[0], sample)


def test_scores_separate_real_images_from_noise(panel, data_cfg):
    from heritagelens.config import Config
    from heritagelens.data.split import prepare

    p, _ = panel
    prep = prepare(Config(data=data_cfg))
    images, labels = prep.split.images[prep.val_idx], prep.split.labels[prep.val_idx]
    sample, rest = scores.ceiling_split(labels, 2)
    ref = (images[rest], labels[rest])
    classes = prep.split.classes
    real = scores.score_images(images[sample], labels[sample], p, *ref, classes)
    noise = torch.randint(0, 256, (len(sample), 3, 64, 64), generator=torch.Generator().manual_seed(0))
    fake = scores.score_images(noise.to(torch.uint8), labels[sample], p, *ref, classes)
    assert real["frechet"] < fake["frechet"] and real["spectrum"] < fake["spectrum"]
    assert set(real["per_class"]) == set(classes) and real["n"] == 2 * len(classes)
    for j in ("robust-resnet", "robust-cnn"):
        assert real["judges"][j]["mean_prob"] > fake["judges"][j]["mean_prob"]
    table = scores.score_table({"real": real, "noise": fake})
    assert "robust-cnn" in table and table.count("\n") == 3
    together = scores.gallery_scores(  # the reference's features computed once for every set: the same scores
        {"noise": (noise.to(torch.uint8), labels[sample])},
        scores.RealImages(images[sample], labels[sample], *ref),
        p,
        classes,
    )
    assert together == {"noise": fake, "real val (ceiling)": real}


def test_an_interrupted_judge_is_refused_then_resumed(data_cfg, tmp_path):
    from heritagelens.files import atomic_save, safe_load

    extra = [*TINY_JUDGES, "train.epochs=2"]
    judges.ensure_judges(data_cfg, tmp_path, extra=extra, progress=False, log=lambda s: None)
    folder = judges.judge_folder("robust-cnn", data_cfg, tmp_path, extra)
    ckpt = safe_load(folder / "last.pt")
    atomic_save({**ckpt, "epoch": 1}, folder / "last.pt")  # as if stopped after the first epoch
    with pytest.raises(judges.JudgeError, match="stopped at epoch 1 of 2"):
        judges.load_judge("robust-cnn", folder)
    messages = []
    panel = judges.ensure_judges(data_cfg, tmp_path, extra=extra, progress=False, log=messages.append)
    assert messages == [f"training judge 'robust-cnn' into {folder} (once per dataset)"]
    assert safe_load(folder / "last.pt")["epoch"] == 2 and panel["robust-cnn"].path == folder / "last.pt"


def test_a_shipped_panel_is_used_when_its_keys_match_and_never_trained(panel, data_cfg, tmp_path, monkeypatch):
    p, _ = panel
    keys = {n: judges.judge_key(n, data_cfg, TINY_JUDGES) for n in p}
    judges.write_panel(p, {n: 0.5 for n in p}, keys, tmp_path / "ship", command="bench/panel.py", machine="here")
    monkeypatch.setattr(judges, "PANEL_DIR", tmp_path / "ship")
    messages = []
    shipped = judges.ensure_judges(data_cfg, tmp_path / "empty", extra=TINY_JUDGES, train=False, log=messages.append)
    assert messages == [] and {j.path.name for j in shipped.values()} == {f"{n}.safetensors" for n in p}
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    for name, judge in shipped.items():  # the same network as the one trained: the same outputs
        assert torch.equal(scores.judge_outputs(judge.model, x)[0], scores.judge_outputs(p[name].model, x)[0])
        assert judge.classes == p[name].classes and Config.from_dict(judge.config) == Config.from_dict(p[name].config)
    card = judges.panel_card()
    assert card["command"] == "bench/panel.py" and card["judges"]["robust-cnn"]["val_accuracy"] == 0.5
    with pytest.raises(judges.JudgeError, match="not trained yet"):  # another recipe: the shipped panel is not it
        judges.ensure_judges(data_cfg, tmp_path / "empty", extra=[*TINY_JUDGES, "train.epochs=4"], train=False)
    weights = tmp_path / "ship" / "robust-cnn.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(judges.JudgeError, match=r"robust-cnn\.safetensors: .*SHA-256 differs"):
        judges.ensure_judges(data_cfg, tmp_path / "empty", extra=TINY_JUDGES, train=False)
