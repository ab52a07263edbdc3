from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import class_image, cli, make_dataset
from PIL import Image

from heritagelens.data import dataset, images
from heritagelens.data.images import DataError


# ------------------------------------------------------------------------------------------------------- layout
def test_classes_are_sorted_folder_names(tiny_data):
    assert dataset.list_classes(tiny_data) == ["arch", "bell", "dome"]


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="nope: no such directory"):
        dataset.list_classes(tmp_path / "nope")


def test_root_without_train_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match=r"train: missing; expected the layout"):
        dataset.list_classes(tmp_path / "x")


def test_folder_without_class_subfolders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "loose.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no class folders"):
        dataset.list_classes(tmp_path)


def test_empty_class_folder(tiny_data):
    (tiny_data / "train" / "zzz").mkdir()
    with pytest.raises(DataError, match=r"zzz: empty class folder"):
        dataset.load_split(tiny_data, "train")


def test_unknown_class_in_test_split(tiny_data):
    d = tiny_data / "test" / "gazebo"
    d.mkdir()
    class_image(0, np.random.default_rng(0)).save(d / "a.jpg")
    with pytest.raises(DataError, match=r"gazebo: class 'gazebo' is not one of the model's classes"):
        dataset.load_split(tiny_data, "test")


# ------------------------------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize(
    "mode,value,expected",
    [
        ("L", 100, (100, 100, 100)),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),  # fully transparent composites on white
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 0, (0, 0, 0)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_any_mode_becomes_rgb(tmp_path, mode, value, expected):
    path = tmp_path / f"img.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    Image.new(mode, (40, 30), value).save(path)
    arr = images.decode(path)
    assert arr.shape == (3, 64, 64) and arr.dtype == np.uint8
    assert tuple(int(v) for v in arr[:, 32, 32]) == expected


def test_palette_image(tmp_path):
    im = Image.new("P", (64, 64), 1)
    im.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    im.save(tmp_path / "p.png")
    assert tuple(images.decode(tmp_path / "p.png")[:, 5, 5]) == (200, 100, 50)


def test_other_sizes_are_resized_and_exif_rotation_applied(tmp_path):
    im = Image.new("RGB", (200, 100), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 100, 100))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed: the red half goes to the top
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    arr = images.decode(tmp_path / "r.jpg")
    assert arr.shape == (3, 64, 64)
    assert arr[0, 5, 32] > 200 and arr[2, 5, 32] < 60  # top is red
    assert arr[2, 60, 32] > 200  # bottom is blue


def test_huge_jpeg_decodes_at_reduced_size(tmp_path):
    Image.new("RGB", (10_000, 10_000), (30, 120, 200)).save(tmp_path / "big.jpg", quality=70)
    with Image.open(tmp_path / "big.jpg") as im:
        im.draft("RGB", (64, 64))
        assert im.size == (1250, 1250)  # JPEG draft mode: decoded at 1/8 scale, never as 300 MB of pixels
    arr = images.decode(tmp_path / "big.jpg")
    assert arr.shape == (3, 64, 64)
    assert abs(int(arr[2, 10, 10]) - 200) < 6


def test_image_over_pixel_limit_is_refused(tmp_path):
    Image.new("1", (12_000, 11_000)).save(tmp_path / "huge.png")
    with pytest.raises(DataError, match=r"huge.png: image too large \(12000x11000 px\)"):
        images.decode(tmp_path / "huge.png")


@pytest.mark.parametrize(
    "name,content,problem",
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.jpg", b"these are not pixels\n", "not an image"),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image|corrupt"),
    ],
)
def test_bad_files_name_the_file_and_problem(tmp_path, name, content, problem):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=rf"{name}: ({problem})"):
        images.decode(tmp_path / name)


def test_truncated_jpeg(tmp_path):
    class_image(1, np.random.default_rng(0)).save(tmp_path / "whole.jpg")
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut.jpg: corrupt or truncated image"):
        images.decode(tmp_path / "cut.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"gone.jpg: no such file"):
        images.decode(tmp_path / "gone.jpg")


def _add_bad_files(root: Path) -> None:
    (root / "train" / "arch" / "zero.jpg").write_bytes(b"")
    (root / "train" / "bell" / "readme.txt").write_text("not an image")


def test_load_skips_bad_files_and_counts_them(tiny_data):
    _add_bad_files(tiny_data)
    s = dataset.load_split(tiny_data, "train")
    assert len(s.labels) == 72 and s.images.shape == (72, 3, 64, 64) and s.images.dtype == torch.uint8
    assert sorted(Path(f).name for f, _ in s.bad) == ["readme.txt", "zero.jpg"]
    assert torch.equal(torch.bincount(s.labels), torch.tensor([24, 24, 24]))


def test_load_stops_on_bad_file_when_asked(tiny_data):
    _add_bad_files(tiny_data)
    with pytest.raises(DataError, match=r"2 unreadable file\(s\)"):
        dataset.load_split(tiny_data, "train", on_bad_file="stop")


# --------------------------------------------------------------------------------------------------------- cache
def test_second_load_comes_from_cache_and_changes_invalidate_it(tiny_data, monkeypatch, tmp_path):
    first = dataset.load_split(tiny_data, "train", cache_dir=tmp_path / "c")
    calls = []
    real = dataset.decode_many
    monkeypatch.setattr(dataset, "decode_many", lambda files: calls.append(len(files)) or real(files))
    second = dataset.load_split(tiny_data, "train", cache_dir=tmp_path / "c")
    assert calls == [] and torch.equal(first.images, second.images) and first.files == second.files
    class_image(2, np.random.default_rng(5)).save(tiny_data / "train" / "arch" / "new.jpg")
    third = dataset.load_split(tiny_data, "train", cache_dir=tmp_path / "c")
    assert calls == [73] and len(third.labels) == 73


# ---------------------------------------------------------------------------------------------------------- check
def test_check_finds_bad_files_and_duplicates(tiny_data):
    _add_bad_files(tiny_data)
    src = next((tiny_data / "train" / "arch").glob("1*.jpg"))
    (tiny_data / "train" / "dome" / src.name).write_bytes(src.read_bytes())  # same file under two classes
    (tiny_data / "train" / "arch" / "copy.jpg").write_bytes(src.read_bytes())
    r = dataset.check(tiny_data)
    assert r.usable
    assert r.counts["train"] == {"arch": 26, "bell": 25, "dome": 25} and r.counts["test"]["arch"] == 6
    assert sorted(Path(f).name for f, _ in r.bad) == ["readme.txt", "zero.jpg"]
    assert len(r.duplicates) == 1 and len(r.duplicates[0]) == 3 and r.cross_class == r.duplicates
    assert r.sizes["64x64"] == 72 + 18 + 2 and r.modes["RGB"] == 92
    text = r.text().splitlines()  # the words the command prints
    assert text[0] == f"data root: {r.root}" and text[1].split() == ["class", "train", "test"]
    assert "arch" in text[2] and text[2].split()[1:] == ["26", "6"] and "unreadable files: 2" in text
    assert any(ln.startswith("  CROSS-CLASS ") and ln.count("  ==  ") == 2 for ln in text)


def test_check_reports_unusable_layout(tiny_data):
    (tiny_data / "test" / "gazebo").mkdir()
    r = dataset.check(tiny_data)
    assert not r.usable
    assert any("class 'gazebo' is not in train/" in p for p in r.problems)
    assert any("gazebo: empty class folder" in p for p in r.problems)


def test_check_names_a_decompression_bomb_and_every_entry_it_ignores(tiny_data):
    Image.new("1", (15000, 15000)).save(tiny_data / "train" / "dome" / "bomb.png")  # 225 MP in a small file
    (tiny_data / "train" / "notes.txt").write_text("a stray file beside the class folders")
    (tiny_data / "train" / "arch" / "sub").mkdir()
    os.mkfifo(tiny_data / "train" / "bell" / "pipe.jpg")  # read, it would block forever
    r = dataset.check(tiny_data)
    assert r.usable and [(Path(f).name, why.split(" (")[0]) for f, why in r.bad] == [("bomb.png", "image too large")]
    assert r.ignored == [
        f"{tiny_data / 'train' / 'notes.txt'}: not a class folder, ignored",
        f"{tiny_data / 'train' / 'arch' / 'sub'}: a folder, ignored",
        f"{tiny_data / 'train' / 'bell' / 'pipe.jpg'}: not a regular file, ignored",
    ]
    p = cli("data", "check", tiny_data)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert f"ignored: {tiny_data / 'train' / 'notes.txt'}: not a class folder, ignored" in p.stdout
    assert "bomb.png: image too large" in p.stdout


# ----------------------------------------------------------------------------------------------------- the split
def test_name_keys():
    assert dataset.name_key("train/altar/10217046385_54f0dbd2cc_n.jpg") == ("flickr", 10217046385)
    assert dataset.name_key("11462332355_cff47333bd.jpg") == ("flickr", 11462332355)
    assert dataset.name_key("Apse_-_Duomo_-_Pisa_2014_(2).jpg") == dataset.name_key("Apse_-_Duomo_-_Pisa_2014.jpg")
    assert (
        dataset.name_key("120px-113ComoDuomo.jpg")
        == dataset.name_key("101px-111ComoDuomo.jpg")
        == ("name", "comoduomo")
    )
    assert dataset.name_key("altar_001.jpg") != dataset.name_key("apse_001.jpg")


def test_groups_link_near_duplicates_bursts_and_name_series():
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.integers(0, 256, (6, 3, 64, 64), dtype=np.uint8))
    images = base.clone()
    noisy = base[0].float() + torch.from_numpy(rng.normal(0, 4, (3, 64, 64))).float()
    images[1] = noisy.clamp(0, 255).to(torch.uint8)  # re-encoded copy of image 0
    files = [
        "a/50000000000_aaaaaaaa.jpg",
        "b/90000000000_bbbbbbbb.jpg",
        "c/20000000000_cccccccc.jpg",
        "c/20000050000_dddddddd_m.jpg",  # 50,000 ids after image 2: a burst
        "d/Notre-Dame_de_Paris_(3).jpg",
        "e/800px-Notre-Dame_de_Paris_12.jpg",
    ]
    g = dataset.find_groups(files, images, near_dup_corr=0.93, flickr_id_window=100_000)
    assert g[0] == g[1] and g[2] == g[3] and g[4] == g[5]
    assert len({g[0], g[2], g[4]}) == 3


def test_group_split_keeps_groups_whole_and_is_deterministic():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 300, 2000)
    labels = groups % 5  # a group is one class, as bursts are
    tr, va = dataset.group_split(labels, groups, folds=5, fold=0, seed=3)
    assert not set(groups[tr]) & set(groups[va])
    assert len(tr) + len(va) == 2000 and 0.1 < len(va) / 2000 < 0.3
    tr2, va2 = dataset.group_split(labels, groups, folds=5, fold=0, seed=3)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, dataset.group_split(labels, groups, folds=5, fold=0, seed=4)[1])


def _flickr(i: int) -> str:
    return f"{i:011d}_abcdef12.jpg"


def test_source_holdout_takes_each_class_newest_flickr_photos_with_their_groups():
    ids = [10_000_000_000 + 1_000_000 * k for k in range(20)]  # class 0: ids 0..9, class 1: ids 10..19 (x 1e6)
    files = [_flickr(i) for i in ids] + ["Notre-Dame_(1).jpg", "Notre-Dame_(2).jpg"]
    labels = np.array([0] * 10 + [1] * 10 + [1, 1])
    groups = np.arange(22)
    groups[3] = groups[9]  # an old class-0 photo linked (a near-duplicate) to the newest one
    held = dataset.source_holdout(files, labels, groups, "flickr-newest", 5)
    assert sorted(held) == [3, 8, 9, 18, 19]  # two newest per class (the last of 5 ranges) and the whole group of #9
    assert sorted(dataset.source_holdout(files, labels, groups, "flickr-range-0", 5)) == [0, 1, 10, 11]
    assert sorted(dataset.source_holdout(files, labels, groups, "wikimedia", 5)) == [20, 21]
    assert len(dataset.source_holdout(files, labels, groups, "none", 5)) == 0


def test_source_ranges_partition_the_flickr_photos():
    rng = np.random.default_rng(0)
    ids = rng.choice(10**9, 300, replace=False) + 10**10
    files, labels, groups = [_flickr(i) for i in ids], rng.integers(0, 3, 300), np.arange(300)
    folds = [dataset.source_holdout(files, labels, groups, f"flickr-range-{k}", 4) for k in range(4)]
    assert sorted(np.concatenate(folds)) == list(range(300))
    assert np.array_equal(folds[3], dataset.source_holdout(files, labels, groups, "flickr-newest", 4))
    for c in range(3):  # within a class, every photo of a later range was uploaded after every one of an earlier
        newest, oldest = folds[3][labels[folds[3]] == c], folds[0][labels[folds[0]] == c]
        assert ids[newest].min() > ids[oldest].max()


def test_a_config_saved_before_the_source_split_keeps_the_split_it_trained_on():
    from heritagelens.config import Config, ConfigError

    saved = Config().to_dict()
    del saved["data"]["source_val"], saved["data"]["source_share"], saved["train"]["muon_ns_steps"]
    old = Config.from_dict(saved)
    assert old.data.source_val == "none" and old.train.muon_ns_steps == 5  # what such a run held out and ran
    assert Config.from_dict({"data": {"root": "x"}}).data.source_val == "flickr-newest"  # a partial config: defaults
    for bad in ("data.source_val=elsewhere", "data.source_share=0", "data.source_val=flickr-range-10"):
        with pytest.raises(ConfigError, match="source_"):
            Config().override([bad])
    assert Config().override(["data.source_val=flickr-range-4", "data.source_share=0.2"]).data.source_share == 0.2


# ----------------------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_split_keeps_every_known_near_duplicate_together(ahe_root, ahe_train):
    s = ahe_train
    assert len(s.labels) == 10130 and not s.bad and s.classes[0] == "altar" and len(s.classes) == 10
    groups = dataset.find_groups(s.files, s.images, 0.93, 100_000)
    tr, va = dataset.group_split(s.labels.numpy(), groups, 7, 0, 0)
    side = np.zeros(len(s.files), dtype=int)
    side[va] = 1
    index = {f: i for i, f in enumerate(s.files)}
    rows = list(csv.DictReader(open(Path(__file__).parent / "data" / "ahe64_train_near_duplicates.csv")))
    assert len(rows) == 42
    for r in rows:
        a, b = index[r["path_a"]], index[r["path_b"]]
        assert groups[a] == groups[b] and side[a] == side[b], r
    assert not set(groups[tr]) & set(groups[va])
    per_class = np.bincount(s.labels[va].numpy(), minlength=10) / np.bincount(s.labels.numpy())
    assert np.all(np.abs(per_class - 1 / 7) < 0.02)  # stratified: every class holds out about 1/7


@pytest.mark.realdata
def test_real_second_load_comes_from_the_cache(ahe_root, ahe_train, monkeypatch):
    monkeypatch.setattr(dataset, "decode_many", lambda files: pytest.fail("decoded again instead of using the cache"))
    again = dataset.load_split(ahe_root, "train")
    assert torch.equal(again.labels, ahe_train.labels) and torch.equal(again.images[::97], ahe_train.images[::97])


def test_make_dataset_helper_is_learnable_by_colour(tmp_path):
    # guards the fixture itself: classes differ in mean colour, so tiny models must learn them
    root = make_dataset(tmp_path / "d", per_class=4)
    s = dataset.load_split(root, "train")
    means = torch.stack([s.images[s.labels == k].float().mean((0, 2, 3)) for k in range(3)])
    assert torch.cdist(means, means).fill_diagonal_(1e9).min() > 5


@pytest.mark.parametrize("mode", ["I;16", "RGB", "P", "1"])
def test_a_large_image_is_reduced_before_conversion_and_still_decodes_right(tmp_path, mode):
    """Large non-JPEG images are box-reduced as decoded (memory: bench/decode_memory.py); the 64 px result is the
    one the full-size conversion gives, and an EXIF rotation still puts the image upright."""
    y, x = np.mgrid[0:1200, 0:1800]
    if mode == "I;16":
        im = Image.fromarray((x * 30 + y * 5).astype(np.uint16))
    else:
        im = Image.fromarray(np.stack([x * 255 // 1800, y * 255 // 1200, (x + y) % 256 // 2], -1).astype(np.uint8))
        im = im.convert(mode) if mode != "RGB" else im
    im.save(tmp_path / "big.png")
    assert Image.open(tmp_path / "big.png").mode == mode
    full = np.asarray(images.to_rgb(im).resize((64, 64), Image.Resampling.BICUBIC, reducing_gap=2.0), dtype=float)
    got = images.decode(tmp_path / "big.png").transpose(1, 2, 0).astype(float)
    assert np.abs(got - full).mean() < 4.0  # the same picture, up to resampling
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: rotate 270 to show upright
    im.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.png", exif=exif.tobytes())
    turned = images.decode(tmp_path / "turned.png").transpose(1, 2, 0).astype(float)
    assert np.abs(turned - got).mean() < 4.0


def test_conversion_sees_the_reduced_image_never_the_full_one(tmp_path, monkeypatch):
    Image.fromarray(np.full((3000, 4000), 40000, np.uint16)).save(tmp_path / "big16.png")
    seen, real = [], images.to_rgb
    monkeypatch.setattr(images, "to_rgb", lambda im: seen.append(im.size) or real(im))
    x = images.decode(tmp_path / "big16.png")
    at_least = 2 * images.IMAGE_SIZE  # every decode reads at twice the model's size before the resize
    assert seen and max(seen[0]) <= 4 * at_least * 4 / 3 and min(seen[0]) >= 2 * at_least  # 3000 px / 11: 363 x 272
    assert abs(x.mean() - 40000 / 65535 * 255) <= 1
