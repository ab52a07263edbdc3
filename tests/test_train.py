from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from conftest import SETS, cli, metrics, tiny_config

from heritagelens.config import Config, ConfigError, TrainConfig, preset
from heritagelens.data.split import prepare
from heritagelens.jobs.evaluation import evaluate_checkpoint
from heritagelens.model import inference
from heritagelens.model.checkpoint import CheckpointError, load_model, read_checkpoint
from heritagelens.model.network import build_model
from heritagelens.train import loop
from heritagelens.train import runs as run_module
from heritagelens.train.runs import train_run


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------- augmentation
def test_translate_moves_content_within_the_pad():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    out = loop.batch_translate(x, 2, _g())
    assert out.shape == x.shape
    pos = torch.nonzero(out[:, 0] == 1.0)[:, 1:]  # (row, col) of the dot in each image
    assert len(pos) == 64 and (pos - 4).abs().max() <= 2 and len({tuple(p) for p in pos.tolist()}) > 5
    assert torch.equal(loop.batch_translate(x, 0, _g()), x)


def test_flip_mirrors_about_half():
    x = torch.arange(8.0).repeat(200, 1, 1, 1)  # (200, 1, 1, 8)
    out = loop.batch_flip(x, _g())
    flipped = (out[:, 0, 0, 0] == 7).sum().item()
    assert 60 < flipped < 140 and torch.all((out[:, 0, 0, 0] == 0) | (out[:, 0, 0, 0] == 7))


def test_alternating_flips_show_every_image_both_ways_every_two_epochs(monkeypatch):
    base = loop.alternate_flips(1000, seed=3)
    assert torch.equal(base, loop.alternate_flips(1000, seed=3)) and 400 < int(base.sum()) < 600
    idx = torch.randperm(1000)[:64]
    even, odd = (base[idx] + 4) % 2 == 1, (base[idx] + 5) % 2 == 1
    assert torch.equal(even, ~odd)
    cfg = TrainConfig(crop_pad=0, cutout=0, colour_jitter=0.0, flip_alternate=True)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = loop.augment(x, cfg, _g(), even)
    assert torch.equal(out[even], x[even].float().flip(3)) and torch.equal(out[~even], x[~even].float())
    seen = []  # in a training, each image is mirrored in exactly one of two consecutive epochs
    real = loop.augment

    def spy(x, cfg, g, flips=None):
        seen.append(dict(zip(x[:, 0, 0, 0].tolist(), flips.tolist())))  # pixel (0, 0) of image i holds i
        return real(x, cfg, g, flips)

    monkeypatch.setattr(loop, "augment", spy)
    xt, yt = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8), torch.arange(40) % 2
    xt[:, 0, 0, 0] = torch.arange(40, dtype=torch.uint8)
    cfg = Config().override(
        [
            "model.widths=[4,8]",
            "model.depths=[1,1]",
            "train.epochs=2",
            "train.batch_size=40",
            "train.flip_alternate=true",
            "train.precision=fp32",
        ]
    )
    state = loop.new_state(build_model(cfg.model, 2), cfg.train)
    loop.fit(cfg, state, xt, yt, xt[:4], yt[:4], progress=False)
    assert len(seen) == 2 and all(seen[0][i] != seen[1][i] for i in range(40))


def test_cutout_blanks_one_square_with_the_mean():
    x = torch.full((4, 3, 64, 64), 200.0)
    x[:, :, :32] = 0.0
    out = loop.batch_cutout(x, 16, _g(1))
    changed = (out != x).any(1)  # (B, H, W)
    assert 0 < changed.sum((1, 2)).max() <= 17 * 17
    for b in range(4):
        assert torch.all((out[b][:, changed[b]] - 100.0).abs() < 1e-4)  # the image mean


def test_augment_keeps_shape_and_pixel_range():
    x = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)
    out = loop.augment(x, TrainConfig(), _g())
    assert out.shape == (16, 3, 64, 64) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255


def test_schedule_rises_then_falls_to_zero():
    cfg = TrainConfig(lr=0.1, warmup_frac=0.2)
    lrs = [loop.get_lr(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.005) and lrs[19] == pytest.approx(0.1) and max(lrs) == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.1 / 80) and all(a >= b for a, b in zip(lrs[19:], lrs[20:]))


def test_tta_views_keep_shape():
    x = torch.rand(2, 3, 64, 64)
    views = inference.tta_views(x)
    assert len(views) == 4 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[1], x.flip(3))


def test_bad_train_config_is_refused():
    with pytest.raises(ConfigError):
        Config().override(["train.epochs=0"])
    with pytest.raises(ConfigError, match="bad setting"):
        Config().override(["train.nonsense=1"])


# ------------------------------------------------------------------------------------------------------ training
def test_training_learns_the_synthetic_classes(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, "train.epochs=6", "train.cutout=0")
    prep = train_run(cfg, tmp_path / "run", progress=False).prep
    rows = metrics(tmp_path / "run")
    assert len(rows) == 6
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] * 0.7
    r = evaluate_checkpoint(tmp_path / "run" / "last.pt", "val")
    assert r.accuracy >= 0.9 and r.n == len(prep.val_idx)
    assert evaluate_checkpoint(tmp_path / "run", "test").n == 18


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch, optimizer):
    cfg = tiny_config(
        tiny_data, "train.epochs=3", "train.ema_decay=0.9", "model.dropout=0.3", f"train.optimizer={optimizer}"
    )
    train_run(cfg, tmp_path / "full", progress=False)

    def interrupted_fit(cfg, state, *args, on_epoch, **kw):  # Ctrl-C right after epoch 2 was saved
        def cb(st, r):
            on_epoch(st, r)
            if r.epoch == 2:
                raise KeyboardInterrupt

        return loop.fit(cfg, state, *args, on_epoch=cb, **kw)

    monkeypatch.setattr(run_module, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "part", progress=False)
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 2
    train_run(None, tmp_path / "part", resume=True, progress=False)
    a, b = read_checkpoint(tmp_path / "full" / "last.pt"), read_checkpoint(tmp_path / "part" / "last.pt")
    assert b["epoch"] == 3
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    same = ("epoch", "lr", "train_loss", "train_acc", "val_acc")  # everything but the times
    full_rows, part_rows = metrics(tmp_path / "full"), metrics(tmp_path / "part")
    assert [[r[k] for k in same] for r in full_rows] == [[r[k] for k in same] for r in part_rows]


def test_seed_makes_runs_repeatable(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, "train.epochs=1")
    train_run(cfg, tmp_path / "a", progress=False)
    train_run(cfg, tmp_path / "b", progress=False)
    a, b = read_checkpoint(tmp_path / "a" / "last.pt"), read_checkpoint(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# --------------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_gives_identical_logits(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, "train.epochs=1")
    prep = prepare(cfg)
    tr, va = prep.train_idx, prep.val_idx
    images, labels = prep.split.images, prep.split.labels
    start = run_module.initial_state(cfg, prep)
    state = loop.fit(cfg, start, images[tr], labels[tr], images[va], labels[va], progress=False)
    run_module.save_checkpoint(tmp_path / "run" / "last.pt", state, cfg, prep.split.classes)
    model, classes, ckpt = load_model(tmp_path / "run" / "last.pt")
    x = prep.split.images[:8]
    expected = inference.predict_logits(loop.eval_model(state), x, precision="fp32")
    assert classes == ["arch", "bell", "dome"] and list(ckpt["config"]["model"]["widths"]) == [8, 16]
    assert torch.equal(inference.predict_logits(model, x, precision="fp32"), expected)
    # the file holds only plain values: it loads with weights_only=True (read_checkpoint uses nothing else)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["format"] == "heritagelens-checkpoint"


def test_checkpoint_of_another_model_is_refused(tiny_data, tmp_path):
    train_run(tiny_config(tiny_data, "train.epochs=1"), tmp_path / "run", progress=False)
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    ckpt["config"]["model"]["widths"] = [8, 32]
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt: weights do not fit the model"):
        load_model(tmp_path / "other.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign.pt: not a HeritageLens checkpoint"):
        load_model(tmp_path / "foreign.pt")


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="evil.pt: not a HeritageLens checkpoint"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_checkpoint_for_other_classes_is_refused_on_evaluation(tiny_data, tmp_path):
    train_run(tiny_config(tiny_data, "train.epochs=1"), tmp_path / "run", progress=False)
    (tiny_data / "train" / "bell").rename(tiny_data / "train" / "belfry")
    with pytest.raises(CheckpointError, match="checkpoint classes .* differ from the data's"):
        evaluate_checkpoint(tmp_path / "run" / "last.pt", "val")


def test_zoom_is_identity_at_full_area_and_magnifies_otherwise():
    x = torch.rand(3, 3, 64, 64) * 255
    assert torch.equal(loop.batch_zoom(x, 1.0, _g()), x)
    ramp = torch.arange(64.0).repeat(8, 3, 64, 1)  # value = column index
    out = loop.batch_zoom(ramp, 0.25, _g(2))
    span = out[:, 0, 32, -1] - out[:, 0, 32, 0]  # a zoomed crop covers fewer columns
    assert out.shape == ramp.shape and torch.all(span < 63) and torch.all(span > 63 * 0.25 - 2)


def test_photographer_augmentations_are_off_at_zero_and_keep_the_pixel_range():
    x = torch.rand(6, 3, 64, 64) * 255
    for f in (loop.batch_white_balance, loop.batch_sharpness, loop.batch_grayscale):
        assert torch.equal(f(x, 0.0, _g()), x)
        out = f(x, 1.0 if f is not loop.batch_white_balance else 0.5, _g())
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255 and not torch.equal(out, x)
    u8 = x.to(torch.uint8)
    assert torch.equal(loop.batch_jpeg(u8, 0, 1.0, _g()), u8)


def test_white_balance_scales_each_channel_of_each_image_by_its_own_factor():
    x = torch.full((4, 3, 8, 8), 100.0)
    out = loop.batch_white_balance(x, 0.2, _g())
    gains = out[:, :, 0, 0] / 100
    assert torch.all((gains >= 0.8) & (gains <= 1.2)) and torch.allclose(out, gains[:, :, None, None] * 100)
    assert len(set(gains.flatten().tolist())) == 12  # a cast, not a brightness change: channels differ


def test_sharpness_blurs_or_sharpens_each_image_by_one_amount():
    from heritagelens.data.images import gaussian_blur

    step = torch.full((64, 3, 16, 16), 50.0)
    step[..., 8:] = 150.0  # a vertical edge, with room above and below for an overshoot
    out = loop.batch_sharpness(step, 1.0, _g())
    amount = ((out - step) / (step - gaussian_blur(step, 1.0)))[..., 6:10].flatten(1)  # near the edge
    assert torch.allclose(amount, amount[:, :1].expand_as(amount), atol=1e-3)  # one amount per image
    assert amount.min() < -0.5 and amount.max() > 0.5 and amount.abs().max() <= 1 + 1e-3  # blurred and sharpened


def test_jpeg_recompresses_the_chosen_share_as_a_jpeg_codec_would():
    from io import BytesIO

    from PIL import Image

    x = (torch.rand(40, 3, 64, 64) * 255).to(torch.uint8)  # noise: JPEG cannot keep it
    out = loop.batch_jpeg(x, 30, 0.5, _g(1))
    changed = (out != x).flatten(1).any(1)
    assert out.dtype == torch.uint8 and out.shape == x.shape and 5 < changed.sum() < 35
    i = int(changed.nonzero()[0])  # the same as a round trip through Pillow at some quality in 30..95
    trips = []
    for q in range(30, 96):
        buf = BytesIO()
        Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=q)
        trips.append(torch.equal(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB"))).permute(2, 0, 1), out[i]))
    assert any(trips)


def test_grayscale_sets_all_channels_to_the_luma_of_the_chosen_share():
    x = torch.rand(200, 3, 4, 4) * 255
    out = loop.batch_grayscale(x, 0.25, _g())
    grey = (out[:, 0] == out[:, 1]).all(-1).all(-1) & (out[:, 1] == out[:, 2]).all(-1).all(-1)
    assert 25 < grey.sum() < 75 and torch.equal(out[~grey], x[~grey])
    luma = 0.299 * x[grey, 0] + 0.587 * x[grey, 1] + 0.114 * x[grey, 2]
    assert torch.allclose(out[grey, 0], luma, atol=1e-3)


def test_saturation_moves_each_image_towards_or_away_from_its_own_grey_by_one_factor():
    x = torch.rand(64, 3, 8, 8, generator=_g(3)) * 100 + 50  # room both ways before 0 and 255 clip
    x[:, 0] += 20  # no pixel grey already: each has a colour to move
    assert torch.equal(loop.batch_saturation(x, 0.0, _g()), x)
    out = loop.batch_saturation(x, 0.5, _g())
    grey = loop.luma(x)
    colour = (x - grey).abs() > 2
    factor = (out - grey) / (x - grey)
    per_image = factor[:, 0, 0, 0].view(-1, 1, 1, 1).expand_as(factor)
    assert torch.allclose(factor[colour], per_image[colour], atol=1e-3)  # one factor per image
    factor = per_image.flatten(1)
    assert factor.min() < 0.8 and factor.max() > 1.2 and factor.min() >= 0.5 - 1e-3 and factor.max() <= 1.5 + 1e-3
    assert torch.allclose(loop.luma(out), grey, atol=1e-3)  # the brightness of each pixel is kept


def test_bad_photographer_augmentations_are_refused():
    for bad in (
        "white_balance=1.0",
        "sharpness=1.5",
        "grayscale=-0.1",
        "jpeg_quality=99",
        "jpeg_share=2",
        "saturation=1.5",
    ):
        with pytest.raises(ConfigError, match="train"):
            Config().override([f"train.{bad}"])


def test_fgsm_examples_stay_in_the_ball_and_raise_the_loss():
    from heritagelens.config import ModelConfig
    from heritagelens.model.network import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(widths=(8, 16), depths=(1, 1)), 3).eval()
    x = torch.rand(16, 3, 32, 32) * 255
    y = torch.randint(0, 3, (16,))
    cfg = TrainConfig(adv_eps=4.0, adv_alpha=5.0)
    crit = torch.nn.CrossEntropyLoss()
    adv = loop.fgsm_example(model, crit, x, y, cfg, _g())
    assert (adv - x).abs().max() <= 4.0 + 1e-4 and adv.min() >= 0 and adv.max() <= 255
    assert crit(model(adv), y) > crit(model(x), y)


def test_robust_preset_trains_on_an_attack_at_every_step(tiny_data, tmp_path, monkeypatch):
    from heritagelens.config import PRESETS

    radii, attack = [], loop.fgsm_example

    def spy(model, criterion, x, y, cfg, *args, **kw):
        adv = attack(model, criterion, x, y, cfg, *args, **kw)
        radii.append(float((adv - x).abs().max()))
        return adv

    monkeypatch.setattr(loop, "fgsm_example", spy)
    cfg = tiny_config(tiny_data, *PRESETS["robust"], "train.epochs=1")
    prep = train_run(cfg, tmp_path / "run", progress=False).prep
    assert len(radii) == -(-len(prep.train_idx) // cfg.train.batch_size)  # one attacked batch per step
    assert all(0 < r <= 4.0 + 1e-4 for r in radii)  # within the L-inf radius of 4/255 in pixel units


def test_the_galleries_robust_model_keeps_no_colour_jitter_of_the_default_recipe():
    from heritagelens.jobs.pipeline import robust_config

    default = preset("default")
    assert default.train.saturation > 0 and default.train.colour_jitter > 0.1  # the default's colour recipe
    robust = robust_config(default, "run/last.pt").train
    assert robust.saturation == 0 and robust.colour_jitter == 0 and robust.adv_eps > 0


def test_every_named_preset_is_tested_here():
    from heritagelens.config import PRESETS

    assert set(PRESETS) == set(NAMED_PRESETS)


NAMED_PRESETS = ["default", "quick", "classic", "robust", "tuned", "best", "adapt"]


@pytest.mark.parametrize("name", NAMED_PRESETS)
def test_every_named_preset_builds_a_model_that_runs(name):
    from heritagelens.config import preset
    from heritagelens.model.network import build_model

    cfg = preset(name)
    assert build_model(cfg.model, 10)(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    if name == "tuned":  # the study's best trial: a 5x5 kernel, one conv per stage
        assert cfg.model.kernel_size == 5 and cfg.model.depths == (1, 1, 1, 1) and cfg.train.crop_pad == 1
    if name == "best":  # wider and longer than the default, held to an hour by the time budget
        default = preset("default")
        assert cfg.model.widths > default.model.widths and cfg.train.epochs > default.train.epochs
        assert cfg.train.minutes == 60 and cfg.model.arch == "plain"
    if name == "adapt":  # the head fitted, then the whole network, classes alike, taught by its source, long enough
        default = preset("default")
        assert cfg.train.head_fit and cfg.train.balanced and cfg.train.probe_epochs == 0
        assert cfg.train.source_teacher and cfg.train.kd_weight == 0.5 and not cfg.train.teachers
        assert cfg.train.epochs < default.train.epochs and cfg.train.min_steps > 0
        assert cfg.train.res_min == 64 and cfg.model == default.model


# --------------------------------------------------------------------------------------------------- time budget
@pytest.mark.parametrize("minutes, per_step", [(0.2, 0.5), (0.05, 0.5), (10.0, 0.5), (0.01, 3.0)])
def test_time_budget_trains_the_most_epochs_that_fit(tiny_data, minutes, per_step):
    cfg = tiny_config(tiny_data, "train.epochs=20", f"train.minutes={minutes}")
    prep = prepare(cfg)
    epochs, why = run_module.budget_epochs(cfg, prep, times=(per_step, per_step))
    steps = -(-len(prep.train_idx) // 16)
    per_epoch = per_step * (steps + len(prep.val_idx) / 16 / 3)  # training steps plus a third for validation
    planned = minutes * 60 * run_module.BUDGET_MARGIN
    if epochs == 20:  # the recipe's own schedule fits: a budget never lengthens it
        assert 20 * per_epoch <= planned
    elif epochs == 1 and per_epoch > planned:
        assert "does not fit" in why
    else:
        assert epochs * per_epoch <= planned < (epochs + 1) * per_epoch
    assert f"{epochs} of the recipe's 20 epochs" in why and f"{16 / per_step:.0f} training images/s" in why


def test_time_budget_is_applied_by_the_command(trained, tmp_path):
    root, _ = trained
    p = cli("train", "--data", root, "--epochs", "40", "--minutes", "0.1", "--out", tmp_path / "run", "--quiet", *SETS)
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if "time budget 0.1 min" in ln)
    epochs = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["epochs"]
    assert f": {epochs} of the recipe's 40 epochs" in line and 1 <= epochs <= 40
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == epochs + 1
    assert line.split("heritagelens: ", 1)[1] in (tmp_path / "run" / "train.log").read_text()


def test_a_negative_time_budget_is_refused():
    with pytest.raises(ConfigError, match="train.minutes"):
        Config().override(["train.minutes=-1"])


# ---------------------------------------------------------------------------------------------------- fine-tuning
def test_fine_tuning_starts_from_the_checkpoint_weights(tiny_data, tmp_path):
    train_run(tiny_config(tiny_data, "train.epochs=1"), tmp_path / "a", progress=False)
    start = read_checkpoint(tmp_path / "a" / "last.pt")["model"]
    still = ["train.lr=1e-9", "train.muon_lr=1e-9"]
    cfg = tiny_config(tiny_data, "train.epochs=1", *still, f"train.init_from={tmp_path / 'a' / 'last.pt'}")
    tuned = train_run(cfg, tmp_path / "b", progress=False).model.state_dict()
    for k, v in start.items():  # a learning rate of 1e-9 leaves the weights where they started
        if k.endswith("weight") or k.endswith("bias") or k.startswith("normalize"):
            assert torch.allclose(tuned[k].float(), v.float(), atol=1e-6), k
    fresh = train_run(tiny_config(tiny_data, "train.epochs=1", *still), tmp_path / "c", progress=False)
    assert not torch.allclose(fresh.model.state_dict()["features.conv1_1.weight"], start["features.conv1_1.weight"])


def test_fine_tuning_refuses_another_model(tiny_data, tmp_path):
    train_run(tiny_config(tiny_data, "train.epochs=1"), tmp_path / "a", progress=False)
    other = tiny_config(tiny_data, "model.widths=[8,32]", f"train.init_from={tmp_path / 'a' / 'last.pt'}")
    with pytest.raises(CheckpointError, match="another model"):
        train_run(other, tmp_path / "b", progress=False)


def test_the_distillation_loss_is_zero_at_the_teacher_and_grows_away_from_it():
    teacher = torch.randn(8, 5)
    assert loop.distillation_loss(teacher, teacher, 3.0).abs() < 1e-6
    near, far = teacher + 0.1 * torch.randn(8, 5), torch.randn(8, 5)
    assert 0 < loop.distillation_loss(near, teacher, 3.0) < loop.distillation_loss(far, teacher, 3.0)
    logits = far.clone().requires_grad_(True)
    for _ in range(1000):  # following its gradient brings the model's softmax to the teacher's
        (grad,) = torch.autograd.grad(loop.distillation_loss(logits, teacher, 2.0), logits)
        logits = (logits - 2.0 * grad).detach().requires_grad_(True)
    assert torch.allclose(torch.softmax(logits / 2, 1), torch.softmax(teacher / 2, 1), atol=1e-3)


def test_a_student_distilled_from_a_teacher_learns_to_answer_as_it_does(tiny_data, tmp_path):
    train_run(tiny_config(tiny_data, "train.epochs=3"), tmp_path / "teacher", progress=False)
    ckpt = read_checkpoint(tmp_path / "teacher" / "last.pt")
    for k in ("head.fc.weight", "head.fc.bias"):  # a teacher that names every class as the next one
        ckpt["model"][k] = ckpt["model"][k].roll(1, 0)
        if ckpt.get("ema"):
            ckpt["ema"]["module." + k] = ckpt["ema"]["module." + k].roll(1, 0)
    torch.save(ckpt, tmp_path / "rolled.pt")
    teacher, _, _ = load_model(tmp_path / "rolled.pt")
    kd = [f'train.teachers=["{tmp_path / "rolled.pt"}"]', "train.kd_weight=1.0", "train.kd_temperature=1"]
    student = train_run(tiny_config(tiny_data, "train.epochs=3", *kd), tmp_path / "student", progress=False)
    prep = student.prep
    assert json.loads((tmp_path / "student" / "config.json").read_text())["train"]["kd_weight"] == 1.0
    x, labels = prep.split.images[prep.val_idx].float(), prep.split.labels[prep.val_idx]
    with torch.no_grad():
        want = teacher(x).argmax(1)
        got = student.model(x).argmax(1)
    assert (want != labels).float().mean() > 0.9  # the teacher is wrong by design...
    assert (got == want).float().mean() > 0.9  # ...and the student, taught by it alone, answers as it does
    for bad in (["train.kd_weight=0.5"], [kd[0]], [kd[0], "train.kd_weight=1.5"]):  # one without the other
        with pytest.raises(ConfigError, match="teachers"):
            tiny_config(tiny_data, *bad)
    other = make_other_classes(tmp_path / "other")
    with pytest.raises(CheckpointError, match="a teacher must know at least two of this run's classes"):
        train_run(tiny_config(other, "train.epochs=1", *kd), tmp_path / "refused", progress=False)


def make_other_classes(root):
    from conftest import make_dataset

    return make_dataset(root, classes=("arch", "crypt", "portal"))  # one class in common with the tiny data's


# ------------------------------------------------------------------------------------------ progressive resizing
def test_progressive_resizing_grows_the_side_from_res_min_to_full_over_the_ramp():
    tc = TrainConfig(epochs=20, res_min=32, res_ramp=(0.5, 0.75))
    sides = [loop.epoch_side(e, 20, tc) for e in range(20)]
    assert sides[:10] == [32] * 10 and sides[15:] == [64] * 5  # before the ramp, and from its end
    assert sides[10:15] == [32, 40, 48, 48, 56]  # 32 + 32 x (e/20 - 0.5)/0.25, to the nearest 8 px
    off = TrainConfig(epochs=20, res_min=64)
    assert [loop.epoch_side(e, 20, off) for e in range(20)] == [64] * 20  # res_min=64 turns it off
    step = TrainConfig(epochs=4, res_min=16, res_ramp=(0.5, 0.5))  # an equal start and end: one jump
    assert [loop.epoch_side(e, 4, step) for e in range(4)] == [16, 16, 64, 64]
    short = TrainConfig(epochs=3, res_min=32, res_ramp=(0.55, 0.8))  # a ramp that would end after the last epoch
    assert [loop.epoch_side(e, 3, short) for e in range(3)] == [32, 32, 64]  # the last epoch is always at 64 px
    assert [loop.epoch_side(e, 1, short) for e in range(1)] == [64]
    low = TrainConfig(epochs=2, res_min=32, res_ramp=(1.0, 1.0))  # a ramp ending at 1: the whole schedule low
    assert [loop.epoch_side(e, 2, low) for e in range(2)] == [32, 32]


def test_resize_downscales_smoothly_and_leaves_full_size_alone():
    x = torch.rand(3, 3, 64, 64) * 255
    assert loop.batch_resize(x, 64) is x
    small = loop.batch_resize(x, 32)
    assert small.shape == (3, 3, 32, 32)
    pooled = torch.nn.functional.avg_pool2d(x, 2)  # antialiased bilinear at half size is close to a 2x2 mean
    assert (small - pooled).abs().mean() < 0.25 * (x - x.mean()).abs().mean()
    assert small.min() >= 0 and small.max() <= 255


def test_bad_progressive_resizing_is_refused():
    for bad in ("train.res_min=30", "train.res_min=72", "train.res_ramp=[0.8,0.2]", "train.res_ramp=[0.5]"):
        with pytest.raises(ConfigError):
            Config().override([bad])
    with pytest.raises(ConfigError, match="too small for 4 pooling stages"):
        Config().override(["train.res_min=8"])


def test_progressive_training_trains_at_each_epochs_side_and_learns(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_data, "train.epochs=4", "train.res_min=32", "train.res_ramp=[0.5,0.5]")
    seen = []
    forward = loop.batch_resize
    monkeypatch.setattr(loop, "batch_resize", lambda x, side: seen.append(side) or forward(x, side))
    prep = train_run(cfg, tmp_path / "run", progress=False).prep
    steps = -(-len(prep.train_idx) // 16)
    assert seen == [32] * (2 * steps) + [64] * (2 * steps)
    assert [r["side"] for r in metrics(tmp_path / "run")] == ["32", "32", "64", "64"]
    assert evaluate_checkpoint(tmp_path / "run" / "last.pt", "val").accuracy > 0.5  # evaluated at 64 px


def test_the_speed_probe_times_steps_at_the_side_it_is_asked_for(tiny_data, monkeypatch):
    cfg = tiny_config(tiny_data, "train.res_min=32")
    prep = prepare(cfg)
    sides, resize = [], loop.batch_resize
    monkeypatch.setattr(loop, "batch_resize", lambda x, side: sides.append(side) or resize(x, side))
    run_module.seconds_per_step(cfg, prep, steps=2, side=32)
    assert sides and set(sides) == {32}  # a one-epoch probe is not pulled up to full size like a last epoch


def test_time_budget_counts_low_resolution_epochs_at_their_measured_speed(tiny_data):
    cfg = tiny_config(tiny_data, "train.epochs=10", "train.res_min=32", "train.res_ramp=[0.5,0.5]")
    prep = prepare(cfg)
    steps, val = -(-len(prep.train_idx) // 16), len(prep.val_idx) / 16 / 3
    full, low = 1.0, 0.25
    # 10 epochs: 5 at 32 px, 5 at 64 px; each epoch's validation runs at 64 px
    assert run_module.schedule_seconds(cfg, prep, (full, low)) == pytest.approx(
        5 * low * steps + 5 * full * steps + 10 * full * val
    )
    budget = run_module.schedule_seconds(cfg, prep, (full, low), 6) / 60 / run_module.BUDGET_MARGIN
    cut = cfg.override([f"train.minutes={budget + 1e-6}"])
    assert run_module.budget_epochs(cut, prep, times=(full, low))[0] == 6  # 3 epochs at 32 px and 3 at 64
