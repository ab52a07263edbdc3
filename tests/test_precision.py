"""Precision chosen by measurement: what each kind of hardware is offered, the fastest kept and cached per machine, an
explicit setting taken as given, and every compute path running in the chosen mode. Capabilities are forced with a
fake probe, so both kinds of CPU (and GPUs) are covered whatever this machine is."""

from __future__ import annotations

import json
import tempfile

import pytest
import torch
from conftest import SETS, TINY_MODEL, cli

from heritagelens.config import Config, ConfigError, ModelConfig
from heritagelens.model import precision
from heritagelens.model.network import build_model
from heritagelens.model.precision import Precision, resolve

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """Cache files of this test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def fake_probe(speeds: dict[str, float], asked: list[str]):
    def probe(mode, device):
        asked.append(mode)
        return speeds[mode]

    return probe


def no_probe(mode, device):
    pytest.fail(f"timed {mode} although the choice was known")


def test_cpu_without_native_bfloat16_is_never_offered_bfloat16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    asked = []
    choice = resolve("auto", CPU, fake_probe({"fp32": 35.0, "fp32-cl": 78.0}, asked))
    assert asked == ["fp32", "fp32-cl"]  # bf16 would be emulated at a tenth of fp32's speed: not even timed
    assert choice.precision == Precision("cpu", None, channels_last=True) and choice.precision.name == "fp32-cl"
    assert "fp32 35 img/s, fp32-cl 78 img/s" in choice.line and "no native bfloat16" in choice.line


def test_cpu_with_native_bfloat16_keeps_the_fastest_mode(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    asked = []
    choice = resolve("auto", CPU, fake_probe({"fp32": 90.0, "fp32-cl": 120.0, "bf16-cl": 260.0}, asked))
    assert asked == ["fp32", "fp32-cl", "bf16-cl"] and choice.precision.dtype == torch.bfloat16
    assert choice.measured == {"fp32": 90.0, "fp32-cl": 120.0, "bf16-cl": 260.0}
    # a CPU whose bfloat16 is native but slower for this model: fp32 wins on the clock
    monkeypatch.setenv("XDG_CACHE_HOME", str(precision.cache_file().parent.parent.parent / "other"))
    choice = resolve("auto", CPU, fake_probe({"fp32": 90.0, "fp32-cl": 120.0, "bf16-cl": 100.0}, []))
    assert choice.precision.name == "fp32-cl"


@pytest.mark.parametrize("major, half", [(8, "bf16-cl"), (9, "bf16-cl"), (7, "fp16-cl")])
def test_gpu_is_offered_bfloat16_or_float16_by_compute_capability(monkeypatch, major, half):
    props = type("Props", (), {"major": major})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: f"Fake GPU sm{major}0")
    asked = []
    choice = resolve("auto", torch.device("cuda:0"), fake_probe({"fp32": 1e3, "fp32-cl": 2e3, half: 5e3}, asked))
    assert asked == ["fp32", "fp32-cl", half] and choice.precision.name == half
    assert choice.precision.device_type == "cuda" and choice.device == f"Fake GPU sm{major}0"
    assert choice.precision.dtype == (torch.bfloat16 if major >= 8 else torch.float16)


def test_choice_is_cached_per_machine_and_torch_version(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    first = resolve("auto", CPU, fake_probe({"fp32": 35.0, "fp32-cl": 78.0}, []))
    # a later call, in this process or a new one: the file answers, nothing is timed
    again = resolve("auto", CPU, no_probe)
    assert again.precision == first.precision and "cached" in again.reason and again.measured == first.measured
    stored = json.loads(precision.cache_file().read_text())
    assert list(stored) == [precision.cache_key(CPU)] and precision.device_name(CPU) in next(iter(stored))
    monkeypatch.setattr(torch, "__version__", "9.9.9")  # another torch: measured again, kept beside the first
    asked = []
    assert resolve("auto", CPU, fake_probe({"fp32": 80.0, "fp32-cl": 50.0}, asked)).precision.name == "fp32"
    assert asked and len(json.loads(precision.cache_file().read_text())) == 2


def test_an_unreadable_cache_is_measured_again(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    precision.cache_file().parent.mkdir(parents=True)
    precision.cache_file().write_text(json.dumps({precision.cache_key(CPU): {"mode": "fp64"}}))
    asked = []
    assert resolve("auto", CPU, fake_probe({"fp32": 35.0, "fp32-cl": 78.0}, asked)).precision.name == "fp32-cl"
    assert asked == ["fp32", "fp32-cl"]


def test_an_unwritable_cache_keeps_the_choice_in_the_spare_file(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    (tmp_path / "home-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-file"))  # a file: no cache folder can be made in it
    asked = []
    assert resolve("auto", CPU, fake_probe({"fp32": 35.0, "fp32-cl": 78.0}, asked)).precision.name == "fp32-cl"
    assert asked == ["fp32", "fp32-cl"] and precision.spare_file().parent == tmp_path / "tmp"
    assert resolve("auto", CPU, no_probe).precision.name == "fp32-cl"  # measured once, not at every prediction


def test_an_explicit_setting_is_taken_as_given(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    choice = resolve("bf16", CPU, no_probe)
    assert choice.precision == Precision("cpu", torch.bfloat16, False) and "set by train.precision" in choice.reason
    assert "emulates" in choice.reason  # the user is told what it will cost
    assert resolve("fp32-cl", CPU, no_probe).precision.memory_format == torch.channels_last
    assert not precision.cache_file().exists()


def test_settings_are_checked_and_old_configs_upgraded():
    with pytest.raises(ConfigError, match="train.precision must be one of auto, fp32"):
        Config().override(["train.precision=fp64"])
    with pytest.raises(ConfigError, match="replaced by train.precision"):
        Config().override(["train.bf16=false"])
    old = Config().to_dict()
    old["train"] |= {"bf16": False, "channels_last": True}
    old["dream"]["bf16"] = True
    del old["train"]["precision"]
    assert Config.from_dict(old).train.precision == "fp32-cl"
    old["train"] |= {"bf16": True, "fp16": False}
    assert Config.from_dict(old).train.precision == "auto"  # the old default: now chosen by measurement


def test_the_probe_times_real_training_steps_even_when_called_while_inferring():
    assert 0 < precision.time_steps("fp32", CPU, batch=4, steps=1) < 1e6
    with torch.no_grad():  # predict's first call on a machine resolves 'auto' from inside its no_grad
        assert precision.time_steps("fp32-cl", CPU, batch=4, steps=1) > 0
    with torch.inference_mode():
        assert precision.time_steps("fp32", CPU, batch=4, steps=1) > 0


class Spy:
    """Records, at the model's first layer, whether autocast was on (and in which dtype) and the input's layout."""

    def __init__(self, model):
        self.seen = set()
        model.features[0].register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        self.seen.add((dtype, args[0].is_contiguous(memory_format=torch.channels_last)))


def test_every_compute_path_runs_in_the_chosen_mode(monkeypatch, tiny_data):
    """With a CPU forced to have native bfloat16 and bf16-cl measured fastest, the top-9 scan, class images and
    training run under bfloat16 autocast on channels-last inputs; predictions take the layout and stay in float32
    (the same probabilities on every machine), unless a mode is named."""
    from heritagelens.data.split import prepare
    from heritagelens.dream import class_logit, pixel_image, render
    from heritagelens.explain.deconvnet import top_activations_of
    from heritagelens.model.inference import predict_logits
    from heritagelens.train.loop import fit
    from heritagelens.train.runs import initial_state

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    resolve("auto", CPU, fake_probe({"fp32": 1.0, "fp32-cl": 2.0, "bf16-cl": 3.0}, []))
    chosen = {(torch.bfloat16, True)}
    torch.manual_seed(0)
    model = build_model(ModelConfig(widths=(8, 16), depths=(1, 1)), 3)
    x = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    grey = pixel_image([0], 64, torch.full((3,), 127.5), torch.full((3,), 64.0))
    paths = {
        "predict (TTA)": (lambda: predict_logits(model, x, tta=True), {(None, True)}),
        "predict in a named mode": (lambda: predict_logits(model, x, precision="bf16-cl"), chosen),
        "top-9 scan": (lambda: top_activations_of(model, x, ["conv2_1"], k=2), chosen),
        "class images": (lambda: render(model, class_logit(0), grey, steps=2), chosen),
    }
    for name, (run, seen) in paths.items():
        spy = Spy(model)
        run()
        assert spy.seen == seen, name
        model.features[0]._forward_pre_hooks.clear()
    cfg = Config().override([*TINY_MODEL, "train.epochs=1", "train.batch_size=16", "data.val_folds=4"])
    cfg.data.root = str(tiny_data)
    prep = prepare(cfg)
    state = initial_state(cfg, prep)
    spy = Spy(state.model)
    s = prep.split
    fit(cfg, state, s.images[prep.train_idx], s.labels[prep.train_idx], s.images[:2], s.labels[:2], progress=False)
    assert spy.seen == chosen, "training and its validation pass"


def test_train_prints_and_records_the_choice(tiny_data, tmp_path, monkeypatch):
    """The command resolves 'auto' from the cache (seeded here as a probe on this machine would leave it), prints
    one line saying what and why, and records it in the run folder."""
    cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    choice = precision.Choice(Precision.named("fp32-cl"), "fastest of fp32 1 img/s, fp32-cl 2 img/s", {"fp32": 1.0})
    precision._store(precision.cache_key(CPU), choice)
    sets = [*SETS, "--set", "train.precision=auto"]  # the last setting of a key wins
    p = cli(
        "train",
        "--data",
        tiny_data,
        "--epochs",
        "1",
        "--out",
        tmp_path / "run",
        "--quiet",
        *sets,
        env={"XDG_CACHE_HOME": str(cache)},
    )
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("heritagelens: precision"))
    assert "precision fp32-cl on " in line and "fastest of fp32 1 img/s" in line and "cached" in line
    recorded = json.loads((tmp_path / "run" / "precision.json").read_text())
    assert recorded["mode"] == "fp32-cl" and recorded["measured"] == {"fp32": 1.0}
    assert "precision fp32-cl" in (tmp_path / "run" / "train.log").read_text()


def test_a_model_trained_in_bfloat16_predicts_in_float32(monkeypatch, trained, photos, tmp_path):
    """The training's mode, recorded in the checkpoint, is not the predictions': evaluate, calibrate and sort run in
    float32 (in the machine's layout) whatever the model was trained in, so their numbers do not depend on the CPU."""
    import shutil

    from heritagelens.files import atomic_save
    from heritagelens.jobs.evaluation import calibrate_checkpoint, evaluate_checkpoint
    from heritagelens.sort.sorter import sort_photos

    root, run = trained
    ckpt_file = tmp_path / "bf16.pt"
    shutil.copyfile(run / "last.pt", ckpt_file)
    ckpt = torch.load(ckpt_file, weights_only=True)
    ckpt["config"]["train"]["precision"] = "bf16-cl"
    atomic_save(ckpt, ckpt_file)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    resolve("auto", CPU, fake_probe({"fp32": 1.0, "fp32-cl": 2.0, "bf16-cl": 3.0}, []))
    seen = []
    autocast = Precision.autocast
    monkeypatch.setattr(Precision, "autocast", lambda self: seen.append(self.dtype) or autocast(self))
    evaluate_checkpoint(ckpt_file, "val", root)
    calibrate_checkpoint(ckpt_file, root)
    sort_photos(ckpt_file, photos[0], tmp_path / "sorted", progress=False)
    assert seen and set(seen) == {None}
