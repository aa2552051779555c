"""Reliability and security, round 2 (issue 22): --overwrite never destroys user data, crafted packages,
images and configs are refused fast, nothing hangs, and every failure is a one-line message (exit 1).

Hostile files are crafted here (tests/hostile.py): declared sizes, never real large data."""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

import hostile as H
from helpers import smooth_pair
from napari_derun.cli import main

FAST = ["--model", "admm", "--device", "cpu", "-q"]


def _pair_files(tmp_path, dtype=np.uint8):
    a, b = smooth_pair(40, 36)
    scale = np.iinfo(dtype).max if np.dtype(dtype).kind in "iu" else 1.0
    tifffile.imwrite(tmp_path / "A.tif", (a * scale).astype(dtype))
    tifffile.imwrite(tmp_path / "B.tif", (b * scale).astype(dtype))
    return tmp_path / "A.tif", tmp_path / "B.tif"


def _one_line_error(capsys, *parts):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for p in parts:
        assert p in err, err
    return err


class _peak:
    """Wall time and peak RSS growth (MiB, from /proc/self VmHWM after resetting it) of a block."""

    def __enter__(self):
        self.hwm = Path("/proc/self/clear_refs").exists() and os.access("/proc/self/clear_refs", os.W_OK)
        if self.hwm:
            Path("/proc/self/clear_refs").write_text("5")
            self.rss0 = _status("VmRSS")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.mib = (_status("VmHWM") - self.rss0) / 1024 if self.hwm else 0.0
        return False


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------ 1, 7: export --overwrite
def test_export_overwrite_into_a_folder_keeps_its_other_files(tmp_path, monkeypatch):
    from napari_derun.engine.bmz_export import install_package

    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "precious.txt").write_text("x")
    (proj / "rdf.yaml").write_text("old")

    def write(target):  # what bioimageio.spec's save_bioimageio_package_as_folder does
        target.mkdir()
        (target / "rdf.yaml").write_text("new")
        (target / "weights.pt").write_bytes(b"w")

    install_package(proj, write, overwrite=True)
    assert (proj / "data" / "precious.txt").read_text() == "x"
    assert (proj / "rdf.yaml").read_text() == "new" and (proj / "weights.pt").read_bytes() == b"w"
    monkeypatch.chdir(proj)  # -o . : the working folder keeps everything else
    install_package(Path("."), write, overwrite=True)
    assert sorted(p.name for p in proj.iterdir()) == ["data", "rdf.yaml", "weights.pt"]


def test_export_zip_is_replaced_atomically(tmp_path):
    from napari_derun.engine.bmz_export import install_package

    pkg = tmp_path / "m.zip"
    pkg.write_bytes(b"old package")

    def full_disk(target):
        target.write_bytes(b"half a pack")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="disk is full"):
        install_package(pkg, full_disk, overwrite=True)
    assert pkg.read_bytes() == b"old package" and sorted(p.name for p in tmp_path.iterdir()) == ["m.zip"]
    install_package(pkg, lambda t: t.write_bytes(b"new"), overwrite=True)
    assert pkg.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["m.zip"]
    with pytest.raises(FileExistsError):  # without overwrite: never replaced, even if it appears meanwhile
        install_package(pkg, lambda t: t.write_bytes(b"other"), overwrite=False)
    assert pkg.read_bytes() == b"new"


def test_export_refuses_before_any_work(tmp_path, capsys):
    (tmp_path / "dir.zip").mkdir()
    assert main(["export", "gfp_pc", "-o", str(tmp_path / "dir.zip"), "--overwrite"]) == 1
    _one_line_error(capsys, "is a folder")
    (tmp_path / "afile").write_text("mine")
    assert main(["export", "gfp_pc", "-o", str(tmp_path / "afile"), "--overwrite"]) == 1
    _one_line_error(capsys, "is a file")
    assert (tmp_path / "afile").read_text() == "mine"
    own = H.package(tmp_path / "own.zip", H.GOOD_RDF, H.real_checkpoint_bytes())
    before = own.read_bytes()
    assert main(["export", str(own), "-o", str(own), "--overwrite"]) == 1
    _one_line_error(capsys, "never writes onto its inputs")
    assert own.read_bytes() == before


@pytest.mark.slow  # ~20 s: a real export (TorchScript trace, bioimageio.spec validation)
def test_export_overwrite_cli_end_to_end(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "precious.txt").write_text("x")
    assert main(["export", "gfp_pc", "-o", str(proj), "--overwrite"]) == 0
    assert (proj / "data" / "precious.txt").read_text() == "x" and (proj / "rdf.yaml").is_file()


# ------------------------------------------------------------------ 2, 11: fuse never writes onto inputs
def test_fuse_overwrite_never_replaces_an_input(tmp_path, capsys):
    a, b = _pair_files(tmp_path)
    before = a.read_bytes()
    os.symlink(a, tmp_path / "link.tif")
    os.link(a, tmp_path / "hard.tif")
    for out in (a, tmp_path / "link.tif", tmp_path / "hard.tif", tmp_path / "." / "A.tif"):
        assert main(["fuse", str(a), str(b), "-o", str(out), "--overwrite", *FAST]) == 1
        _one_line_error(capsys, "never writes onto its inputs")
    assert a.read_bytes() == before
    # an existing output: kept, and the message does not push --overwrite as the only way out
    (tmp_path / "old.tif").write_bytes(b"old")
    assert main(["fuse", str(a), str(b), "-o", str(tmp_path / "old.tif"), *FAST]) == 1
    _one_line_error(capsys, "left as it is", "another output name")


def test_fuse_folder_never_writes_into_its_input_folders(tmp_path, capsys):
    d = tmp_path / "D"
    for sub in ("a", "b"):
        (d / sub).mkdir(parents=True)
    a, b = smooth_pair(40, 36)
    tifffile.imwrite(d / "a" / "p.tif", (a * 255).astype(np.uint8))
    tifffile.imwrite(d / "b" / "p.tif", (b * 255).astype(np.uint8))
    before = {p: p.read_bytes() for p in d.rglob("*.tif")}
    for out in (d / "a", d / "b", d / "a" / "sub"):
        assert main(["fuse", str(d), "-o", str(out), "--overwrite", *FAST]) == 1
        _one_line_error(capsys, "input folder")
    assert {p: p.read_bytes() for p in d.rglob("*.tif")} == before
    assert main(["fuse", str(d), "-o", str(d / "out"), *FAST]) == 0  # beside them is fine


def test_concurrent_writer_of_the_same_output_is_not_clobbered(tmp_path):
    from napari_derun.file_fusion import fuse_files
    import napari_derun as nd

    a, b = _pair_files(tmp_path)
    out = tmp_path / "same.tif"

    def other_process_finishes_first(done, total):
        if not out.exists():
            out.write_bytes(b"the other result")

    opts = {"tile": 1024, "dtype": "float32", "overwrite": False}
    with pytest.raises(FileExistsError, match="appeared while"):
        fuse_files(a, b, out, nd.load_model("admm", "cpu"), opts, callback=other_process_finishes_first)
    assert out.read_bytes() == b"the other result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.tif", "B.tif", "same.tif"]  # no temporary left


def test_disk_full_message_and_nothing_left(tmp_path):
    from napari_derun._files import atomic_writer

    target = tmp_path / "x.tif"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="disk is full.*nothing was replaced"):
        with atomic_writer(target) as fh:
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]


# ------------------------------------------------------------------ 3, 4, 10: crafted bioimage.io packages
CRAFTED = {
    "zip bomb (3 GiB checkpoint member)": (H.zip_bomb, "would unpack to 3,221,225,472 bytes"),
    "rdf.yaml of 50 MB comments": (lambda p: H.rdf_bomb(p, 50), "allowed for the description"),
    "YAML alias bomb": (lambda p: H.package(p, H.yaml_alias_bomb(), b"x"), "billion laughs"),
    "recursive YAML alias": (lambda p: H.package(p, "a: &a [*a]\nname: x\n", b"x"), "recursive"),
    "!!python tag": (lambda p: H.package(p, "name: !!python/object/apply:os.system ['echo pwned']\n", b"x"),
                     "not valid YAML"),
    "YAML syntax error": (lambda p: H.package(p, "name: [unclosed\n", b"x"), "not valid YAML"),
    "bad UTF-8": (lambda p: H.package(p, b"name: \xff\xfe\n", b"x"), "not UTF-8"),
    "rdf is a list": (lambda p: H.package(p, "- a\n- b\n", b"x"), "holds a list"),
    "rdf is a scalar": (lambda p: H.package(p, "just text\n", b"x"), "holds a str"),
    "symlink rdf.yaml": (H.symlink_member, "symbolic link"),
    "symlink checkpoint": (lambda p: H.symlink_member(p, "napari_derun.safetensors"), "symbolic link"),
    "bad CRC": (H.bad_crc, "Bad CRC"),
    "encrypted member": (H.encrypted, "encrypted"),
    "unknown compression": (H.unknown_compression, "unsupported zip compression"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_packages_are_refused_fast(tmp_path, case):
    import napari_derun as nd

    make, message = CRAFTED[case]
    pkg = make(tmp_path / "pkg.zip")
    with _peak() as m:
        with pytest.raises(ValueError, match=message) as e:
            nd.load_model(str(pkg), "cpu")
    assert "\n" not in str(e.value) and m.seconds < 5 and m.mib < 500, (m.seconds, m.mib)


def test_crafted_package_via_cli_is_one_line(tmp_path, capsys):
    a, b = _pair_files(tmp_path)
    pkg = H.zip_bomb(tmp_path / "bomb.zip")
    assert main(["fuse", str(a), str(b), "-o", str(tmp_path / "o.tif"), "--model", str(pkg), "-q"]) == 1
    _one_line_error(capsys, "refused", "NAPARI_DERUN_MAX_CHECKPOINT_MB")
    assert main(["export", str(pkg), "-o", str(tmp_path / "x.zip")]) == 1
    _one_line_error(capsys, "refused")


def test_checkpoint_limit_override_and_short_names(tmp_path, monkeypatch):
    import napari_derun as nd

    monkeypatch.setenv("NAPARI_DERUN_MAX_CHECKPOINT_MB", "0.001")
    ok = H.package(tmp_path / "ok.zip", "name: " + "n" * 500_000 + "\n", H.real_checkpoint_bytes())
    with pytest.raises(ValueError, match="allowed for the checkpoint"):
        nd.load_model(str(ok), "cpu")
    monkeypatch.delenv("NAPARI_DERUN_MAX_CHECKPOINT_MB")
    f = nd.load_model(str(ok), "cpu")
    assert len(f.info["bioimageio"]["name"]) <= 201 and len(json.dumps(f.info, default=str)) < 100_000


def test_folder_package_records_the_weights_sha256(tmp_path):
    import napari_derun as nd
    from napari_derun.io.checkpoint import file_sha256

    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "rdf.yaml").write_text(H.GOOD_RDF)
    (folder / "napari_derun.safetensors").write_bytes(H.real_checkpoint_bytes())
    want = file_sha256(folder / "napari_derun.safetensors")
    for where in (folder, folder / "rdf.yaml"):
        assert nd.load_model(str(where), "cpu").provenance()["weights_sha256"] == want
    os.mkfifo(tmp_path / "fifo")  # a FIFO rdf.yaml never blocks
    (folder / "rdf.yaml").unlink()
    os.symlink(tmp_path / "fifo", folder / "rdf.yaml")
    with pytest.raises(ValueError):
        nd.load_model(str(folder), "cpu")


# ------------------------------------------------------------------ 8, 10, 11: checkpoints
@pytest.mark.parametrize("meta,message", [
    (json.dumps([1, 2, 3]), "a JSON list"),
    (json.dumps("napari-derun"), "a JSON str"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_checkpoint_metadata_that_is_not_an_object(tmp_path, capsys, meta, message):
    from napari_derun.io.checkpoint import CheckpointError, load_checkpoint

    p = H.fake_checkpoint(tmp_path / "m.safetensors", meta)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(p)
    a, b = _pair_files(tmp_path)
    assert main(["fuse", str(a), str(b), "-o", str(tmp_path / "o.tif"), "--model", str(p), "-q"]) == 1
    _one_line_error(capsys, message)


def test_non_float_weights_are_refused_not_cast(tmp_path):
    import napari_derun as nd
    from napari_derun.io.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="not floating point.*U8"):
        nd.load_model(str(H.uint8_checkpoint(tmp_path / "u8.safetensors")), "cpu")
    for name in ("gfp_pc", "medical", "ivf"):  # the shipped weights still load
        assert nd.load_model(name, "cpu").kind == "derun"


def test_a_huge_model_name_is_not_copied_into_outputs(tmp_path):
    from napari_derun.io.checkpoint import save_checkpoint
    from napari_derun.io.images import read_provenance
    from napari_derun.core.model import DeRUN

    ck = save_checkpoint(tmp_path / "m.safetensors", DeRUN.from_hifm(), {"name": "n" * 10_000_000})
    a, b = _pair_files(tmp_path)
    out = tmp_path / "o.tif"
    assert main(["fuse", str(a), str(b), "-o", str(out), "--model", str(ck), "--device", "cpu", "-q"]) == 0
    assert len(read_provenance(out)["model"]) <= 201 and out.stat().st_size < 100_000


# ------------------------------------------------------------------ 5, 10: images
def test_huge_declared_images_are_refused_before_decoding(tmp_path, capsys, monkeypatch):
    a, b = _pair_files(tmp_path)
    out = str(tmp_path / "o.tif")
    header = H.tiff_header(tmp_path / "huge.tif")  # 200 bytes declaring 100000 × 100000
    monkeypatch.setattr("napari_derun.data.limits.available_memory", lambda: 64 << 30)
    with _peak() as m:
        assert main(["fuse", str(header), str(b), "-o", out, *FAST]) == 1
    _one_line_error(capsys, "100000 × 100000", "decompression bomb", "refused before decoding", "--max-image-mb")
    assert m.seconds < 5 and m.mib < 500
    # a real tiled-zlib 12000² TIFF of a few hundred kB: a bomb without a limit, then too large for a set limit
    big = H.tiled_zlib_tiff(tmp_path / "big.tif", side=12000)
    assert main(["fuse", str(big), str(b), "-o", out, *FAST]) == 1
    _one_line_error(capsys, "12000 × 12000", "times its size")
    assert main(["fuse", str(big), str(b), "-o", out, "--max-image-mb", "100", *FAST]) == 1
    _one_line_error(capsys, "--max-image-mb 100", "refused before decoding")
    monkeypatch.setenv("NAPARI_DERUN_MAX_IMAGE_MB", "50")
    assert main(["fuse", str(H.png_header(tmp_path / "p.png", 12000, 12000)), str(b), "-o", out, *FAST]) == 1
    _one_line_error(capsys, "NAPARI_DERUN_MAX_IMAGE_MB=50")
    monkeypatch.delenv("NAPARI_DERUN_MAX_IMAGE_MB")
    # an ordinary (incompressible) image on a machine with almost no memory free: the memory rule
    noise = np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "noise.tif", noise)
    monkeypatch.setattr("napari_derun.data.limits.available_memory", lambda: 100_000)
    assert main(["fuse", str(tmp_path / "noise.tif"), str(b), "-o", out, *FAST]) == 1
    _one_line_error(capsys, "300 × 300", "the memory available now")
    assert not Path(out).exists()


def test_pillow_decompression_bomb_is_a_message(tmp_path, capsys):
    _, b = _pair_files(tmp_path)
    png = H.png_header(tmp_path / "bomb.png", 14000, 14000)
    assert main(["fuse", str(png), str(b), "-o", str(tmp_path / "o.tif"), *FAST]) == 1
    _one_line_error(capsys, "decompression-bomb", "--max-image-mb")


def test_large_planes_are_converted_tile_by_tile():
    """Engine memory beyond the inputs: the float32 result and a few tiles, never float copies of the plane."""
    import tracemalloc

    import torch

    import napari_derun as nd
    from napari_derun.engine.registry import Fuser

    class Average(torch.nn.Module):
        n_stages = 1

        def forward(self, a, b, return_stages=False, callback=None):
            return (a + b) / 2

    fz = Fuser("average", "derun", Average(), "cpu", source="in-memory")
    rng = np.random.default_rng(0)
    # beyond the float32 result: a float32 luminance plane for colour results, and blocks of at most 16 MiB
    for shape, luma in (((1500, 1200), 0), ((1500, 1200, 3), 4)):
        a = (rng.random(shape) * 250).astype(np.uint8)
        b = (rng.random(shape[:2]) * 60000).astype(np.uint16)
        tracemalloc.start()
        try:
            f = nd.fuse(a, b, model=fz, device="cpu", tile=256, overlap=32)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        extra = peak - f.nbytes - luma * shape[0] * shape[1]
        assert f.shape == shape and extra < 16 << 20, extra / (1 << 20)


def test_complex_and_malformed_ome_tiffs(tmp_path, capsys):
    a, b = _pair_files(tmp_path)
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((40, 36), np.complex64))
    assert main(["fuse", str(tmp_path / "c.tif"), str(b), "-o", str(tmp_path / "o.tif"), *FAST]) == 1
    _one_line_error(capsys, "complex64")
    bad = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0"><Pixels DimensionOrder="XYCZT" Type="uint8" SizeX="36" SizeY="40" SizeC="1" '
           'SizeZ="1" SizeT="1"></Image></OME>')  # one mismatched tag
    tifffile.imwrite(tmp_path / "ome.tif", tifffile.imread(a), description=bad, metadata=None)
    assert main(["fuse", str(tmp_path / "ome.tif"), str(b), "-o", str(tmp_path / "o.tif"), *FAST]) == 0
    assert tifffile.imread(tmp_path / "o.tif").shape == (40, 36)


# ------------------------------------------------------------------ 8: silent wrong output
@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.int32])
def test_dtype_input_does_not_wrap(tmp_path, dtype):
    a, b = _pair_files(tmp_path, dtype)
    out = tmp_path / "o.tif"
    assert main(["fuse", str(a), str(b), "-o", str(out), "--dtype", "input", *FAST]) == 0
    f = tifffile.imread(out)
    assert f.dtype == dtype and f.min() >= 0 and f.max() > np.iinfo(dtype).max // 2


def test_nan_input_message_names_the_file(tmp_path, capsys):
    a, b = smooth_pair(40, 36)
    a[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "A.tif", a * 7)
    tifffile.imwrite(tmp_path / "B.tif", b)
    assert main(["fuse", str(tmp_path / "A.tif"), str(tmp_path / "B.tif"), "-o", str(tmp_path / "o.tif"),
                 *FAST]) == 1
    err = _one_line_error(capsys, "A.tif contains", "NaN")
    assert "ranges[" not in err


@pytest.mark.parametrize("n", ["0", "-3"])
def test_batch_size_below_one_is_refused(tmp_path, capsys, n):
    import napari_derun as nd

    a, b = _pair_files(tmp_path)
    # with --scheduler too: refused before any connection is tried
    assert main(["fuse", str(a), str(b), "-o", str(tmp_path / "o.tif"), "--batch-size", n,
                 "--scheduler", "tcp://127.0.0.1:9", *FAST]) == 1
    _one_line_error(capsys, "--batch-size must be >= 1")
    x, y = smooth_pair(32, 32)
    with pytest.raises(ValueError, match="batch_size must be"):
        nd.fuse(x, y, model="admm", device="cpu", batch_size=int(n))


# ------------------------------------------------------------------ 7, 8: training outputs
def _train_folder(tmp_path):
    from PIL import Image

    for sub in ("a", "b"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(2):
        a, b = smooth_pair(40, 40, seed=i)
        Image.fromarray((a * 255).astype(np.uint8)).save(tmp_path / "data" / "a" / f"p{i}.png")
        Image.fromarray((b * 255).astype(np.uint8)).save(tmp_path / "data" / "b" / f"p{i}.png")
    return tmp_path / "data"


def test_train_checkpoint_never_replaces_other_files(tmp_path, capsys):
    data = _train_folder(tmp_path)
    init = tmp_path / "init.safetensors"
    init.write_bytes((Path(__file__).parents[1] / "src/napari_derun/weights/gfp_pc.safetensors").read_bytes())
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, np.zeros((4, 4), np.uint8))
    before = tif.read_bytes(), init.read_bytes()
    out = str(tmp_path / "m.safetensors")
    assert main(["train", str(data), "--out", out, "--checkpoint", str(tif)]) == 1
    _one_line_error(capsys, "not a napari-derun training checkpoint", "--overwrite")
    assert main(["train", str(data), "--out", out, "--init", str(init), "--checkpoint", str(init),
                 "--overwrite"]) == 1
    _one_line_error(capsys, "never writes onto its inputs")
    assert main(["train", str(data), "--out", str(init), "--init", str(init), "--overwrite"]) == 1
    _one_line_error(capsys, "never writes onto its inputs")
    assert (tif.read_bytes(), init.read_bytes()) == before


def test_train_diverged_model_is_not_saved(tmp_path, capsys):
    data = _train_folder(tmp_path)
    out = tmp_path / "m.safetensors"
    rc = main(["train", str(data), "--out", str(out), "--lr", "1e9", "--epochs", "1", "--steps-per-epoch", "1",
               "--patch", "32", "--batch", "1", "--device", "cpu", "--no-val-metrics", "-q", "--threads", "1"])
    assert rc == 1 and not out.exists()
    assert "diverged" in capsys.readouterr().err


def test_trained_model_is_rescued_when_out_cannot_be_written(tmp_path, monkeypatch, capsys):
    from napari_derun.commands.train import save_or_rescue

    rescue = tmp_path / "tmpdir"
    rescue.mkdir()
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(rescue))
    saved = {}

    class Result:
        def save(self, path, best=True, name=None):
            if Path(path).parent == tmp_path / "full":
                raise OSError(errno.ENOSPC, "No space left on device")
            saved[str(path)] = name

    where = save_or_rescue(Result(), tmp_path / "full" / "m.safetensors", "m")
    assert where.parent == rescue and str(where) in saved
    err = capsys.readouterr().err
    assert str(where) in err and "instead" in err

    class Nowhere:
        def save(self, path, best=True, name=None):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="nor to .*--resume"):
        save_or_rescue(Nowhere(), tmp_path / "full" / "m.safetensors", "m")


def test_out_of_memory_is_a_message(tmp_path, monkeypatch, capsys):
    a, b = _pair_files(tmp_path)

    def no_memory(*args, **kwargs):
        raise np.core._exceptions._ArrayMemoryError((30000, 30000), np.dtype(np.float64))

    monkeypatch.setattr("napari_derun.file_fusion.fuse_files", no_memory)
    assert main(["fuse", str(a), str(b), "-o", str(tmp_path / "o.tif"), *FAST]) == 1
    _one_line_error(capsys, "out of memory", "--tile")
    data = _train_folder(tmp_path)

    def torch_oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr("napari_derun.training.loop.train", torch_oom)
    assert main(["train", str(data), "--out", str(tmp_path / "m.safetensors"), "-q"]) == 1
    _one_line_error(capsys, "out of memory", "--batch")


# ------------------------------------------------------------------ 6, 9: dask scheduler
def _tcp_service(answer: bytes | None):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    conns = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            if answer:
                c.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return srv, f"tcp://127.0.0.1:{srv.getsockname()[1]}"


@pytest.mark.parametrize("answer,message", [(None, "did not answer like a dask scheduler"),
                                            (b"HTTP/1.1 200 OK\r\n\r\n", "is not a dask scheduler"),
                                            (b"\xff" * 8, "is not a dask scheduler")])  # "3.07 EiB" frame
def test_scheduler_that_is_not_dask_fails_within_the_timeout(tmp_path, capsys, monkeypatch, answer, message):
    monkeypatch.setattr("napari_derun.engine.distributed.CONNECT_TIMEOUT", 1.0)
    srv, addr = _tcp_service(answer)
    a, b = _pair_files(tmp_path)
    try:
        t0 = time.perf_counter()
        assert main(["fuse", str(a), str(b), "-o", str(tmp_path / "o.tif"), "--scheduler", addr, *FAST]) == 1
        assert time.perf_counter() - t0 < 5
    finally:
        srv.close()
    _one_line_error(capsys, message)


def test_scheduler_without_workers_fails_within_the_timeout():
    import distributed

    from napari_derun.engine.distributed import connect

    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None,
                                  scheduler_kwargs={"protocol": "tcp", "host": "127.0.0.1"}) as cluster:
        t0 = time.perf_counter()
        with pytest.raises(OSError, match="has no workers"):
            connect(cluster.scheduler_address, timeout=1.0)
        assert time.perf_counter() - t0 < 5


def test_folder_paths_reach_the_workers_absolute(tmp_path, monkeypatch, capsys):
    """A worker runs in its own working folder: the folder batch sends absolute paths."""
    import dask.distributed

    d = tmp_path / "D"
    for sub in ("a", "b"):
        (d / sub).mkdir(parents=True)
    a, b = smooth_pair(40, 36)
    tifffile.imwrite(d / "a" / "p.tif", (a * 255).astype(np.uint8))
    tifffile.imwrite(d / "b" / "p.tif", (b * 255).astype(np.uint8))
    elsewhere = tmp_path / "worker_cwd"
    elsewhere.mkdir()
    seen = []

    class Done:
        def __init__(self, value):
            self.value = value

        def result(self):
            if isinstance(self.value, Exception):
                raise self.value
            return self.value

    class WorkerClient:
        def scatter(self, x, broadcast=False):
            return x

        def submit(self, fn, *args, pure=True):
            seen.extend(a for a in args if isinstance(a, str))
            here = os.getcwd()
            os.chdir(elsewhere)  # what a worker started elsewhere sees
            try:
                return Done(fn(*args))
            except Exception as e:  # noqa: BLE001
                return Done(e)
            finally:
                os.chdir(here)

        def close(self):
            pass

    monkeypatch.setattr("napari_derun.engine.distributed.connect", lambda address, timeout=None: WorkerClient())
    monkeypatch.setattr(dask.distributed, "as_completed", lambda futs: list(futs))
    monkeypatch.chdir(tmp_path)
    assert main(["fuse", "D", "-o", "out", "--scheduler", "tcp://x:1", *FAST]) == 0
    assert seen and all(Path(s).is_absolute() for s in seen)
    assert (tmp_path / "out" / "p.tif").is_file() and not (elsewhere / "out").exists()


# ------------------------------------------------------------------ 9: widget preferences
@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "nested", "huge"])
def test_widget_preferences_never_block_or_crash(tmp_path, kind):
    from napari_derun._widgets._prefs import default_model, load_prefs, prefs_path

    p = prefs_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", p)
    elif kind == "nested":
        p.write_text("[" * 20_000 + "]" * 20_000)
    else:
        p.write_text(json.dumps({"model": "x" * 200_000}))
    box = {}
    th = threading.Thread(target=lambda: box.update(prefs=load_prefs(), model=default_model(["GFP"], ["admm"])),
                          daemon=True)
    th.start()
    th.join(5)
    assert not th.is_alive() and box == {"prefs": {}, "model": "admm"}


@pytest.mark.qt
def test_fuse_widget_opens_with_a_fifo_as_its_preferences(make_napari_viewer, qtbot):
    from napari_derun._widgets import FuseWidget
    from napari_derun._widgets._prefs import prefs_path

    p = prefs_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(p)
    viewer = make_napari_viewer()
    a, b = smooth_pair(32, 32)
    viewer.add_image(a, name="phase")
    viewer.add_image(b, name="GFP")
    t0 = time.perf_counter()
    w = FuseWidget(viewer)
    assert w.model_combo.value and time.perf_counter() - t0 < 5
