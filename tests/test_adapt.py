"""Adapting a trained model to other classes: the head remapped by class name, the linear probe, the least number
of steps, and `heritagelens train --from` as a person runs it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FP32, SETS, TINY_MODEL, cli, make_dataset, metrics, tiny_config

from heritagelens.config import Config, ConfigError
from heritagelens.data.split import prepare
from heritagelens.model.checkpoint import CheckpointError, read_checkpoint, write_model_folder
from heritagelens.model.network import build_model, with_classes
from heritagelens.train.loop import Teacher, class_weights, fit_head
from heritagelens.train.runs import lengthened, teacher_for, train_run

NEW_CLASSES = ("arch", "portal", "crypt")
"""The adapted data's classes: one the source model knows ('arch'), two it does not."""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny model trained on arch, bell and dome, and a folder of photos of arch, portal and crypt."""
    tmp = tmp_path_factory.mktemp("adapt")
    old = make_dataset(tmp / "old")
    train_run(tiny_config(old, "train.epochs=2"), tmp / "old-run", progress=False)
    return tmp / "old-run" / "last.pt", make_dataset(tmp / "new", classes=NEW_CLASSES, per_class=30, seed=3)


def test_a_new_head_keeps_the_features_and_the_rows_of_the_classes_it_knows():
    cfg = Config().override(TINY_MODEL).model
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    model.normalize.mean.fill_(100.0)
    adapted, kept = with_classes(model, ["a", "b", "c"], ["c", "x", "a"])
    assert kept == ["c", "a"]
    old, new = model.state_dict(), adapted.state_dict()
    assert all(torch.equal(new[k], v) for k, v in old.items() if not k.startswith("head.fc."))
    w, b = model.head.fc.weight, model.head.fc.bias
    assert torch.equal(adapted.head.fc.weight[0], w[2]) and torch.equal(adapted.head.fc.weight[2], w[0])
    assert torch.equal(adapted.head.fc.bias[0], b[2]) and adapted.head.fc.weight.shape == (3, w.shape[1])
    assert not any(torch.allclose(adapted.head.fc.weight[1], row) for row in w)  # a new row of its own
    assert adapted(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


def test_an_adapted_run_starts_from_the_source_s_weights_and_says_what_it_came_from(source, tmp_path):
    ckpt_path, new = source
    src = read_checkpoint(ckpt_path)
    still = ["train.lr=1e-9", "train.muon_lr=1e-9", "train.epochs=1"]
    run = train_run(tiny_config(new, *still, f"train.init_from={ckpt_path}"), tmp_path / "run", progress=False)
    assert run.classes == sorted(NEW_CLASSES)
    origin = read_checkpoint(tmp_path / "run" / "last.pt")["adapted_from"]
    assert origin["classes"] == ["arch", "bell", "dome"] and origin["kept"] == ["arch"]
    assert origin["new"] == ["crypt", "portal"] and origin["model"] == str(ckpt_path)
    tuned = run.model.state_dict()
    for k, v in src["model"].items():
        if k.startswith("features.") and k.endswith("weight"):  # a learning rate of 1e-9 leaves them as they were
            assert torch.allclose(tuned[k].float(), v.float(), atol=1e-6), k
    arch = src["classes"].index("arch")
    assert torch.allclose(tuned["head.fc.weight"][run.classes.index("arch")], src["model"]["head.fc.weight"][arch])


def test_an_adapted_model_learns_the_new_classes(source, tmp_path):
    ckpt_path, new = source
    cfg = tiny_config(new, "train.epochs=6", "train.probe_epochs=2", "train.lr=0.05", f"train.init_from={ckpt_path}")
    run = train_run(cfg, tmp_path / "run", progress=False)
    assert float(metrics(tmp_path / "run")[-1]["val_acc"]) >= 0.9  # chance is 1/3; the stripes are easy to tell
    assert len(run.prep.val_idx) > 0


def test_probe_epochs_train_the_head_alone(source, tmp_path):
    ckpt_path, new = source
    start = read_checkpoint(ckpt_path)["model"]
    probe = train_run(
        tiny_config(new, "train.epochs=2", "train.probe_epochs=2", f"train.init_from={ckpt_path}"),
        tmp_path / "probe",
        progress=False,
    ).model.state_dict()
    features = [k for k in start if k.startswith("features.")]
    assert any(k.endswith("running_mean") for k in features)  # the batch norm statistics are among them
    assert all(torch.equal(probe[k], start[k]) for k in features)
    whole = train_run(
        tiny_config(new, "train.epochs=2", "train.probe_epochs=1", f"train.init_from={ckpt_path}"),
        tmp_path / "whole",
        progress=False,
    ).model.state_dict()
    assert not torch.equal(whole["features.conv1_1.weight"], start["features.conv1_1.weight"])
    assert not torch.equal(probe["head.fc.weight"], whole["head.fc.weight"])


def test_frozen_batch_norm_keeps_its_statistics_while_the_filters_train(source, tmp_path):
    ckpt_path, new = source
    start = read_checkpoint(ckpt_path)["model"]
    cfg = tiny_config(new, "train.epochs=1", "train.frozen_bn=true", f"train.init_from={ckpt_path}")
    tuned = train_run(cfg, tmp_path / "run", progress=False).model.state_dict()
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(tuned[k], start[k]) for k in stats)
    assert not torch.equal(tuned["features.conv1_1.weight"], start["features.conv1_1.weight"])
    assert not torch.equal(tuned["features.bn1_1.weight"], start["features.bn1_1.weight"])  # its scales do learn


def test_a_small_training_set_trains_for_the_recipe_s_least_number_of_steps(source):
    _, new = source
    cfg = tiny_config(new, "train.epochs=4", "train.probe_epochs=2", "train.min_steps=30")
    prep = prepare(cfg)
    longer, why = lengthened(cfg, prep)
    per_epoch = -(-len(prep.train_idx) // cfg.train.batch_size)
    assert longer.train.epochs == -(-30 // per_epoch) and longer.train.epochs * per_epoch >= 30
    assert longer.train.probe_epochs == round(2 * longer.train.epochs / 4) and "30 steps" in why
    assert lengthened(tiny_config(new, "train.epochs=40", "train.min_steps=30"), prep)[1] == ""


def test_train_from_adapts_with_the_source_s_model_and_says_each_class_s_interval(source, tmp_path):
    ckpt_path, new = source
    sets = [a for s in ["data.val_folds=4", "train.batch_size=16", "train.min_steps=40", *FP32] for a in ("--set", s)]
    p = cli("train", "--data", new, "--from", ckpt_path.parent, "--out", tmp_path / "run", "--quiet", *sets)
    assert p.returncode == 0, p.stderr
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["widths"] == [8, 16]  # the source's model, not the recipe's
    assert cfg["train"]["init_from"] == str(ckpt_path.parent.resolve()) and cfg["train"]["head_fit"]  # 'adapt'
    assert f"adapted from {ckpt_path.parent.resolve()} (3 classes): 1 class(es) kept their head rows (arch)" in p.stdout
    lines = [ln for ln in p.stdout.splitlines() if "validation photos right" in ln]
    assert len(lines) == 3 and all("95% interval" in ln and "too few photos" in ln for ln in lines)
    assert "3 class(es) with fewer than 30 validation photos" in p.stdout
    photo = next((new / "train" / "portal").iterdir())
    q = cli("predict", tmp_path / "run", photo)
    assert q.returncode == 0 and q.stdout.split(": ")[1].split()[0] in NEW_CLASSES, q.stderr


def test_train_from_refuses_what_it_cannot_adapt(source, tmp_path):
    ckpt_path, new = source
    p = cli("train", "--data", new, "--from", tmp_path / "nowhere", "--out", tmp_path / "a", *SETS)
    assert p.returncode != 0 and f"{tmp_path / 'nowhere'}: no such file" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "last.pt").write_bytes(ckpt_path.read_bytes())
    q = cli("train", "--resume", tmp_path / "b", "--from", ckpt_path, *SETS)
    assert q.returncode != 0 and "--resume or --from, not both" in q.stderr


def test_a_model_folder_of_an_adapted_model_says_what_it_came_from(source, tmp_path):
    ckpt_path, new = source
    train_run(tiny_config(new, "train.epochs=1", f"train.init_from={ckpt_path}"), tmp_path / "run", progress=False)
    write_model_folder(tmp_path / "run" / "last.pt", tmp_path / "folder")
    card = json.loads((tmp_path / "folder" / "card.json").read_text())
    assert card["adapted_from"]["new"] == ["crypt", "portal"]
    assert read_checkpoint(tmp_path / "folder")["adapted_from"] == card["adapted_from"]


def test_the_fitted_head_tells_the_classes_apart_on_features_alone(source):
    ckpt_path, new = source
    prep = prepare(tiny_config(new))
    src = read_checkpoint(ckpt_path)
    model, _ = with_classes(
        build_model(Config.from_dict(src["config"]).model, 3), ["arch", "bell", "dome"], list(NEW_CLASSES)
    )
    model.load_state_dict({k: v for k, v in src["model"].items() if not k.startswith("head.fc.")}, strict=False)
    x, y = prep.split.images[prep.train_idx], prep.split.labels[prep.train_idx]
    assert fit_head(model, x, y) == [0, 1, 2]
    with torch.no_grad():
        right = (model.eval()(x.float()).argmax(1) == y).float().mean()
    assert right >= 0.9  # a linear probe of the stripes' features, on the photos it was fitted to
    two = y < 2  # two classes: one logistic row, made into two softmax rows; the third row kept
    third = model.head.fc.weight[2].clone()
    assert fit_head(model, x[two], y[two]) == [0, 1] and torch.equal(model.head.fc.weight[2], third)
    with torch.no_grad():
        assert (model(x[two].float())[:, :2].argmax(1) == y[two]).float().mean() >= 0.9


def test_a_teacher_of_some_of_the_classes_teaches_those_alone():
    teacher = Teacher([lambda x: x * 3.0], rows=[[1, 0]], columns=[2, 0])  # its classes 1, 0 are the student's 2, 0
    x = torch.randn(8, 3)
    agree = torch.stack([x[:, 0] * 3.0 + 5.0, torch.randn(8), x[:, 1] * 3.0 + 5.0], 1)  # a constant apart on both
    assert teacher.loss(agree, x, 2.0) < 1e-5  # whatever the student says of class 1, which it alone knows
    logits = torch.randn(8, 3, requires_grad=True)
    loss = teacher.loss(logits, x, 2.0)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss > 0.01 and torch.all(grad[:, 1] == 0) and grad[:, [0, 2]].abs().sum() > 0


def test_the_source_model_teaches_the_classes_it_knows_while_adapting(source, tmp_path):
    ckpt_path, new = source
    lwf = [f"train.init_from={ckpt_path}", "train.source_teacher=true", "train.kd_weight=0.5"]
    mixed = make_dataset(tmp_path / "mixed", classes=("arch", "dome", "portal"))
    cfg = tiny_config(mixed, "train.epochs=1", *lwf)
    teacher = teacher_for(cfg, ["arch", "dome", "portal"])
    assert teacher.columns == [0, 1] and teacher.rows == [[0, 2]]  # of its 'arch, bell, dome'
    run = train_run(cfg, tmp_path / "run", progress=False)
    assert read_checkpoint(tmp_path / "run" / "last.pt")["config"]["train"]["source_teacher"]
    assert "taught by 1 model(s) on arch, dome" in (tmp_path / "run" / "train.log").read_text()
    assert run.classes == ["arch", "dome", "portal"]
    assert teacher_for(tiny_config(new, *lwf), sorted(NEW_CLASSES)) is None  # it shares one class: nothing to teach
    with pytest.raises(ConfigError, match="source_teacher"):
        tiny_config(new, "train.source_teacher=true")  # a teacher without its share of the loss
    alone = tiny_config(new, "train.source_teacher=true", "train.kd_weight=0.5")
    with pytest.raises(ConfigError, match="needs train.init_from"):
        teacher_for(alone, sorted(NEW_CLASSES))
    with pytest.raises(ConfigError, match="needs train.init_from"):
        train_run(alone, tmp_path / "alone", progress=False)
    assert not (tmp_path / "alone").exists()  # refused before the run folder is made
    named = [f'train.teachers=["{ckpt_path}"]', "train.kd_weight=0.5"]
    with pytest.raises(CheckpointError, match="a teacher must know at least two of this run's classes"):
        train_run(tiny_config(new, "train.epochs=1", *named), tmp_path / "refused", progress=False)


def test_class_weights_make_every_class_with_photos_count_alike():
    labels = torch.tensor([0] * 90 + [1] * 10)
    w = class_weights(labels, 3)
    assert torch.allclose(w[:2] * torch.tensor([90.0, 10.0]), torch.tensor([50.0, 50.0])) and w[2] == 1.0


@pytest.mark.realdata
def test_a_model_adapted_from_the_bundled_one_to_two_new_classes_serves_every_command(ahe_root, tmp_path):
    """The issue's first day: 30 photos of each of two classes the bundled model does not know, adapted in one
    command; then predict, sort with sidecars, the deconvnet, a class image and the web app take the new model."""
    import shutil
    import urllib.request

    from conftest import serving

    mine = tmp_path / "mine"
    for name, photos in (("tower", "bell_tower"), ("window", "stained_glass")):
        (mine / "train" / name).mkdir(parents=True)
        for f in sorted((ahe_root / "train" / photos).glob("*.jpg"))[:30]:
            shutil.copy(f, mine / "train" / name / f.name)
    run = tmp_path / "run"
    quick = ("--set", "train.epochs=4", "--set", "train.min_steps=0", "--set", "train.threads=2")  # the head fitted
    p = cli("train", "--data", mine, "--from", "bundled", "--out", run, "--quiet", *quick, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "adapted from HeritageLens bundled model (10 classes): 2 new (tower, window)" in p.stdout
    assert read_checkpoint(run)["classes"] == ["tower", "window"]
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted((ahe_root / "train" / "stained_glass").glob("*.jpg"))[30:36]:
        shutil.copy(f, photos / f.name)
    q = cli("predict", run, photos)
    assert q.returncode == 0 and q.stdout.count("window") >= 5, q.stdout + q.stderr  # 6 unseen windows
    r = cli("sort", run, photos, "--out", tmp_path / "sorted", "--xmp", "--quiet")
    assert r.returncode == 0 and len(list(photos.glob("*.xmp"))) == 6, r.stderr
    d = cli("deconv", run, "--image", next(photos.glob("*.jpg")), "--out", tmp_path / "deconv")
    assert d.returncode == 0 and list((tmp_path / "deconv").glob("deconv-*.png")), d.stderr
    dream = ("--class", "tower", "--samples", "1", "--set", "dream.steps=8", "--no-score")  # judges: test_judges
    g = cli("dream", run, *dream, "--out", tmp_path / "dream")
    assert g.returncode == 0 and (tmp_path / "dream" / "dream-default-tower.png").exists(), g.stderr
    with serving([str(run), "--data", str(mine)], tmp_path / "serve.log") as url:
        config = urllib.request.urlopen(f"{url.rstrip('/')}/config", timeout=60).read().decode()
    assert "tower" in config and "window" in config
