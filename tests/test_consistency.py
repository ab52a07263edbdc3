"""One photo, one probability: the same 20 photos of mixed sizes and formats through every path that gives a
probability (`predict` under onnxruntime, `sort` and its XMP sidecars, the web app, `deconv --image` and the Python
API) give the same calibrated numbers to 3 decimals."""

from __future__ import annotations

import csv
import io
import json
import random

import numpy as np
import pytest
import torch
from conftest import cli
from PIL import Image

import heritagelens as hl
from heritagelens.jobs.deconv import write_image_view
from heritagelens.model.card import BUNDLED
from heritagelens.sort.sorter import sort_photos
from heritagelens.sort.xmp import read_tag, sidecar_path

LAYER = "conv1_1"
TOLERANCE = 6e-4
"""Printed to 3 decimals: half a unit of the third decimal, and a little for onnxruntime against PyTorch."""


def _exif(orientation: int) -> bytes:
    e = Image.Exif()
    e[0x0112] = orientation
    return e.tobytes()


def _stored_for(orientation: int, im: Image.Image) -> Image.Image:
    """The pixels a camera stores for an upright `im` when it tags them with `orientation`."""
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    return im.transpose(undo[orientation])


def _variants(im: Image.Image) -> list[tuple[str, callable]]:
    """(file name ending, writer of `im` in that form): 20 sizes, formats and modes a photo collection holds."""

    def big(w: int, h: int) -> Image.Image:
        return im.resize((w, h), Image.Resampling.BICUBIC)

    def rgba(side: int) -> Image.Image:
        a = big(side, side).convert("RGBA")
        alpha = np.full((side, side), 255, np.uint8)
        alpha[: side // 8] = 0  # a transparent band on top, composited on white
        a.putalpha(Image.fromarray(alpha))
        return a

    def gray16(side: int) -> Image.Image:
        g = np.asarray(big(side, side).convert("L"), dtype=np.uint16) * 257
        return Image.fromarray(g)  # mode I;16

    return [
        ("768x1024.jpg", lambda f: big(768, 1024).save(f, quality=92)),
        ("1536x2048.jpg", lambda f: big(1536, 2048).save(f, quality=90)),
        ("rot6.jpg", lambda f: _stored_for(6, big(1024, 768)).save(f, quality=92, exif=_exif(6))),
        ("rot3.jpg", lambda f: _stored_for(3, big(1200, 900)).save(f, quality=92, exif=_exif(3))),
        ("rot8.jpg", lambda f: _stored_for(8, big(500, 700)).save(f, quality=92, exif=_exif(8))),
        ("progressive.jpg", lambda f: big(900, 1200).save(f, quality=88, progressive=True)),
        ("gray.jpg", lambda f: big(800, 800).convert("L").save(f, quality=90)),
        ("cmyk.jpg", lambda f: big(640, 640).convert("CMYK").save(f, quality=95)),
        ("q60.jpg", lambda f: big(2000, 1500).save(f, quality=60)),
        ("tiny.jpg", lambda f: big(40, 30).save(f, quality=95)),
        ("panorama.jpg", lambda f: big(2400, 400).save(f, quality=90)),
        ("original.jpg", lambda f: im.save(f, quality=95)),
        ("original.png", lambda f: im.save(f)),
        ("rgba.png", lambda f: rgba(512).save(f)),
        ("gray16.png", lambda f: gray16(700).save(f)),
        ("palette.gif", lambda f: big(300, 300).convert("P", palette=Image.Palette.ADAPTIVE).save(f)),
        ("photo.webp", lambda f: big(1000, 750).save(f, quality=90)),
        ("rgba.webp", lambda f: rgba(500).save(f, lossless=True)),
        ("photo.tif", lambda f: big(600, 800).save(f)),
        ("photo.bmp", lambda f: big(256, 256).save(f)),
    ]


@pytest.fixture(scope="module")
def photos(ahe_root, tmp_path_factory):
    """20 photos, each a different real AHE64 image in one of 20 forms."""
    folder = tmp_path_factory.mktemp("mixed")
    sources = sorted((ahe_root / "train").glob("*/*.jpg"))
    picked = random.Random(0).sample(sources, 20)
    for i, src in enumerate(picked):
        ending, write = _variants(Image.open(src).convert("RGB"))[i]
        with open(folder / f"{i:02d}-{ending}", "wb") as f:
            write(f)
    files = sorted(folder.iterdir())
    assert len(files) == 20
    return files


@pytest.fixture(scope="module")
def api(photos):
    """Each photo's calibrated probabilities from the Python API, as the README shows it."""
    model, classes, ckpt = hl.load_model(BUNDLED)
    t = hl.temperature(ckpt, tta=False)
    assert t is not None and t != 1.0, "the bundled model is calibrated"
    probs = {p.name: hl.probabilities(model, hl.decode(p)[None], t)[0].numpy() for p in photos}
    return probs, classes


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE


def test_the_api_takes_and_gives_tensors(photos):
    x = hl.decode(photos[0])
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 64, 64) and isinstance(x, torch.Tensor)
    model, _, _ = hl.load_model(BUNDLED)
    from_numpy = hl.probabilities(model, x[None].numpy())
    assert np.allclose(from_numpy.numpy(), hl.probabilities(model, x[None]).numpy())
    with pytest.raises(ValueError, match=r"image\[None\]"):
        hl.probabilities(model, x)


def test_predict_gives_the_api_s_probabilities(photos, api):
    probs, classes = api
    p = cli("predict", str(BUNDLED), *map(str, photos), "--top", str(len(classes)))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == len(photos)
    for photo, line in zip(photos, lines):
        path, _, rest = line.rpartition(": ")
        assert path == str(photo)
        printed = {name: float(v) for name, v in (item.rsplit(" ", 1) for item in rest.split(", "))}
        for k, name in enumerate(classes):
            assert _close(printed[name], probs[photo.name][k]), (photo.name, name, printed[name], probs[photo.name][k])


def test_sort_and_its_sidecars_give_the_api_s_probabilities(photos, api, tmp_path):
    probs, classes = api
    sort_photos(BUNDLED, photos[0].parent, tmp_path / "sorted", xmp=True, progress=False)
    with open(tmp_path / "sorted" / "sort.csv", newline="") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == [p.name for p in photos] and not any(r["error"] for r in rows.values())
    for photo in photos:
        want, row = probs[photo.name], rows[photo.name]
        assert row["class"] == classes[int(want.argmax())], photo.name
        assert _close(float(row["probability"]), float(want.max())), (photo.name, row["probability"], want.max())
        for item in row["top3"].split("; "):
            name, v = item.rsplit(" ", 1)
            assert _close(float(v), want[classes.index(name)]), (photo.name, item)
        tag = read_tag(sidecar_path(photo).read_bytes())
        assert tag.top == row["class"] and _close(tag.probability, float(want.max())), (photo.name, tag)


def test_the_web_app_gives_the_api_s_probabilities(photos, api, tmp_path):
    from heritagelens.webapp import Explorer

    probs, classes = api
    app = Explorer(BUNDLED, tmp_path / "no-data")
    assert app.classify(str(photos[0])).top5 == app.top5(app.image(str(photos[0]), None)[0])  # what the page shows
    for photo in photos:
        shown = app.top5(app.image(str(photo), None)[0])
        assert len(shown) == 5, photo.name
        for name, v in shown.items():
            assert _close(v, probs[photo.name][classes.index(name)]), (photo.name, name, v)


def test_deconv_image_quotes_the_api_s_probability(photos, api, tmp_path):
    """On the photos whose decoding differs most from a plain resize (seconds each: occlusion is the cost)."""
    probs, classes = api
    for photo in [p for p in photos if any(k in p.name for k in ("2048", "rot6", "gray16", "rgba.png", "gif"))]:
        out = tmp_path / photo.stem
        out.mkdir()
        written = write_image_view(BUNDLED, photo, out, layers=[LAYER])
        index = json.loads(written[1].with_suffix(".json").read_text())
        want = probs[photo.name]
        assert index["target"] == classes[int(want.argmax())] and index["calibrated"] is True, photo.name
        assert _close(index["probability"], float(want.max())), (photo.name, index["probability"], want.max())


def test_an_uncalibrated_probability_says_so(photos, tmp_path):
    from heritagelens.explain.views import comparison

    model, classes, _ = hl.load_model(BUNDLED)
    x = hl.decode(photos[0])
    _, index = comparison(model, x, classes, LAYER)
    assert index["calibrated"] is False


def test_predict_takes_a_folder_options_anywhere_and_writes_csv_and_json(photos, api, tmp_path):
    probs, classes = api
    (tmp_path / "notes.txt").write_text("not an image")  # a folder's other files are left out
    p = cli("predict", photos[0].parent, "--top", "2", "--csv")  # no model named: the bundled one
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert [r["file"] for r in rows] == [str(f) for f in photos]  # every image under the folder, sorted
    for photo, r in zip(photos, rows):
        assert r["class"] == classes[int(probs[photo.name].argmax())] and r["error"] == ""
        assert _close(float(r["probability"]), float(probs[photo.name].max())) and r["top"].count("; ") == 1
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    p = cli("predict", BUNDLED, photos[0], "--json", bad, "--top", "1", photos[1])
    assert p.returncode != 0  # one image could not be read
    got = json.loads(p.stdout)
    assert [g["file"] for g in got] == [str(photos[0]), str(bad), str(photos[1])]
    assert "error" in got[1] and str(bad) not in got[1]["error"]
    assert got[0]["class"] == rows[0]["class"] and f"{got[0]['probability']:.4f}" == rows[0]["probability"]
    assert len(got[2]["top"]) == 1 and got[2]["top"][0]["class"] == rows[1]["class"]
