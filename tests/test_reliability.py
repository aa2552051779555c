"""Regression tests for the reliability audit: files are never clobbered, checkpoints are checked
before anything is built, divergence is reported, and bad options fail before any work."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import save_file

from helpers import smooth_pair
from napari_derun.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_derun.cli import main
from napari_derun.core.model import DeRUN
from napari_derun.training.config import TrainConfig
from napari_derun.training.loop import train


def _pair_files(tmp_path):
    a, b = smooth_pair(40, 36)
    tifffile.imwrite(tmp_path / "A.tif", (a * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "B.tif", (b * 255).astype(np.uint8))
    return tmp_path / "A.tif", tmp_path / "B.tif"


def test_planted_symlink_is_not_followed(tmp_path, capsys):
    a, b = _pair_files(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out" / "fused.tif"
    out.parent.mkdir()
    os.symlink(victim, out.parent / "fused.tif.part")  # the old fixed temporary name
    assert main(["fuse", str(a), str(b), "-o", str(out), "--device", "cpu", "-q"]) == 0
    assert victim.read_text() == "precious"
    assert tifffile.imread(out).shape == (40, 36)
    # no temporary files left behind, and the file has the usual permissions
    assert sorted(p.name for p in out.parent.iterdir()) == ["fused.tif", "fused.tif.part"]
    mask = os.umask(0)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777) == (0o666 & ~mask)


def _write_fake(path, config, version=1):
    doc = {"format": "napari-derun", "format_version": version, "config": config}
    save_file({"x": torch.zeros(1)}, str(path), metadata={"napari_derun": json.dumps(doc)})


@pytest.mark.parametrize("change,message", [
    ({"n_stages": 10_000_000}, "n_stages = 10000000 is outside"),
    ({"n_knots": 10**10}, "n_knots"),
    ({"n_knots": -1}, "n_knots = -1 is outside"),
    ({"pad": -100}, "pad = -100"),
    ({"hidden": "8"}, "hidden"),
    ({"guided": "yes"}, "guided"),
    ({"bogus": 1}, "unknown keys in a DeRUN config"),
])
def test_checkpoint_config_is_bounded_before_building(tmp_path, change, message):
    cfg = {**DeRUN.from_hifm().config.to_dict(), **change}
    p = tmp_path / "bad.safetensors"
    _write_fake(p, cfg)
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(p)
    assert str(p) in str(e.value)


def test_checkpoint_header_must_match_config(tmp_path):
    p = tmp_path / "x.safetensors"
    _write_fake(p, DeRUN.from_hifm().config.to_dict())  # right config, foreign tensors
    with pytest.raises(CheckpointError, match="does not match the DeRUN architecture"):
        load_checkpoint(p)
    _write_fake(p, DeRUN.from_hifm().config.to_dict(), version="abc")
    with pytest.raises(CheckpointError, match="invalid format_version"):
        load_checkpoint(p)
    _write_fake(p, "not a mapping")
    with pytest.raises(CheckpointError, match="must be a mapping"):
        load_checkpoint(p)
    # and a real one still loads, old files (no 'guided' key) as the plain model
    good = save_checkpoint(tmp_path / "ok.safetensors", DeRUN.from_hifm(), {})
    assert not load_checkpoint(good)[0].config.guided


def test_divergence_is_reported_not_saved(tmp_path):
    prs = [smooth_pair(40, 40, seed=s) for s in range(2)]
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch=2, patch=32, lr=1e9, device="cpu", val_metrics=False,
                      val_initial=False)
    ck = tmp_path / "ck.safetensors"
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(prs, init="admm", config=cfg, checkpoint_path=ck)
    assert not ck.exists()


def _train_folder(tmp_path):
    from PIL import Image

    for sub in ("a", "b"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(2):
        a, b = smooth_pair(40, 40, seed=i)
        Image.fromarray((a * 255).astype(np.uint8)).save(tmp_path / "data" / "a" / f"p{i}.png")
        Image.fromarray((b * 255).astype(np.uint8)).save(tmp_path / "data" / "b" / f"p{i}.png")
    return tmp_path / "data"


@pytest.mark.parametrize("extra,message", [
    (["--epochs", "0"], "--epochs: input should be greater than or equal to 1, got 0"),  # TrainConfig's checks
    (["--batch", "0"], "--batch: input should be greater than or equal to 1"),
    (["--patch", "2"], "--patch: input should be greater than or equal to 16"),
    (["--lr", "-1"], "--lr: input should be greater than 0"),
])
def test_train_cli_rejects_bad_numbers_before_work(tmp_path, capsys, extra, message):
    data = _train_folder(tmp_path)
    rc = main(["train", str(data), "--out", str(tmp_path / "m.safetensors"), *extra])
    assert rc == 1 and message in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_train_cli_protects_outputs_before_work(tmp_path, capsys):
    data = _train_folder(tmp_path)
    existing = tmp_path / "m.safetensors"
    existing.write_bytes(b"mine")
    assert main(["train", str(data), "--out", str(existing)]) == 1
    assert "--overwrite" in capsys.readouterr().err and existing.read_bytes() == b"mine"
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["train", str(data), "--out", str(blocker / "m.safetensors")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_train_cli_diverged_exits_with_error(tmp_path, capsys):
    data = _train_folder(tmp_path)
    out = tmp_path / "m.safetensors"
    rc = main(["train", str(data), "--out", str(out), "--lr", "1e9", "--epochs", "1", "--steps-per-epoch", "2",
               "--patch", "32", "--batch", "2", "--device", "cpu", "--no-val-metrics", "-q", "--threads", "1"])
    assert rc == 1 and "training diverged" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("kw,message", [
    ({"overlap": -5}, "overlap must be >= 0"),
    ({"tile": 2}, "tile must be at least 16"),
    ({"tile": -5}, "tile must be at least 16"),
    ({"tile": 64, "overlap": 64}, "must be smaller than the tile"),
    ({"tile": 64.5}, "tile must be an integer"),
])
def test_fuse_rejects_bad_tiling_up_front(kw, message):
    import napari_derun as nd

    a, b = smooth_pair(40, 36)
    with pytest.raises(ValueError, match=message):
        nd.fuse(a, b, device="cpu", **kw)


def test_cli_rejects_negative_overlap(tmp_path, capsys):
    a, b = _pair_files(tmp_path)
    rc = main(["fuse", str(a), str(b), "-o", str(tmp_path / "o.tif"), "--overlap", "-5", "-q"])
    assert rc == 1 and "overlap must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def test_precision_on_a_shared_fuser_does_not_leak():
    import napari_derun as nd

    fz = nd.load_model("admm", device="cpu")
    a, b = smooth_pair(40, 36)
    ref = nd.fuse(a, b, model=fz, device="cpu")
    nd.fuse(a, b, model=fz, device="cpu", precision="bf16")
    assert fz.precision == "fp32"
    np.testing.assert_array_equal(nd.fuse(a, b, model=fz, device="cpu"), ref)


@pytest.mark.parametrize("make,message", [
    (lambda a: (np.float32(1.0), np.float32(2.0), {}), "0 dimension"),
    (lambda a: (np.stack([a, a], -1), np.stack([a, a], -1), {}), "2 channels in the last axis"),
    (lambda a: (a, a, {"axes": 123}), "axes must be a string"),
    (lambda a: (a, a, {"model": "."}), "is a folder"),
    (lambda a: (np.ma.masked_array(a, a > 0.5), a, {}), "masked array"),
])
def test_bad_inputs_get_clear_messages(make, message):
    import napari_derun as nd

    a, _ = smooth_pair(32, 32)
    x, y, kw = make(a)
    with pytest.raises(ValueError, match=message):
        nd.fuse(x, y, device="cpu", **kw)


def test_float64_beyond_float32_range_is_scaled_not_nan():
    import napari_derun as nd

    a, b = smooth_pair(32, 32)
    f = nd.fuse(a.astype(np.float64) * 1e39, b, model="admm", device="cpu")
    # the same percentile scaling as a moderately scaled copy (scaling is invariant to the factor)
    np.testing.assert_allclose(f, nd.fuse(a.astype(np.float64) * 1e3, b, model="admm", device="cpu"), atol=1e-5)


@pytest.mark.parametrize("kw,message", [
    ({"percentiles": (99.9, 0.1)}, "percentiles must satisfy"),
    ({"ranges": ((1.0, 0.0), (0.0, 1.0))}, "lo <= hi"),
    ({"ranges": ((float("nan"), 1.0), (0.0, 1.0))}, "finite"),
])
def test_reversed_or_nan_ranges_are_refused(kw, message):
    import napari_derun as nd

    a, b = smooth_pair(32, 32)
    for x, y, axes in ((a, b, None), (np.stack([a, a]), np.stack([b, b]), "ZYX")):
        with pytest.raises(ValueError, match=message):
            nd.fuse(x * 7, y * 7, device="cpu", axes=axes, **kw)


def test_nan_weights_name_the_stage():
    import napari_derun as nd

    m = DeRUN.from_hifm()
    with torch.no_grad():
        m.stages[2].raw_rho.fill_(float("nan"))
    a, b = smooth_pair(32, 32)
    with pytest.raises(FloatingPointError, match="stage 3"):
        nd.fuse(a, b, model=m, device="cpu")


def test_outputs_checked_before_work(tmp_path, capsys):
    a, b = _pair_files(tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for argv in (["fuse", str(a), str(b), "-o", str(blocker / "o.tif"), "-q"],
                 ["evaluate", str(tmp_path), "-o", str(blocker / "ev"), "-q"],
                 ["demo", "--out", str(blocker / "demo")]):
        assert main(argv) == 1, argv
        assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["robustness", str(tmp_path), "--levels", "a,b", "-o", str(tmp_path / "r")]) == 1
    assert "levels must be whole numbers" in capsys.readouterr().err
    assert main(["profile", "--repeats", "0"]) == 1
    assert "--repeats must be >= 1" in capsys.readouterr().err


def test_thread_count_follows_the_load_of_the_moment(monkeypatch):
    """Idle cores from two /proc/stat samples (not the lagging 1-minute average), minus what is left
    for the GUI; the load average only where /proc/stat is missing."""
    from napari_derun import _runtime as rt

    monkeypatch.delenv("NAPARI_DERUN_THREADS", raising=False)
    monkeypatch.setattr(rt.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(rt.time, "sleep", lambda s: None)
    samples = iter([(1000, 800), (1200, 900)])  # 200 ticks, 100 idle: half the machine = 1 of 2 cores busy
    monkeypatch.setattr(rt, "_proc_stat", lambda: next(samples))
    assert rt.busy_cores() == pytest.approx(1.0)
    for busy, leave, want in ((0.1, 0, 2), (1.0, 0, 1), (1.9, 0, 1), (0.1, 1, 1)):
        monkeypatch.setattr(rt, "busy_cores", lambda b=busy: b)
        assert rt.default_threads(leave) == want, (busy, leave)
    monkeypatch.undo()
    monkeypatch.setattr(rt, "_proc_stat", lambda: None)
    monkeypatch.setattr(rt.os, "getloadavg", lambda: (0.75, 0.5, 0.25))
    assert rt.busy_cores() == 0.75


@pytest.mark.slow  # subprocesses / real pairs: the slow suite (the default one stays under 2 minutes)
def test_threads_option_and_environment(monkeypatch, capsys):
    import subprocess
    import sys

    from napari_derun._runtime import default_threads

    monkeypatch.setenv("NAPARI_DERUN_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("NAPARI_DERUN_THREADS", "0")
    with pytest.raises(ValueError, match=">= 1"):
        default_threads()
    monkeypatch.delenv("NAPARI_DERUN_THREADS")
    assert 1 <= default_threads() <= (os.cpu_count() or 1)
    assert main(["profile", "--threads", "0"]) == 1 and "--threads must be >= 1" in capsys.readouterr().err
    code = ("import sys; from napari_derun.cli import main; main(['profile', '--size', '48', '--repeats', '1', "
            "'--methods', 'average', '--threads', '1']); import torch; print('threads', torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert "threads 1" in out.stdout, out.stderr


@pytest.mark.slow  # subprocesses / real pairs: the slow suite (the default one stays under 2 minutes)
def test_train_resume_keeps_the_stored_schedule(tmp_path, capsys):
    data = _train_folder(tmp_path)
    ck, out = tmp_path / "ck.safetensors", tmp_path / "m.safetensors"
    common = ["--patch", "32", "--batch", "1", "--steps-per-epoch", "1", "--no-val-metrics", "-q", "--device", "cpu",
              "--threads", "1"]
    assert main(["train", str(data), "--out", str(out), "--epochs", "2", "--checkpoint", str(ck), *common]) == 0
    capsys.readouterr()
    # resume without --epochs: the stored 2-epoch schedule is complete, nothing more to do
    assert main(["train", str(data), "--out", str(tmp_path / "m2.safetensors"), "--resume", str(ck), "-q"]) == 0
    out2 = capsys.readouterr().out
    assert "epoch 3" not in out2 and "/150" not in out2
    # an explicit --epochs extends it
    assert main(["train", str(data), "--out", str(tmp_path / "m3.safetensors"), "--resume", str(ck), "--epochs", "3",
                 "-q"]) == 0
    out3 = capsys.readouterr().out
    assert "changed: epochs=3" in out3 and "epoch 3/3" in out3


def test_stale_temporary_files_are_cleaned(tmp_path):
    import time

    from napari_derun._files import atomic_write_bytes

    target = tmp_path / "m.safetensors"
    stale = tmp_path / ".m.safetensors.abc123.tmp"
    fresh = tmp_path / ".m.safetensors.def456.tmp"  # maybe another writer, still at work
    stale.write_bytes(b"left by kill -9")
    fresh.write_bytes(b"in progress")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data" and not stale.exists() and fresh.exists()


def test_without_validation_the_latest_weights_are_kept():
    prs = [smooth_pair(40, 40, seed=s) for s in range(2)]
    cfg = TrainConfig(epochs=2, steps_per_epoch=2, batch=2, patch=32, lr=1e-3, device="cpu", val_metrics=False,
                      val_initial=False)
    res = train(prs, init=DeRUN.from_hifm(), config=cfg)
    best = res.info["metrics"]["best"]
    assert best["epoch"] == 2 and best["selected_by"].startswith("latest epoch")
    sb, sl = res.best_model.state_dict(), res.model.state_dict()
    assert all(torch.equal(sb[k], sl[k]) for k in sb)


@pytest.mark.parametrize("kw,field", [({"n_iter": 10_000_000}, "n_iter"), ({"lam": -1.0}, "lam"),
                                      ({"rho": 0.0}, "rho"), ({"theta": float("inf")}, "theta")])
def test_hifm_parameters_are_bounded(kw, field):
    from napari_derun.core.hifm import HIFMParams

    with pytest.raises(ValueError, match=field):
        HIFMParams(**kw)
    with pytest.raises(ValueError, match="unknown keys in HIFM parameters"):
        HIFMParams.from_dict({"bogus": 1})
