"""The jobs take a trained model as an object: its split prepared once for all of them, and any of them runnable on
a model that was never written to a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import tiny_config

from heritagelens.config import Config
from heritagelens.data import dataset
from heritagelens.data.split import prepare
from heritagelens.dream import dream_preset
from heritagelens.jobs.deconv import write_top9
from heritagelens.jobs.evaluation import calibrate_model, evaluate, evaluate_checkpoint
from heritagelens.jobs.gallery import write_dream
from heritagelens.jobs.pipeline import robust_config
from heritagelens.judging.judges import judge_data
from heritagelens.model.network import build_model, conv_layer_names
from heritagelens.model.trained import Trained
from heritagelens.train.runs import train_run


def counting(monkeypatch, module, name: str) -> list:
    """Calls of `module.name` from now on, each call's positional arguments appended."""
    calls, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def test_a_model_and_its_robust_successor_decode_and_group_the_split_once(tiny_data, tmp_path, monkeypatch):
    loads, groupings = counting(monkeypatch, dataset, "load_split"), counting(monkeypatch, dataset, "find_groups")
    cfg = tiny_config(tiny_data, "train.epochs=1")
    model = train_run(cfg, tmp_path / "run", progress=False)
    calibrate_model(model)
    val = evaluate(model, "val", out_dir=tmp_path / "run")
    write_top9(model, conv_layer_names(model.model)[-1:], tmp_path / "run")
    robust = train_run(robust_config(cfg, model.path), tmp_path / "run" / "robust", progress=False, like=model.prep)
    write_dream(robust, None, tmp_path / "run", dream_preset("naive", steps=2), samples=1, score=False)
    assert [a[1] for a in loads] == ["train"] and len(groupings) == 1
    assert robust.prep is model.prep
    # the same figures as a command that reads the checkpoint back and prepares the split itself
    again = evaluate_checkpoint(tmp_path / "run" / "last.pt", "val")
    assert again.accuracy == val.accuracy and again.calibration == val.calibration


def test_a_division_reuses_the_decoded_images_and_groups_and_divides_as_a_fresh_one(tiny_data, monkeypatch):
    cfg = tiny_config(tiny_data)
    prep = prepare(cfg)
    assert prepare(cfg.override(["train.lr=0.5"]), like=prep) is prep  # nothing the split depends on changed
    groupings = counting(monkeypatch, dataset, "find_groups")
    other = cfg.override(["data.val_fold=1"])
    divided = prepare(other, like=prep)
    judges = prepare(Config(data=judge_data(cfg.data)), like=prep)  # the judges' split: no source hold-out
    assert groupings == [] and divided.split is prep.split and judges.groups is prep.groups
    assert len(judges.source_idx) == 0 < len(prep.source_idx)
    fresh = prepare(other)
    for kept, made in [(divided.train_idx, fresh.train_idx), (divided.val_idx, fresh.val_idx)]:
        assert np.array_equal(kept, made)
    assert np.array_equal(divided.groups, fresh.groups) and not np.array_equal(divided.val_idx, prep.val_idx)


def test_every_stage_runs_on_a_model_that_was_never_written(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data)
    prep = prepare(cfg)
    torch.manual_seed(0)
    net = build_model(cfg.model, len(prep.split.classes)).eval()
    nowhere = Path(tmp_path / "never-written.pt")
    ckpt = {"classes": prep.split.classes, "config": cfg.to_dict()}
    model = Trained(net, prep.split.classes, cfg, ckpt, nowhere, prep)
    r = evaluate(model, "val")
    assert r.n == len(prep.val_idx) and r.calibration is None
    assert evaluate(model, "test").n == 18
    out = tmp_path / "out"
    (grid,) = write_top9(model, conv_layer_names(net)[-1:], out)
    made = write_dream(model, prep.split.classes[:1], out, dream_preset("naive", steps=2), samples=1, score=False)
    assert grid.exists() and made.png.exists() and made.meta["model"] == str(nowhere)
    assert not nowhere.exists()
