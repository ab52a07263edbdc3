"""The explorer web app: its functions on a tiny model, then the real server driven in Chromium as a person would."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import browser_page, need, serving, wait_text
from PIL import Image

need("gradio")

from heritagelens.webapp import Explorer  # noqa: E402


@pytest.fixture(scope="module")
def explorer(trained):
    root, run = trained
    return Explorer(run, root)


def test_classify_gives_top5_and_projections_of_every_layer(explorer, trained):
    root, _ = trained
    path = sorted((root / "test" / "dome").glob("*.jpg"))[0]
    r = explorer.classify(str(path))
    assert set(r.top5) == {"arch", "bell", "dome"} and list(r.top5.values()) == sorted(r.top5.values(), reverse=True)
    assert abs(sum(r.top5.values()) - 1) < 1e-4
    assert r.image.size == (192, 192) and r.projections.width > 64 * 6
    assert r.status.startswith(f"**{path.name}**: {next(iter(r.top5))} (")
    picked = explorer.classify(None, explorer.picks[0])
    assert picked.top5 is not None and picked.status.startswith(f"**{Path(explorer.picks[0]).name}**")
    assert len(explorer.picks) == 9  # three per class
    assert explorer.maps(str(path)).width > 7 * 100  # seven panels
    outside = explorer.classify(None, "../" + str(path.relative_to(root.parent)))  # a crafted request: not a pick
    assert outside.top5 is None and outside.status == "**Unknown pick.**"


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "empty file"),
        (b"hello, not an image", "not an image Pillow can read"),
        ("truncated", "corrupt or truncated image"),
    ],
)
def test_bad_uploads_become_a_message(explorer, trained, tmp_path, content, problem):
    root, _ = trained
    path = tmp_path / "upload.jpg"
    if content == "truncated":
        content = next((root / "test").rglob("*.jpg")).read_bytes()[:300]
    path.write_bytes(content)
    r = explorer.classify(str(path))
    assert r.top5 is None and r.image is None and problem in r.status and str(tmp_path) not in r.status
    assert explorer.maps(str(path)) is None


def test_channel_and_class_image_tabs(explorer):
    fig, status = explorer.channel("conv2_1", 3)
    assert fig.width > 200 and status.startswith("conv2_1 channel 3: strongest on train/")
    assert explorer.channel("conv2_1", 16)[1] == "Channel 16 out of range: layer 'conv2_1' has channels 0..15."
    assert explorer.channel("conv2_1", 1.5) == (None, "Channel must be a whole number.")
    assert explorer.channel("nope", 0)[1] == "Unknown layer 'nope'."
    fig, status = explorer.dream("bell", 2, 0)
    assert fig.width > 2 * 64 and "2 image(s) of bell" in status
    assert np.asarray(fig).std() > 5  # an image, not a blank
    assert explorer.dream("nave", 1, 0) == (None, "Unknown class 'nave'.")


def test_concurrent_requests_get_the_answers_they_would_get_alone(explorer, trained):
    from concurrent.futures import ThreadPoolExecutor

    root, _ = trained
    paths = [str(p) for p in sorted((root / "test").rglob("*.jpg"))[::4][:3]]
    alone = [(explorer.classify(p).top5, np.asarray(explorer.maps(p), dtype=float)) for p in paths]
    dream_alone = np.asarray(explorer.dream("bell", 1, 0)[0])
    with ThreadPoolExecutor(8) as pool:  # Grad-CAM's and the dream's hooks must not leak into other requests
        jobs = [(pool.submit(explorer.classify, p), pool.submit(explorer.maps, p)) for p in paths]
        dreams = [pool.submit(explorer.dream, "bell", 1, 0) for _ in range(2)]
        together = [(c.result().top5, np.asarray(m.result(), dtype=float)) for c, m in jobs]
    for (top5, maps), (top5_t, maps_t) in zip(alone, together):
        assert list(top5) == list(top5_t) and np.allclose(list(top5.values()), list(top5_t.values()), atol=1e-5)
        assert np.abs(maps - maps_t).mean() < 0.5  # the same figure, up to rendering noise
    for d in dreams:
        assert np.abs(np.asarray(d.result()[0], dtype=float) - dream_alone).mean() < 2


# --------------------------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """`heritagelens serve` on a free local port, as a user starts it; its URL."""
    root, run = trained
    with serving([str(run), "--data", str(root)], tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def page(server, chromium):
    with browser_page(chromium) as pg:
        yield pg


def upload(page, url: str, path: Path) -> None:
    page.goto(url)
    page.locator("#upload input[type=file]").set_input_files(str(path))


def loaded_image(page, selector: str) -> tuple[int, int]:
    """Wait until the component shows a decoded image; its natural size."""
    page.wait_for_function(
        "s => { const i = document.querySelector(s + ' img'); return i && i.complete && i.naturalWidth > 0 }",
        arg=selector,
    )
    return tuple(page.eval_on_selector(selector + " img", "i => [i.naturalWidth, i.naturalHeight]"))


@pytest.mark.realdata
def test_a_person_uploads_a_real_photo_picks_a_channel_and_makes_a_class_image(page, server, ahe_root, tmp_path):
    photo = sorted((ahe_root / "train" / "dome(outer)").glob("*.jpg"))[0]
    upload(page, server, photo)
    status = wait_text(page, "#status", photo.name)
    assert "%" in status
    top5 = page.inner_text("#top5")
    assert sum(c in top5 for c in ("arch", "bell", "dome")) == 3  # the tiny model's three classes, with percents
    assert loaded_image(page, "#seen") == (192, 192)
    assert loaded_image(page, "#projections")[0] > 6 * 64
    assert loaded_image(page, "#maps")[0] > 700
    page.screenshot(path=tmp_path / "classified.png", full_page=True)
    page.click("#strongest input")  # one of the photo's projected channels: a link to its top 9
    option = page.locator("li[role=option]").first
    chosen = option.inner_text().strip()
    option.click()
    page.click("#follow")
    layer, _, c = chosen.partition(":")
    assert wait_text(page, "#channel-status", f"{layer} channel {c}: strongest on train/")
    assert page.locator("#top9").is_visible()  # the Channels tab, showing that channel's top 9

    page.click("#layer input")
    page.click("li[role=option]:has-text('conv2_1')")
    assert wait_text(page, "#channel", "channel (0 to 15 in conv2_1)")  # the range, for the layer chosen
    page.fill("#channel input[type=number]", "7")
    page.click("#show")
    assert wait_text(page, "#channel-status", "conv2_1 channel 7: strongest on train/")
    assert loaded_image(page, "#top9")[0] > 200
    page.click("#channel-next")
    assert wait_text(page, "#channel-status", "conv2_1 channel 8: strongest on train/")
    page.click("#channel-prev")
    assert wait_text(page, "#channel-status", "conv2_1 channel 7: strongest on train/")
    page.click("#channel-prev")
    assert wait_text(page, "#channel-status", "conv2_1 channel 6: strongest on train/")

    page.click("button[role=tab]:has-text('Class images')")
    page.click("#class input")
    page.click("li[role=option]:has-text('bell')")
    page.click("#generate")
    assert wait_text(page, "#dream-status", "image(s) of bell")
    assert loaded_image(page, "#dreamed")[0] > 128
    page.screenshot(path=tmp_path / "dreamed.png", full_page=True)
    assert Image.open(tmp_path / "dreamed.png").height > 500


def toasts(page) -> str:
    return " ".join(e.inner_text() for e in page.query_selector_all(".toast-body, .toast-wrap"))


@pytest.mark.parametrize("kind", ["non-image", "corrupt", "50 MB", "20000 px"])
def test_a_bad_upload_gets_a_message_on_the_page_and_the_server_goes_on(
    page, server, trained, tmp_path, kind, monkeypatch
):
    root, _ = trained
    good = next((root / "test" / "arch").glob("*.jpg"))
    bad = tmp_path / ("notes.txt" if kind == "non-image" else "photo.jpg" if kind != "20000 px" else "huge.png")
    if kind == "non-image":
        bad.write_text("field notes, not a photograph")
    elif kind == "corrupt":
        bad.write_bytes(good.read_bytes()[:400])
    elif kind == "50 MB":
        bad.write_bytes(good.read_bytes() + os.urandom(50 * 2**20))
    else:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # to make the file; the server keeps its limit
        Image.new("L", (20_000, 20_000)).save(bad)
    upload(page, server, bad)
    expected = {
        "non-image": "Invalid file type",
        "corrupt": "corrupt or truncated image",
        "50 MB": "exceed the maximum allowed size",
        "20000 px": "image too large",
    }[kind]
    page.wait_for_function("t => document.body.innerText.includes(t)", arg=expected)  # in the status line or a notice
    assert expected in page.inner_text("#status") + toasts(page)
    upload(page, server, good)  # the next request is served as usual
    assert wait_text(page, "#status", good.name)
