"""Tests of napari_derun.io.planes: reading images, pairing folders, grey conversion."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_derun.io.planes import find_pairs, read_image, to_gray01

DATA = Path(__file__).parents[2] / "shared" / "data"


def _rng():
    return np.random.default_rng(123)


# ----------------------------------------------------------------------------
# read_image round trips
# ----------------------------------------------------------------------------
def test_png_round_trips(tmp_path):
    rng = _rng()
    g8 = rng.integers(0, 256, (13, 17), dtype=np.uint8)
    g16 = rng.integers(0, 65536, (13, 17), dtype=np.uint16)
    rgb = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    Image.fromarray(g8).save(tmp_path / "g8.png")
    Image.fromarray(g16).save(tmp_path / "g16.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.PNG")
    for name, ref in (("g8.png", g8), ("g16.png", g16), ("rgb.PNG", rgb)):
        out = read_image(tmp_path / name)
        assert out.dtype == ref.dtype and out.shape == ref.shape, name
        np.testing.assert_array_equal(out, ref)


def test_png_alpha_palette_and_grey_rgb(tmp_path):
    rng = _rng()
    rgba = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (9, 11, 3)
    np.testing.assert_array_equal(out, rgba[..., :3])

    la = np.stack([rgba[..., 0], rgba[..., 3]], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), rgba[..., 0])

    idx = rng.integers(0, 4, (9, 11), dtype=np.uint8)
    pal = Image.fromarray(idx, "P")
    colours = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]
    pal.putpalette(colours + [0] * (768 - len(colours)))
    pal.save(tmp_path / "pal.png")
    out = read_image(tmp_path / "pal.png")
    assert out.shape == (9, 11, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.array(colours).reshape(4, 3)[idx])

    grey3 = np.repeat(rgba[..., :1], 3, axis=-1)  # identical channels stay 3-channel
    Image.fromarray(grey3).save(tmp_path / "grey3.png")
    assert read_image(tmp_path / "grey3.png").shape == (9, 11, 3)


def test_jpeg_reads_approximately(tmp_path):
    x = np.tile(np.linspace(0, 255, 32), (24, 1)).astype(np.uint8)
    Image.fromarray(x).save(tmp_path / "ramp.jpeg", quality=95)
    Image.fromarray(np.stack([x] * 3, -1)).save(tmp_path / "ramp_rgb.JPG", quality=95)
    g = read_image(tmp_path / "ramp.jpeg")
    c = read_image(tmp_path / "ramp_rgb.JPG")
    assert g.shape == (24, 32) and g.dtype == np.uint8
    assert c.shape == (24, 32, 3) and c.dtype == np.uint8
    assert np.abs(g.astype(int) - x).mean() < 3


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(15 * 7, dtype=np.uint8).reshape(15, 7),
        (np.arange(15 * 7, dtype=np.uint16) * 600).reshape(15, 7),
        np.linspace(0, 1, 15 * 7, dtype=np.float32).reshape(15, 7),
        np.arange(15 * 7 * 3, dtype=np.uint16).reshape(15, 7, 3) * 200,
    ],
    ids=["u8", "u16", "f32", "rgb16"],
)
def test_tif_round_trips(tmp_path, arr):
    tifffile.imwrite(tmp_path / "x.tif", arr)
    tifffile.imwrite(tmp_path / "x2.TIFF", arr)
    for name in ("x.tif", "x2.TIFF"):
        out = read_image(tmp_path / name)
        assert out.dtype == arr.dtype and out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)


def test_tif_channel_first_and_errors(tmp_path):
    rgb = np.arange(3 * 10 * 12, dtype=np.uint8).reshape(3, 10, 12)
    tifffile.imwrite(tmp_path / "cf.tif", rgb, photometric="minisblack", planarconfig="separate")
    out = read_image(tmp_path / "cf.tif")
    assert out.shape == (10, 12, 3)
    np.testing.assert_array_equal(out, np.moveaxis(rgb, 0, -1))

    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 10, 12), np.uint8))
    with pytest.raises(ValueError, match="single 2-D"):
        read_image(tmp_path / "stack.tif")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png"):
        read_image(tmp_path / "junk.png")


# ----------------------------------------------------------------------------
# find_pairs
# ----------------------------------------------------------------------------
def _touch_png(path: Path, value: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(path, format="PNG")


def test_find_pairs_pairs_and_reports(tmp_path):
    root = tmp_path / "task"
    _touch_png(root / "a" / "001.png")
    _touch_png(root / "b" / "001.png")
    _touch_png(root / "a" / "002.png")
    _touch_png(root / "b" / "002.JPG")  # different extension and case: still a pair
    _touch_png(root / "a" / "003.tif")
    _touch_png(root / "b" / "003.tiff")
    _touch_png(root / "a" / "only_a.png")  # unpaired
    _touch_png(root / "b" / "only_b.jpeg")  # unpaired
    _touch_png(root / "a" / "Case.png")
    _touch_png(root / "b" / "case.png")  # differs in letter case
    (root / "a" / "notes.txt").write_text("x")
    (root / "b" / ".DS_Store").write_text("x")  # hidden: skipped silently
    (root / "b" / "sub").mkdir()

    pairs, problems = find_pairs(root)
    assert [p[0] for p in pairs] == ["001", "002", "003"]
    for name, pa, pb in pairs:
        assert pa.parent.name == "a" and pb.parent.name == "b"
        assert pa.stem == pb.stem == name and pa.is_file() and pb.is_file()
    text = "\n".join(problems)
    assert "a/only_a.png: no partner in b/" in text
    assert "b/only_b.jpeg: no partner in a/" in text
    assert "a/Case.png" in text and "letter case" in text
    assert "notes.txt" in text
    assert "sub" in text
    assert ".DS_Store" not in text
    assert len(problems) == 6


def test_find_pairs_ambiguous_and_missing(tmp_path):
    root = tmp_path / "t"
    _touch_png(root / "a" / "x.png")
    _touch_png(root / "a" / "x.jpg")
    _touch_png(root / "b" / "x.png")
    pairs, problems = find_pairs(root)
    assert pairs == []
    assert any("several files" in p and "'x'" in p for p in problems)
    assert any("b/x.png: no partner" in p for p in problems)

    only_a = tmp_path / "u"
    _touch_png(only_a / "a" / "y.png")
    pairs, problems = find_pairs(only_a)
    assert pairs == [] and any("missing folder b/" in p for p in problems)

    pairs, problems = find_pairs(tmp_path / "does_not_exist")
    assert pairs == [] and problems and "not a folder" in problems[0]


# ----------------------------------------------------------------------------
# to_gray01
# ----------------------------------------------------------------------------
def test_to_gray01_scaling_and_luminance():
    u8 = np.array([[0, 51, 255]], np.uint8)
    np.testing.assert_allclose(to_gray01(u8), [[0, 0.2, 1]], atol=1e-7)
    u16 = np.array([[0, 65535]], np.uint16)
    np.testing.assert_allclose(to_gray01(u16), [[0, 1]], atol=1e-7)
    f = np.array([[-0.5, 0.25, 1.5]])
    out = to_gray01(f)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0.25, 1]], atol=1e-7)
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0, 0] = rgb[0, 1, 1] = rgb[0, 2, 2] = 255
    np.testing.assert_allclose(to_gray01(rgb), [[0.299, 0.587, 0.114]], atol=1e-6)
    grey3 = np.full((2, 2, 3), 100, np.uint8)
    np.testing.assert_allclose(to_gray01(grey3), 100 / 255, atol=1e-6)
    rgba = np.concatenate([grey3, np.zeros((2, 2, 1), np.uint8)], -1)
    np.testing.assert_allclose(to_gray01(rgba), 100 / 255, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        to_gray01(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        to_gray01(np.array([[np.nan]]))


@pytest.mark.skipif(not DATA.is_dir(), reason="shared data not available")
def test_real_data_folders_pair_and_read():
    tasks = sorted(p for p in DATA.iterdir() if (p / "a").is_dir())
    assert tasks
    for task in tasks:
        pairs, problems = find_pairs(task)
        assert pairs, f"{task.name}: no pairs ({problems})"
        _, pa, pb = pairs[0]
        a, b = read_image(pa), read_image(pb)
        assert a.shape[:2] == b.shape[:2], task.name
        ga, gb = to_gray01(a), to_gray01(b)
        assert ga.shape == a.shape[:2] and 0 <= ga.min() <= ga.max() <= 1
        assert gb.dtype == np.float32
