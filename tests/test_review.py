"""A person's review of a sort: filing the photos the model was unsure of, by hand, into the class they choose."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import browser_page, cli, need, serving, sort_rows, wait_text

from heritagelens.sort.journal import JOURNAL, LOCK, UNCERTAIN, SortError
from heritagelens.sort.review import decide, refile, undo
from heritagelens.sort.sorter import sort_photos
from heritagelens.sort.xmp import read_tag, sidecar_path

PAINTED = """e => {
  const r = e.getBoundingClientRect(), fit = getComputedStyle(e).objectFit;
  if (fit === "fill") return [r.width, r.height];
  const sx = r.width / e.naturalWidth, sy = r.height / e.naturalHeight;
  let k = fit === "cover" ? Math.max(sx, sy) : Math.min(sx, sy);
  if (fit === "none") k = 1; else if (fit === "scale-down") k = Math.min(k, 1);
  return [e.naturalWidth * k, e.naturalHeight * k];
}"""
"""The size in CSS pixels at which an <img> paints its picture inside its box (its `object-fit` applied)."""


def test_a_decision_moves_the_copy_and_updates_the_csv_the_journal_and_the_sidecar(trained, photos, tmp_path):
    _, run = trained
    folder, truth = photos
    out = tmp_path / "out"
    sort_photos(run, folder, out, min_confidence=1, progress=False, xmp=True)  # every photo unsure
    before = sort_rows(out)
    unsure = sorted(f for f, r in before.items() if r["copied_to"].startswith(UNCERTAIN + "/"))
    assert len(unsure) == len(truth)
    classes = ["arch", "bell", "dome"]
    for f in unsure[:3]:
        unsure_tag = read_tag(sidecar_path(folder / f).read_bytes())
        assert unsure_tag.filed is None and unsure_tag.decided_by == "model"  # 'to review' while unsure
        row = refile(out, f, truth[f], classes)[f]
        assert row["copied_to"].startswith(truth[f] + "/") and (out / row["copied_to"]).is_file()
        assert not (out / before[f]["copied_to"]).exists()
        tag = read_tag(sidecar_path(folder / f).read_bytes())
        assert tag.filed == truth[f] and tag.top == before[f]["class"]  # the person's class; the model's guess kept
        assert tag.decided_by == "person"
    after = sort_rows(out)
    for f in unsure[:3]:
        assert (after[f]["class"], after[f]["decided"]) == (truth[f], "person")
        assert after[f]["probability"] == before[f]["probability"] and after[f]["top3"] == before[f]["top3"]
    assert all(after[f] == before[f] for f in unsure[3:])
    # a later sort at the same or another threshold leaves a person's decisions where they are
    for threshold in (1, 0):
        s = sort_photos(run, folder, out, min_confidence=threshold, progress=False, xmp=True)
        assert s.skipped == len(truth) and sort_rows(out)[unsure[0]]["copied_to"] == after[unsure[0]]["copied_to"]
    assert sum(1 for _ in out.rglob("*") if _.is_file() and _.parent.name in (*classes, UNCERTAIN)) == len(truth)


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file under `folders` (the sort's lock aside) and its bytes."""
    return {str(f): f.read_bytes() for d in folders for f in sorted(d.rglob("*")) if f.is_file() and f.name != LOCK}


def test_undo_takes_decisions_back_byte_for_byte_last_first(trained, photos, tmp_path):
    _, run = trained
    folder, truth = photos
    out, classes = tmp_path / "out", ["arch", "bell", "dome"]
    sort_photos(run, folder, out, min_confidence=1, progress=False, xmp=True)  # every photo unsure, each a sidecar
    before = snapshot(out, folder)
    first, second = sorted(truth)[:2]
    _, d1 = decide(out, first, truth[first], classes)
    middle = snapshot(out, folder)
    rows, d2 = decide(out, second, "arch" if truth[second] != "arch" else "bell", classes)
    assert rows[second]["decided"] == "person" and snapshot(out, folder) != middle
    with pytest.raises(SortError, match="has changed since .* cannot be undone"):
        undo(d1, classes)  # not the last decision: refused, nothing changed
    assert undo(d2, classes)[second]["copied_to"].startswith(UNCERTAIN + "/")
    assert snapshot(out, folder) == middle  # copy, sort.csv, journal and sidecar as they were
    undo(d1, classes)
    assert snapshot(out, folder) == before
    assert (out / JOURNAL).read_bytes() == before[str(out / JOURNAL)]
    with pytest.raises(SortError, match="cannot be undone"):
        undo(d1, classes)  # once only


def test_a_decision_refuses_what_the_sort_did_not_file(trained, photos, tmp_path):
    _, run = trained
    folder, truth = photos
    out = tmp_path / "out"
    sort_photos(run, folder, out, min_confidence=1, progress=False)
    f = next(iter(truth))
    with pytest.raises(SortError, match="unknown class 'nave'"):
        refile(out, f, "nave", ["arch", "bell", "dome"])
    with pytest.raises(SortError, match="'day1/broken.jpg' is not a photo this sort filed"):
        refile(out, "day1/broken.jpg", "arch", ["arch", "bell", "dome"])
    with pytest.raises(SortError, match="not a folder 'heritagelens sort' wrote"):
        refile(tmp_path, f, "arch", ["arch", "bell", "dome"])
    assert cli("sort", run, folder, "--out", out, "--min-confidence", "1", "--quiet").returncode == 0


# ------------------------------------------------------------------------------------------- the review tab


def test_the_review_tab_pages_through_the_unsure_photos_and_files_them(trained, photos, tmp_path):
    need("gradio")
    from heritagelens.webapp import UNSURE, Explorer

    root, run = trained
    folder, truth = photos
    out = tmp_path / "out"
    sort_photos(run, folder, out, min_confidence=1, progress=False)
    ex = Explorer(run, root)
    unsure = sorted(truth)
    first = ex.review(str(out), UNSURE)
    assert first.file == unsure[0] and f"(1 of {len(unsure)})" in first.status and first.image is not None
    assert len(first.top3) == 3 and abs(sum(first.top3.values()) - 1) < 0.01  # three classes: all of them
    then = ex.decide(str(out), UNSURE, first.file, 2)
    assert then.file == unsure[1] and then.status.startswith(f"Filed {unsure[0]} as dome. Next:")
    assert f"(1 of {len(unsure) - 1})" in then.status  # the filed photo has left the queue
    assert ex.review(str(out), "dome").file == unsure[0]  # and is filed under dome, by a person
    assert "filed by a person as dome" in ex.review(str(out), "dome").status
    projections, maps = ex.explain(str(out), then.file)
    assert projections.width > 64 and maps.width > 64
    assert "no such folder" in ex.review(str(tmp_path / "nowhere"), UNSURE).status
    assert "not a folder 'heritagelens sort' wrote" in ex.review(str(tmp_path), UNSURE).status


def test_the_review_tab_moves_undoes_and_files_several_without_filing_twice(trained, photos, tmp_path):
    need("gradio")
    from heritagelens.webapp import UNSURE, Explorer

    root, run = trained
    folder, truth = photos
    out = str(tmp_path / "out")
    sort_photos(run, folder, out, min_confidence=1, progress=False)
    ex, unsure = Explorer(run, root), sorted(truth)
    assert ex.review(out, UNSURE, after=unsure[0], back=True).file == unsure[-1]  # round at the start
    assert ex.review(out, UNSURE, after=unsure[1], back=True).file == unsure[0]
    assert ex.review(out, UNSURE, after=unsure[0]).file == unsure[1]
    before = sort_rows(tmp_path / "out")
    ex.decide(out, UNSURE, unsure[0], 0)
    twice = ex.decide(out, UNSURE, unsure[0], 1)  # the key again, for the photo that was on the page
    assert "Nothing filed" in twice.status and sort_rows(tmp_path / "out")[unsure[0]]["class"] == "arch"
    assert twice.file == unsure[1] and len(ex.reviewer.decisions) == 1
    r = ex.undo(out, UNSURE)
    assert r.file == unsure[0] and r.status.startswith(f"Undone: {unsure[0]} is back in {UNCERTAIN}/. Now:")
    assert sort_rows(tmp_path / "out") == before and "Nothing to undo" in ex.undo(out, UNSURE).status
    grid, files = ex.thumbnails(out, UNSURE)
    assert files == unsure and len(grid) == len(unsure) and grid[0][1].startswith(f"{unsure[0]}: ")
    r = ex.file_photos(out, UNSURE, files[:2], 2)
    assert r.status == f"Filed {files[0]}, {files[1]} as dome." and len(ex.reviewer.decisions) == 2
    assert [sort_rows(tmp_path / "out")[f]["class"] for f in files[:2]] == ["dome", "dome"]
    assert ex.thumbnails(out, UNSURE)[1] == unsure[2:]


def test_the_review_tab_refuses_a_sort_of_another_model(trained, photos, tmp_path):
    need("gradio")
    from heritagelens.webapp import UNSURE, Explorer

    root, run = trained
    folder, _ = photos
    other = tmp_path / "other"
    shutil.copytree(run, other)
    sort_photos(other, folder, tmp_path / "out", min_confidence=1, progress=False)
    r = Explorer(run, root).review(str(tmp_path / "out"), UNSURE)
    assert r.file == "" and "sorted with" in r.status and "serve that model to review it" in r.status
    assert r.error and not Explorer(run, root).review(str(tmp_path / "nowhere"), UNSURE).file


@pytest.mark.realdata
@pytest.mark.slow
def test_a_person_reviews_a_sort_of_real_photos_in_chromium(ahe_root, chromium, tmp_path):
    """The bundled model sorts real photos it never trained on; on the page: arrows move without deciding, three
    decisions (two clicks, one key), Ctrl+Z takes the last back byte for byte, two photos filed at once from the
    grid; then the folder, sort.csv and the sidecars say what the person decided."""
    from heritagelens.data.dataset import name_key
    from heritagelens.model.card import BUNDLED, model_card
    from heritagelens.webapp import key_of

    classes = model_card(BUNDLED)["classes"]
    photos = tmp_path / "photos"
    for k, c in enumerate(classes):  # each class's 4 newest Flickr uploads: the source-held-out photos
        (photos / f"site{k % 3}").mkdir(parents=True, exist_ok=True)
        flickr = [f for f in (ahe_root / "train" / c).glob("*.jpg") if name_key(f.name)[0] == "flickr"]
        for f in sorted(flickr, key=lambda f: name_key(f.name)[1])[-4:]:
            shutil.copyfile(f, photos / f"site{k % 3}" / f"{k}-{f.name}")
    out = tmp_path / "sorted"
    p = cli("sort", photos, "--out", out, "--xmp", "--min-confidence", "0.99", "--quiet")
    assert p.returncode == 0, p.stderr
    unsure = sorted(f for f, r in sort_rows(out).items() if r["copied_to"].startswith(UNCERTAIN + "/"))
    assert len(unsure) >= 6, p.stdout
    with serving([], tmp_path / "serve.log") as url, browser_page(chromium) as page:  # the review needs no data
        page.goto(url)
        page.click("button[role=tab]:has-text('Review a sort')")
        page.fill("#review-folder textarea, #review-folder input", str(out))
        page.click("#review-open")
        wait_text(page, "#review-status", f"(1 of {len(unsure)})")
        page.wait_for_function("() => (document.querySelector('#review-photo img') || {}).naturalWidth > 0")
        shown = page.eval_on_selector("#review-photo img", PAINTED)  # a 64 px photo, drawn large enough to judge
        assert max(shown) > 300, shown
        keys = page.inner_text("#review-file-0"), page.inner_text("#review-file-9")
        assert keys[0].startswith("1 · ") and keys[1].startswith("0 · "), keys  # the keys, 1-based
        page.click("#review-status")  # focus off the text box
        page.keyboard.press("ArrowRight")
        wait_text(page, "#review-status", f"{unsure[1]} (2 of {len(unsure)})")
        page.keyboard.press("ArrowLeft")
        wait_text(page, "#review-status", f"{unsure[0]} (1 of {len(unsure)})")
        assert sort_rows(out)[unsure[0]]["copied_to"].startswith(UNCERTAIN)  # moving decided nothing
        chosen = {}
        for n, how in enumerate(("click", "key", "click")):
            file = unsure[n]
            before_last = snapshot(out, photos)
            k = int(Path(file).name.split("-")[0])  # the true class, from the name the test gave it
            if how == "click":
                page.click(f"#review-file-{k}")
            else:
                page.click("#review-status")
                page.keyboard.press(key_of(k))  # the key its button shows
            wait_text(page, "#review-status", f"Filed {file} as {classes[k]}")
            chosen[file] = classes[k]
        last = unsure[2]
        page.click("#review-status")
        page.keyboard.press("Control+z")
        wait_text(page, "#review-status", f"Undone: {last} is back in {UNCERTAIN}/")
        assert snapshot(out, photos) == before_last  # copy, sort.csv, journal and sidecar as they were
        del chosen[last]
        page.click("#review-grid-box .label-wrap")  # open the grid
        boxes = page.locator("#review-ticked label")
        boxes.first.wait_for()
        ticked = [boxes.nth(i).inner_text().strip() for i in range(2)]
        assert ticked == unsure[2:4]  # the queue in file order, the undone photo back in it
        for i in range(2):
            boxes.nth(i).click()
        page.click("#review-into input")
        page.click("ul[role=listbox] li:has-text('vault')")
        page.click("#review-file-ticked")
        wait_text(page, "#review-status", f"Filed {', '.join(ticked)} as vault")
        chosen |= dict.fromkeys(ticked, "vault")
        waiting = [f for f in unsure if f not in chosen]  # the page shows the first of them
        k = int(Path(waiting[0]).name.split("-")[0])
        page.click("#review-status")
        page.keyboard.press(key_of(k))
        page.keyboard.press(key_of(k))  # pressed twice before the page showed the next photo
        wait_text(page, "#review-status", f"Filed {waiting[0]} as {classes[k]}")
        page.wait_for_timeout(1500)  # time for a second decision, were one sent
        assert f"Filed {waiting[1]}" not in page.inner_text("#review-status")
        chosen[waiting[0]] = classes[k]
        page.click("#review-learn-box .label-wrap")
        page.click("#review-learn")  # 5 decisions: too few to learn from, and the page says so
        wait_text(page, "#review-learnt", f"{len(chosen)} photo(s) filed by a person; learning needs at least 20")
        page.screenshot(path=tmp_path / "review.png", full_page=True)
    rows = sort_rows(out)
    assert rows[waiting[1]]["copied_to"].startswith(UNCERTAIN) and not rows[waiting[1]]["decided"]  # never shown
    for file, cls in chosen.items():
        assert rows[file]["class"] == cls and rows[file]["decided"] == "person"
        assert (out / rows[file]["copied_to"]).parent.name == cls and (out / rows[file]["copied_to"]).is_file()
        assert read_tag(sidecar_path(photos / file).read_bytes()).filed == cls
    assert all(rows[f]["copied_to"].startswith(UNCERTAIN) for f in unsure if f not in chosen)  # the rest wait
