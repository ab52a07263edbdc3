"""`heritagelens learn`: a person's decisions on a sort fine-tune its model into a new model folder, measured on a
held-out share of them, and the unsure photos are sorted again with it; nothing of the sort is lost."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import cli, make_dataset, need, tiny_config

from heritagelens.jobs.learn import LearnError, learn, learned_folder
from heritagelens.model.card import BUNDLED
from heritagelens.model.checkpoint import read_checkpoint
from heritagelens.sort.journal import META, UNCERTAIN, SortError
from heritagelens.sort.review import decide, sorted_rows
from heritagelens.sort.sorter import sort_photos
from heritagelens.train.runs import train_run

CLASSES = ["arch", "bell", "dome"]
QUICK = ["train.precision=fp32", "train.min_steps=40", "train.batch_size=16"]


@pytest.fixture
def reviewed(tmp_path):
    """A weak tiny model, a sort of 60 photos by it at a high threshold, and 30 unsure ones filed by a person by
    their true class (the photos' folders)."""
    data = make_dataset(tmp_path / "data")
    train_run(tiny_config(data, "train.epochs=1"), tmp_path / "run", progress=False)
    shutil.copytree(make_dataset(tmp_path / "ph", per_class=20, seed=5) / "train", tmp_path / "photos")
    sort_photos(tmp_path / "run", tmp_path / "photos", tmp_path / "out", min_confidence=0.9, progress=False)
    unsure = [r for r in sorted_rows(tmp_path / "out", CLASSES).values() if r["copied_to"].startswith(UNCERTAIN)]
    assert len(unsure) >= 30
    for r in unsure[:30]:
        decide(tmp_path / "out", r["file"], r["file"].split("/")[0], CLASSES)
    return tmp_path


def copies(out) -> list:
    return sorted(p.name for p in out.rglob("*.jpg"))


def test_learning_from_a_review_writes_a_new_model_and_sorts_the_unsure_photos_again(reviewed):
    out, old = reviewed / "out", reviewed / "run" / "last.pt"
    old_bytes, before = old.read_bytes(), sorted_rows(out, CLASSES)
    person = {f: r for f, r in before.items() if r.get("decided") == "person"}
    result = learn(out, sets=QUICK, progress=False)
    assert result.model == reviewed / "run-learned-1" and (result.model / "card.json").exists()
    assert result.decisions == 30 and result.trained_on + result.held_out == 30 and result.held_out >= 5
    assert result.right_after >= result.right_before  # the stripes are easy: the decisions teach them
    card = json.loads((result.model / "card.json").read_text())
    assert card["made_by"]["learned_from"]["decisions"] == 30 and card["made_by"]["recipe"] == "learn"
    assert read_checkpoint(result.model)["classes"] == CLASSES  # every class kept, however few photos each had
    assert old.read_bytes() == old_bytes  # the old model is left as it was
    after = sorted_rows(out, CLASSES)
    assert set(after) == set(before) and len(copies(out)) == 60  # one copy of every photo, still
    for f, r in person.items():  # a person's decisions stay where they put them
        assert after[f]["class"] == r["class"] and after[f]["copied_to"] == r["copied_to"]
    redone = [f for f, r in before.items() if r["copied_to"].startswith(UNCERTAIN) and f not in person]
    assert result.resorted.sorted == len(redone) and result.resorted.skipped == 60 - len(redone)
    settings = json.loads((out / META).read_text())
    assert settings["checkpoint"] == str(result.model.resolve())
    assert settings["earlier"][-1]["checkpoint"] == str(old.resolve())
    assert "before:" in result.text() and "after:" in result.text() and "95% interval" in result.text()


def test_learning_refuses_too_few_decisions_and_a_model_folder_that_exists(reviewed, tmp_path):
    out = reviewed / "out"
    with pytest.raises(LearnError, match="exists; give a new --model-out"):
        learn(out, reviewed / "run", sets=QUICK, progress=False)
    with pytest.raises(SortError, match="--min-confidence 1.5: must be between 0 and 1"):
        learn(out, min_confidence=1.5, sets=QUICK, progress=False)
    assert not (reviewed / "run-learned-1").exists()  # refused before any training
    fresh = tmp_path / "few"
    sort_photos(reviewed / "run", reviewed / "photos", fresh, progress=False)
    before = copies(fresh)
    with pytest.raises(LearnError, match=r"0 photo\(s\) filed by a person; learning needs at least 20"):
        learn(fresh, sets=QUICK, progress=False)
    assert copies(fresh) == before and not (reviewed / "few-learned-1").exists()


def test_the_new_model_goes_beside_the_old_or_beside_the_sort_for_the_bundled_one(tmp_path):
    (tmp_path / "run").mkdir()
    assert learned_folder(tmp_path / "run" / "last.pt", tmp_path / "out") == tmp_path / "run-learned-1"
    (tmp_path / "run-learned-1").mkdir()
    assert learned_folder(tmp_path / "run-learned-1", tmp_path / "out") == tmp_path / "run-learned-2"
    assert learned_folder(BUNDLED, tmp_path / "out") == tmp_path / "out-learned-1"


def test_the_learn_command_says_what_it_learnt_and_a_second_sort_uses_the_new_model(reviewed):
    out = reviewed / "out"
    sets = [a for s in QUICK for a in ("--set", s)]
    p = cli("learn", out, "--quiet", "--no-resort", *sets)
    assert p.returncode == 0, p.stderr
    assert f"new model: {reviewed / 'run-learned-1'}" in p.stdout and "held out, measure it" in p.stdout
    assert json.loads((out / META).read_text())["checkpoint"] == str((reviewed / "run" / "last.pt").resolve())
    q = cli("learn", out, "--set", "data.root=x")
    assert q.returncode != 0 and "learn --set takes train.* settings only" in q.stderr


def test_the_review_tab_learns_from_the_decisions_and_says_where_to_go_on(reviewed):
    need("gradio")
    from heritagelens.webapp import UNSURE, Explorer

    out = reviewed / "out"
    ex = Explorer(reviewed / "run")
    assert ex.learn("") == "**Open a sort first.**"
    assert "not a folder 'heritagelens sort' wrote" in ex.learn(str(reviewed))
    said = ex.learn(str(out), sets=QUICK)
    assert "learnt from" in said and f"serve {reviewed / 'run-learned-1'}`" in said
    assert (reviewed / "run-learned-1" / "card.json").exists()
    assert "serve that model to review it" in ex.review(str(out), UNSURE).status  # the sort is the new model's now
    assert "serve that model to review it" in ex.learn(str(out))  # and this page's model learns from it no more
