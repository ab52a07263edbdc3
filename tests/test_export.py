"""Export for deployment: the ONNX file under onnxruntime gives PyTorch's logits, and `predict` runs it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import assert_one_line_error, cli, need

from heritagelens.config import Config
from heritagelens.model.checkpoint import load_model, read_checkpoint
from heritagelens.model.export import OnnxClassifier, max_difference, to_onnx
from heritagelens.model.network import build_model

need("onnxruntime")


@pytest.mark.realdata
@pytest.mark.parametrize("tta", [False, True])
def test_onnx_logits_match_pytorch_on_real_images(trained, ahe_train, tta, tmp_path):
    _, run = trained
    model, classes, _ = load_model(run)
    path = tmp_path / "m.onnx"
    path.write_bytes(to_onnx(model, classes, tta=tta))
    onnx_model = OnnxClassifier(path)
    assert onnx_model.classes == classes and onnx_model.tta == tta
    images = ahe_train.images[torch.randperm(len(ahe_train.images), generator=torch.Generator().manual_seed(0))[:300]]
    diff = max_difference(model, onnx_model, images)
    assert diff < 1e-4
    logits = onnx_model.logits(images.numpy())
    assert logits.shape == (300, len(classes)) and logits.std() > 0.1  # a real, varied output, not a constant
    assert onnx_model.logits(images[:0]).shape == (0, len(classes))


def test_a_residual_network_exports_too(tmp_path):
    cfg = Config().override(["model.arch=resnet", "model.widths=[8,16]", "model.depths=[1,1]"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 4).eval()
    blob = to_onnx(model, ["a", "b", "c", "d"])
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    assert max_difference(model, OnnxClassifier(tmp_path / "inline", blob), images) < 1e-4


def test_export_and_predict_through_the_cli(trained, tmp_path):
    """Of a calibrated model: the .onnx file carries the temperature, and both predict the same probabilities."""
    root, trained_run = trained
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert cli("calibrate", run).returncode == 0
    out = tmp_path / "model.onnx"
    p = cli("export", run, "--out", out)
    assert p.returncode == 0, p.stderr
    assert f"written: {out}" in p.stdout and f"checked on 72 images of {root / 'train'}" in p.stdout
    diff = float(p.stdout.split("largest logit difference from PyTorch ")[1].split()[0])
    assert diff < 1e-4
    images = sorted((root / "test").rglob("*.jpg"))[:4]
    by_onnx = cli("predict", out, *images)
    by_torch = cli("predict", run, *images)
    assert by_onnx.returncode == by_torch.returncode == 0, by_onnx.stderr + by_torch.stderr
    for a, b in zip(by_onnx.stdout.splitlines(), by_torch.stdout.splitlines()):
        assert a.split()[:2] == b.split()[:2]  # same file, same top class
        pa, pb = float(a.split()[2].rstrip(",")), float(b.split()[2].rstrip(","))
        assert abs(pa - pb) < 0.002  # both in float32, printed to three decimals
    assert len(by_onnx.stdout.splitlines()) == 4
    t = read_checkpoint(run)["calibration"]["plain"]["temperature"]
    assert OnnxClassifier(out).temperature == pytest.approx(t)


def test_export_refuses_a_graph_that_disagrees_and_writes_nothing(trained, tmp_path):
    _, run = trained
    out = tmp_path / "model.onnx"
    p = cli("export", run, "--out", out, "--tolerance", "-1")
    assert_one_line_error(p, "onnxruntime's logits differ from PyTorch's")
    assert not out.exists() and not list(tmp_path.iterdir())


def foreign_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


@pytest.mark.parametrize(
    "make, needles",
    [
        (lambda p: None, ["no such file"]),
        (lambda p: p.write_bytes(b"not a graph"), ["not an ONNX model onnxruntime can load"]),
        (foreign_onnx, ["not one exported by HeritageLens"]),
    ],
)
def test_predict_with_a_bad_onnx_file_gives_one_line(trained, tmp_path, make, needles):
    root, _ = trained
    path = tmp_path / "m.onnx"
    make(path)
    image = next((root / "test").rglob("*.jpg"))
    assert_one_line_error(cli("predict", path, image), str(path), *needles)


def test_export_metadata_names_the_contract(trained, tmp_path):
    import onnx

    _, run = trained
    model, classes, _ = load_model(run)
    proto = onnx.load_from_string(to_onnx(model, classes, source="here"))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["heritagelens.classes"]) == classes and props["heritagelens.source"] == "here"
    assert "0..255" in props["heritagelens.input"]
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["logits"]


@pytest.mark.parametrize("t", [0.0, -1.3, float("nan"), float("inf"), 1e-320, 1e300])
def test_an_onnx_file_whose_temperature_calibration_could_not_have_fitted_is_refused(trained, tmp_path, t):
    root, run = trained
    model, classes, _ = load_model(run)
    path = tmp_path / "m.onnx"
    path.write_bytes(to_onnx(model, classes, temperature=t))
    image = next((root / "test").rglob("*.jpg"))
    assert_one_line_error(cli("predict", path, image), str(path), "not a fitted one (0.05 to 20): refused")
