"""``napari-derun fuse`` as a subprocess on generated TIFF/PNG files."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import napari_derun as nd
from helpers import smooth_pair
from napari_derun.io.images import read_provenance

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def cli(*args, cwd=None):
    """The real command line, in a separate process."""
    return subprocess.run([sys.executable, "-m", "napari_derun.cli", "fuse", *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def cli_inproc(capsys, *args):
    """The same entry point in this process (faster); returns (exit code, stdout, stderr)."""
    from napari_derun.cli import main

    rc = main(["fuse", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _stack_u16(n=3, h=36, w=32):
    planes = [smooth_pair(h, w, seed=s) for s in range(n)]
    a = np.stack([p[0] * (0.7 + 0.1 * i) for i, p in enumerate(planes)])
    b = np.stack([p[1] for p in planes])
    return (200 + a * 30000).astype(np.uint16), (100 + b * 8000).astype(np.uint16)


@pytest.mark.slow  # subprocesses / real pairs: the slow suite (the default one stays under 2 minutes)
def test_imagej_stack_keeps_axes_resolution_and_metadata(tmp_path, capsys):
    a, b = _stack_u16()
    tifffile.imwrite(tmp_path / "A.tif", a, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 1.5})
    tifffile.imwrite(tmp_path / "B.tif", b, imagej=True, resolution=(2.0, 2.0), metadata={"axes": "ZYX"})
    out = tmp_path / "out.tif"
    r = cli(tmp_path / "A.tif", tmp_path / "B.tif", "-o", out, "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    with tifffile.TiffFile(out) as t:
        assert t.is_imagej and t.series[0].axes == "ZYX"
        f = t.series[0].asarray()
        assert t.imagej_metadata["unit"] == "um" and t.imagej_metadata["spacing"] == 1.5
        xres = t.pages[0].tags["XResolution"].value
        assert xres[0] / xres[1] == pytest.approx(2.0)
    assert f.dtype == np.float32 and f.shape == a.shape
    np.testing.assert_allclose(f, nd.fuse(a, b, device="cpu"), atol=1e-6)
    prov = read_provenance(out)
    # the default --model auto: the model it chose, and why, are in the provenance
    assert prov["model"] == prov["auto"]["model"] and prov["auto"]["reason"].startswith(f"auto: {prov['model']}")
    assert prov["parameters"]["axes"] == "ZYX"
    assert prov["inputs"]["a"].endswith("A.tif") and len(prov["parameters"]["ranges"]) == 2
    # --dtype input: uint16 scaled to the full range
    out16 = tmp_path / "out16.tif"
    rc, _, err = cli_inproc(capsys, tmp_path / "A.tif", tmp_path / "B.tif", "-o", out16, "--dtype", "input", "-q")
    assert rc == 0, err
    g = tifffile.imread(out16)
    assert g.dtype == np.uint16
    np.testing.assert_allclose(g / 65535.0, f, atol=1.0 / 65535 + 1e-6)


def test_overwrite_protection(tmp_path, capsys):
    a, b = smooth_pair(30, 30)
    tifffile.imwrite(tmp_path / "A.tif", a)
    tifffile.imwrite(tmp_path / "B.tif", b)
    out = tmp_path / "o.tif"
    out.write_bytes(b"precious")
    rc, _, err = cli_inproc(capsys, tmp_path / "A.tif", tmp_path / "B.tif", "-o", out, "-q")
    assert rc != 0 and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    rc, _, err = cli_inproc(capsys, tmp_path / "A.tif", tmp_path / "B.tif", "-o", out, "-q", "--overwrite")
    assert rc == 0, err
    np.testing.assert_allclose(tifffile.imread(out), nd.fuse(a, b), atol=1e-6)


@pytest.mark.slow  # subprocesses / real pairs: the slow suite (the default one stays under 2 minutes)
def test_plain_tiff_axes_option_and_png_rgb(tmp_path, capsys):
    from PIL import Image

    a, b = _stack_u16(2, 30, 28)
    tifffile.imwrite(tmp_path / "A.tif", a)  # plain TIFF: --axes names the stack axis
    tifffile.imwrite(tmp_path / "B.tif", b)
    r = cli(tmp_path / "A.tif", tmp_path / "B.tif", "-o", tmp_path / "o.tif", "--axes", "TYX", "-q")
    assert r.returncode == 0, r.stderr
    with tifffile.TiffFile(tmp_path / "o.tif") as t:
        assert t.series[0].axes in ("TYX", "QYX", "IYX") and t.series[0].shape == a.shape
        assert read_provenance(tmp_path / "o.tif")["parameters"]["axes"] == "TYX"
    # PNG inputs: grey structural + RGB salient -> RGB output
    ga, gb = smooth_pair(40, 36)
    rgb = (np.stack([gb, gb * 0.4, 0.2 + 0 * gb], -1) * 255).astype(np.uint8)
    Image.fromarray((ga * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "b.png")
    rc, _, err = cli_inproc(capsys, tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "rgb.tif",
                            "--dtype", "input", "-q")
    assert rc == 0, err
    f = tifffile.imread(tmp_path / "rgb.tif")
    assert f.shape == (40, 36, 3) and f.dtype == np.uint8
    ref = nd.fuse((ga * 255).astype(np.uint8), rgb)
    assert np.abs(f / 255.0 - ref).max() <= 0.5 / 255 + 1e-6


@pytest.mark.slow  # subprocesses / real pairs: the slow suite (the default one stays under 2 minutes)
def test_folder_batch_with_corrupt_file(tmp_path, capsys):
    src = tmp_path / "pairs"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    pairs = {}
    for i, name in enumerate(["one", "two", "three"]):
        a, b = smooth_pair(28, 26, seed=i)
        a8, b8 = (a * 255).astype(np.uint8), (b * 255).astype(np.uint8)
        tifffile.imwrite(src / "a" / f"{name}.tif", a8)
        tifffile.imwrite(src / "b" / f"{name}.tif", b8)
        pairs[name] = (a8, b8)
    (src / "b" / "two.tif").write_bytes(b"II*\x00garbage that is not a tiff")
    out = tmp_path / "out"
    r = cli(src, "-o", out, "-q")
    assert r.returncode != 0
    assert "two" in r.stderr and "fused 2 of 3" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["one.tif", "three.tif"]
    for name in ("one", "three"):
        np.testing.assert_allclose(tifffile.imread(out / f"{name}.tif"), nd.fuse(*pairs[name]), atol=1e-6)
    # a re-run does not overwrite the finished outputs without --overwrite
    before = (out / "one.tif").read_bytes()
    rc, _, err = cli_inproc(capsys, src, "-o", out, "-q")
    assert rc != 0 and "--overwrite" in err
    assert (out / "one.tif").read_bytes() == before


def test_tiled_cli_matches_api(tmp_path, capsys):
    a, b = smooth_pair(150, 130, seed=4)
    tifffile.imwrite(tmp_path / "A.tif", a)
    tifffile.imwrite(tmp_path / "B.tif", b)
    rc, _, err = cli_inproc(capsys, tmp_path / "A.tif", tmp_path / "B.tif", "-o", tmp_path / "o.tif",
                            "--tile", "96", "--overlap", "32", "-q")
    assert rc == 0, err
    np.testing.assert_allclose(tifffile.imread(tmp_path / "o.tif"), nd.fuse(a, b, tile=96, overlap=32), atol=1e-6)
    assert read_provenance(tmp_path / "o.tif")["parameters"]["tile"] == 96


@pytest.mark.parametrize("n", [3, 4])
def test_small_zstack_written_plainly_is_read_as_planes(tmp_path, capsys, n):
    """tifffile.imwrite(path, zstack) stores 3 or 4 planes as axes SYX with RGB photometric: they are
    planes, not colour channels, and the output keeps them (the user is told, and --axes overrides)."""
    planes = [smooth_pair(36, 32, seed=s) for s in range(n)]
    a = np.stack([(p[0] * 60000).astype(np.uint16) for p in planes])
    b = np.stack([(p[1] * 60000).astype(np.uint16) for p in planes])
    tifffile.imwrite(tmp_path / "A.tif", a)
    tifffile.imwrite(tmp_path / "B.tif", b)
    rc, out, err = cli_inproc(capsys, tmp_path / "A.tif", tmp_path / "B.tif", "-o", tmp_path / "o.tif", "-q")
    assert rc == 0, err
    assert "read as Z planes" in err and "--axes CYX" in err
    f = tifffile.imread(tmp_path / "o.tif")
    assert f.shape == (n, 36, 32)
    np.testing.assert_allclose(f.astype(np.float32), nd.fuse(a, b, axes="ZYX", device="cpu").astype(np.float32),
                               atol=1e-6 if f.dtype.kind == "f" else 1)


def test_output_format_follows_the_extension(tmp_path, capsys):
    from PIL import Image

    a, b = smooth_pair(36, 32)
    tifffile.imwrite(tmp_path / "A.tif", (a * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "B.tif", (b * 255).astype(np.uint8))
    rc, _, err = cli_inproc(capsys, tmp_path / "A.tif", tmp_path / "B.tif", "-o", tmp_path / "o.png", "-q")
    assert rc == 0, err
    with Image.open(tmp_path / "o.png") as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (32, 36)
        png = np.asarray(im)
    ref = nd.fuse((a * 255).astype(np.uint8), (b * 255).astype(np.uint8), device="cpu")
    assert np.abs(png.astype(int) - np.rint(ref * 255).astype(int)).max() <= 1
    rc, _, err = cli_inproc(capsys, tmp_path / "A.tif", tmp_path / "B.tif", "-o", tmp_path / "o.bmp", "-q")
    assert rc == 1 and "use .tif" in err and not (tmp_path / "o.bmp").exists()


def test_ome_pixel_sizes_units_and_channel_names_round_trip(tmp_path, capsys):
    planes = [smooth_pair(36, 32, seed=s) for s in range(3)]
    a = np.stack([(p[0] * 60000).astype(np.uint16) for p in planes])
    b = np.stack([(p[1] * 60000).astype(np.uint16) for p in planes])
    md = {"axes": "ZYX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65, "PhysicalSizeXUnit": "µm",
          "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": 2.0, "Channel": {"Name": ["PC"]}}
    tifffile.imwrite(tmp_path / "A.ome.tif", a, ome=True, metadata=md)
    tifffile.imwrite(tmp_path / "B.ome.tif", b, ome=True, metadata={**md, "Channel": {"Name": ["GFP"]}})
    out = tmp_path / "F.ome.tif"
    rc, _, err = cli_inproc(capsys, tmp_path / "A.ome.tif", tmp_path / "B.ome.tif", "-o", out, "-q")
    assert rc == 0, err
    with tifffile.TiffFile(out) as t:
        assert t.is_ome and t.series[0].axes == "ZYX"
        px = tifffile.xml2dict(t.ome_metadata)["OME"]["Image"]["Pixels"]
    assert px["PhysicalSizeX"] == 0.65 and px["PhysicalSizeY"] == 0.65 and px["PhysicalSizeZ"] == 2.0
    assert px["PhysicalSizeXUnit"] == "µm" and px["Channel"]["Name"] == "PC"
    assert read_provenance(out)["model"] == read_provenance(out)["auto"]["model"]


def test_auto_picks_the_shipped_model_of_the_task_and_says_why(tmp_path, capsys):
    """The default model is chosen from the content, not admm: GFP/PC files with camera names give gfp_pc,
    --verbose says why, and swapped files are reported (issue 19, items 1 and 2)."""
    from PIL import Image

    from napari_derun.data import sample_data

    pc, gfp = sample_data.gfp_pc(size=96, seed=3)
    Image.fromarray(np.repeat(pc[..., None], 3, -1)).save(tmp_path / "03-A03.png")  # PC exported as RGB
    Image.fromarray(gfp).save(tmp_path / "03-A03 [1].png")
    rc, out, err = cli_inproc(capsys, tmp_path / "03-A03.png", tmp_path / "03-A03 [1].png", "-o", tmp_path / "f.tif",
                              "--device", "cpu", "-q", "--verbose")
    assert rc == 0, err
    assert "model gfp_pc" in out and "auto: gfp_pc, because" in err and "fluorescence" in err
    prov = read_provenance(tmp_path / "f.tif")
    assert prov["model"] == "gfp_pc" and prov["auto"]["task"] == "gfp_pc" and not prov["auto"]["looks_swapped"]
    rc, out, err = cli_inproc(capsys, tmp_path / "03-A03 [1].png", tmp_path / "03-A03.png", "-o", tmp_path / "g.tif",
                              "--device", "cpu", "-q")
    assert rc == 0 and "look the wrong way round" in err
