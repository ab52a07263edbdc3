"""The run report: every section from a complete run, what a damaged run lacks, and the page as a browser shows it."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil

import numpy as np
import pytest
from conftest import assert_one_line_error, cli
from PIL import Image

from heritagelens.jobs.report import build

SECTIONS = [
    "config",
    "data",
    "training",
    "presets",
    "expect",
    "eval-val",
    "eval-source",
    "eval-test",
    "deconvnet",
    "gallery",
    "timing",
]


def embedded_images(text: str) -> list[Image.Image]:
    """Every <img> of the page decoded from its data: URI (a page that fetches nothing)."""
    srcs = re.findall(r'<img src="([^"]*)"', text)
    assert all(s.startswith("data:image/png;base64,") for s in srcs), "an image is not embedded"
    images = []
    for s in srcs:
        im = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        im.load()
        images.append(im)
    return images


def test_the_main_job_ends_with_a_complete_report(main_run):
    _, run = main_run
    text = (run / "report.html").read_text()
    for s in SECTIONS:
        assert f'<section id="{s}">' in text, s
    assert "lacks" not in text and "missing:" not in text  # the main job writes every piece
    assert "accuracy on val (group-aware validation from train/)" in text
    assert "accuracy on test (official test split)" in text
    assert "naive ascent (floor)" in text and "real val (ceiling)" in text and "robust-resnet judge" in text
    for stage in ("train", "calibrate", "evaluate", "deconvnet figures", "robust model", "class images"):
        assert f"<td>{stage}</td>" in text
    assert "expected calibration error on val" in text and "expected calibration error on test" in text
    assert "Filing the sure photos (risk-coverage)" in text and "sort --target-accuracy" in text
    images = embedded_images(text)
    assert len(images) >= 1 + 2 + 2 + 2 + 1  # curves, 2 confusion matrices, 2 reliability diagrams, 2 grids, gallery
    assert "http://" not in text and "https://" not in text  # nothing fetched when viewed
    summary = text[text.index('<div class="summary"') :]
    assert summary.startswith('<div class="summary" id="summary"><p class="plain">This model names the element right')
    assert " in 100 photos like the training" in summary.split("</p>")[0]


def test_a_run_is_set_beside_the_presets_and_told_whether_it_compares(main_run, tmp_path):
    from heritagelens.jobs.report import PRESET_FIGURES, RunReader, presets_section, split_key

    _, run = main_run
    figures = json.loads(PRESET_FIGURES.read_text())
    s = presets_section(RunReader(run))
    val, source = (json.loads((run / f"eval-{k}.json").read_text())["accuracy"] for k in ("val", "source"))
    assert f"<td>this run</td><td>{val:.2%}</td><td>{source:.2%}</td><td>not measured</td>" in s.html
    assert all(f"<td>{name} ({len(p['val'])} seeds)</td>" in s.html for name, p in figures["presets"].items())
    outside = figures["presets"]["default"]["outside"]  # the recorded seeds on the outside photos, where measured
    assert len(outside) == 3 and f"<td>{np.mean(outside):.2%} ± {np.std(outside, ddof=1):.2%}</td>" in s.html
    assert "does not compare directly" in s.html  # a synthetic split, not the one the presets were measured on
    same = tmp_path / "presets.json"
    same.write_text(json.dumps({**figures, "split_key": split_key(json.loads((run / "split.json").read_text()))}))
    assert "its row compares directly" in presets_section(RunReader(run), same).html


def test_report_of_a_damaged_run_lists_what_is_missing_and_shows_the_rest(main_run, tmp_path):
    _, run = main_run
    damaged = tmp_path / "run"
    shutil.copytree(run, damaged, ignore=shutil.ignore_patterns("*.pt"))
    (damaged / "metrics.csv").unlink()
    (damaged / "eval-test.json").write_text('{"split": "test", "n": ')  # torn
    png = damaged / "deconv-top9-conv2_1.png"
    png.write_bytes(png.read_bytes()[:200])  # truncated
    (damaged / "report.html").unlink()
    p = cli("report", damaged)
    assert p.returncode == 0, p.stderr
    text = (damaged / "report.html").read_text()
    assert "This run folder lacks 3 piece(s)" in text
    assert "metrics.csv: not in the run folder" in text
    assert "eval-test.json: unreadable (JSONDecodeError" in text
    assert "deconv-top9-conv2_1.png: unreadable" in text
    assert "accuracy on val (group-aware validation from train/)" in text  # what exists still renders
    assert '<section id="gallery">' in text and "<h3>conv1_1</h3>" in text
    embedded_images(text)
    assert p.stderr.count("heritagelens: warning:") == 3 and "Traceback" not in p.stderr


def test_mistakes_are_thumbnails_of_their_photos_with_both_labels(trained, main_run, tmp_path):
    import json

    from heritagelens.data.images import decode

    root, _ = trained
    _, run = main_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.pt"))
    files = sorted(str(f.relative_to(root)) for f in (root / "train" / "bell").glob("*.jpg"))[:2]
    result = json.loads((copy / "eval-val.json").read_text())
    result["mistakes"] = [{"file": f, "true": "bell", "predicted": "dome", "confidence": 0.9} for f in files]
    (copy / "eval-val.json").write_text(json.dumps(result))
    text, _ = build(copy)
    thumbs = [im for im in embedded_images(text) if im.size == (128, 128)]
    assert len(thumbs) == text.count('<figure class="thumb">') == 2
    for f, im in zip(files, thumbs):
        assert np.array_equal(np.asarray(im.convert("RGB"))[::2, ::2].transpose(2, 0, 1), decode(root / f))
    assert text.count("true bell<br>predicted dome (0.90)") == 2


def test_report_without_data_shows_mistakes_without_thumbnails(main_run, tmp_path):
    _, run = main_run
    import json

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.pt"))
    result = json.loads((copy / "eval-val.json").read_text())
    result["mistakes"] = [{"file": "train/bell/x.jpg", "true": "bell", "predicted": "dome", "confidence": 0.9}]
    (copy / "eval-val.json").write_text(json.dumps(result))
    text, sections = build(copy, data_root=tmp_path / "nowhere")
    lacks = [m for s in sections for m in s.missing]
    assert len(lacks) == 1 and "1 mistake thumbnail(s) not shown" in lacks[0] and "x.jpg" in lacks[0]
    assert "image not found" in text and "true bell" in text


@pytest.mark.parametrize(
    "make, needles",
    [
        (lambda tmp: tmp / "nope", ["no such run folder"]),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", ["not a run folder"]),
    ],
)
def test_report_of_no_run_gives_one_line(tmp_path, make, needles):
    assert_one_line_error(cli("report", make(tmp_path)), *needles)


def test_report_in_a_browser_has_every_section_and_no_broken_image(main_run, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    _, run = main_run
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto((run / "report.html").as_uri())
        ids = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
        sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
        page.click("nav >> text=Class images")  # the nav link scrolls to the gallery
        scrolled = page.evaluate("window.scrollY")
        clear = page.evaluate("""() => document.querySelector('#gallery h2').getBoundingClientRect().top >=
                                       document.querySelector('nav').getBoundingClientRect().bottom""")
        page.click("#gallery img")  # a figure, clicked: as large as the window
        enlarged = page.eval_on_selector("#big img", "e => e.getBoundingClientRect().width")
        page.keyboard.press("Escape")
        closed = page.eval_on_selector("#big", "e => e.hidden")
        page.screenshot(path=tmp_path / "report.png", full_page=True)
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto((run / "report.html").as_uri())
        widths = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        phone.screenshot(path=tmp_path / "phone.png")
        browser.close()
    assert clear, "the heading jumped to is hidden under the sticky navigation"
    assert enlarged > 900 and closed
    assert widths[0] <= widths[1], widths  # nothing wider than a phone: wide tables scroll inside their box
    assert ids[: len(SECTIONS)] == SECTIONS
    assert sizes and all(ok and w > 0 and h > 0 for ok, w, h in sizes), "a broken image"
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert scrolled > 0
    shot = Image.open(tmp_path / "report.png")
    assert shot.width == 1280 and shot.height > 3000
    assert len(np.unique(np.asarray(shot.convert("L")))) > 10  # rendered content, not a blank page


def test_names_from_the_run_folder_cannot_inject_markup(main_run, tmp_path):
    import json

    _, run = main_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.pt"))
    evil = "<img src=x onerror=alert(1)>"
    result = json.loads((copy / "eval-val.json").read_text())
    result["per_class"] = {evil: next(iter(result["per_class"].values()))}
    result["mistakes"] = [{"file": f"train/{evil}/a.jpg", "true": evil, "predicted": evil, "confidence": 0.5}]
    (copy / 'eval-"><b onmouseover=x>.json').write_text(json.dumps(result))
    text, sections = build(copy)
    assert evil not in text and "<b onmouseover" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert 'id="eval-___b_onmouseover_x_"' in text  # the file name made into a safe anchor


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("eval-val.json", '{"split": "val"}', "eval-val.json: unexpected content (KeyError: 'mistakes')"),
        ("metrics.csv", "epoch,lr\n1,0.1\n", "metrics.csv: unexpected content (KeyError: 'val_acc')"),
        ("summary.json", "[]", "summary.json: unexpected content (AttributeError"),
        ("split.json", '{"images": 5}', "split.json: no counts per class"),
    ],
)
def test_pieces_that_parse_but_hold_the_wrong_thing_are_listed(main_run, tmp_path, name, content, problem):
    _, run = main_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.pt"))
    (copy / name).write_text(content)
    p = cli("report", copy)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    text = html.unescape((copy / "report.html").read_text())
    assert "This run folder lacks 1 piece(s)" in text and problem in text
    assert all(f'<section id="{s}">' in text for s in SECTIONS)  # every section still there
