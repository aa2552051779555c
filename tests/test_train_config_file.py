"""One front door for training (issue 20): task folders with split files, the validation set of degradation
runs (central crop, degraded copies) and ``napari-derun train --config FILE``, on tiny synthetic task folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_derun.data import sample_data


def _task(root, task, names, size=40):
    """``root/task/{a,b}/<name>.png``: synthetic pairs of that task."""
    for sub in ("a", "b"):
        (root / task / sub).mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        f = sample_data.SAMPLES[task]
        a, b = f(size, seed=i) if task != "ivf" else f(size, size + 8, seed=i)
        Image.fromarray(a).save(root / task / "a" / f"{n}.png")
        Image.fromarray(b).save(root / task / "b" / f"{n}.png")
    return root


def _data(tmp_path):
    """A data root with two tasks and their split files (two train, one val, two test pairs each)."""
    root, splits = tmp_path / "data", tmp_path / "splits"
    splits.mkdir()
    for task in ("gfp_pc", "ivf"):
        names = [f"{task[:3]}{i}" for i in range(5)]
        _task(root, task, names)
        (splits / f"{task}.json").write_text(json.dumps(
            {"task": task, "train": names[:2], "val": names[2:3], "test": names[3:]}))
    return root, splits


def test_task_pairs_reads_train_and_val_never_test(tmp_path, monkeypatch):
    from napari_derun.io import planes
    from napari_derun.training.datasets import task_pairs

    root, splits = _data(tmp_path)
    read = []
    orig = planes.read_image
    monkeypatch.setattr(planes, "read_image", lambda p, *a, **k: read.append(p.stem) or orig(p, *a, **k))
    tr, va = task_pairs(root, ["gfp_pc", "ivf"], splits)
    assert tr.names == ["gfp_pc/gfp0", "gfp_pc/gfp1", "ivf/ivf0", "ivf/ivf1"]
    assert va.names == ["gfp_pc/gfp2", "ivf/ivf2"]
    assert read and not [n for n in read if n[-1] in "34"]  # the test pairs are never even read
    assert tr.modalities[0] == ("phase_contrast", "fluorescence") and va.modalities[1] == ("visible", "infrared")
    # without split files: every 5th pair sorted by name held back
    tr, va = task_pairs(root, ["gfp_pc"])
    assert va.names == ["gfp_pc/gfp4"] and len(tr) == 4
    with pytest.raises(FileNotFoundError, match="split file"):
        task_pairs(root, ["pet_mri"], splits)


def test_center_crop_and_degraded_validation_copies(tmp_path):
    from napari_derun.training.datasets import PairDataset, task_pairs

    root, splits = _data(tmp_path)
    _, va = task_pairs(root, ["gfp_pc", "ivf"], splits)
    c = va.center_crop(24)
    assert [x.shape for x in c.a] == [(24, 24), (24, 24)] and c.names == va.names
    assert np.array_equal(c.a[1], va.a[1][8:32, 12:36]) and c.ref_a[1] is c.a[1]
    assert c.center_crop(100).a[0].shape == (24, 24)  # a side above the image keeps it whole

    d = c.with_degraded(seed=1000)
    assert len(d) == 3 * len(c) and d.names[:2] == c.names
    assert [n.split("@")[1].split(":")[0] for n in d.names[2:]] == ["a", "b", "a", "b"]
    assert d.names[2].endswith(":2") and d.names[3].endswith(":4")  # levels 2 and 4, in turn per pair
    assert d.names[4].endswith(":4") and d.names[5].endswith(":2")
    for k in (2, 3):  # the copies are scored against the clean pair
        assert np.array_equal(d.ref_a[k], c.a[0]) and np.array_equal(d.ref_b[k], c.b[0])
    assert not np.array_equal(d.a[2], c.a[0]) and np.array_equal(d.b[2], c.b[0])
    assert all(np.array_equal(x, y) for x, y in zip(c.with_degraded(seed=1000).a, d.a))  # seeded

    plain = PairDataset([(c.a[0], c.b[0])])
    with pytest.raises(ValueError, match="modalities"):
        plain.with_degraded()
    assert len(plain.with_degraded(modalities=("phase_contrast", "fluorescence"))) == 3


def test_containing_keeps_the_matching_pairs_with_their_modalities(tmp_path):
    from napari_derun.training.datasets import task_pairs

    root, splits = _data(tmp_path)
    tr, _ = task_pairs(root, ["gfp_pc", "ivf"], splits)
    only = tr.containing(["ivf1", "gfp0"])
    assert only.names == ["gfp_pc/gfp0", "ivf/ivf1"] and only.modalities[1] == ("visible", "infrared")
    with pytest.raises(ValueError, match="no pair name contains"):
        tr.containing(["MSRS"])


def _resolve(argv):
    """The TrainConfig and data settings ``napari-derun train ARGV`` would train with (nothing trained)."""
    from napari_derun.cli import build_parser
    from napari_derun.commands import train as cmd

    args = build_parser().parse_args(["train", *argv])
    fields, origin, data, _ = cmd._settings(args)
    return cmd._config(args, fields, origin, lambda *a, **k: None), data, args


RUN = """
name = "tiny"
out = "out/tiny.safetensors"
checkpoint = "out/tiny.ckpt.safetensors"
epochs = 2
steps_per_epoch = 2
lr = 3e-4
decay_start = 1
decay_every = 1
decay = 0.8
batch = 2
patch = 32
grad_clip = 1.0
target = "lift"
w_intensity = 4.0
w_gradient = 9.0
w_ssim = 1.5
w_lgde = 0.2
w_salient = 10.0
lift_gain = 1.5
degrade = 0.5
restore = 4
min_sr = 0.5
device = "cpu"
num_threads = 1
seed = 3
val_metrics = false

[data]
root = "data"
tasks = ["gfp_pc", "ivf"]
splits = "splits"
val_crop = 32
val_degraded = true
licence = "synthetic test pairs"
"""

OPTIONS = ["--epochs", "2", "--steps-per-epoch", "2", "--lr", "3e-4", "--decay-start", "1", "--decay-every", "1",
           "--decay", "0.8", "--batch", "2", "--patch", "32", "--grad-clip", "1.0", "--target", "lift",
           "--weights", "4", "9", "1.5", "0.2", "--w-salient", "10", "--lift-gain", "1.5", "--degrade", "0.5",
           "--restore", "4", "--min-sr", "0.5", "--device", "cpu", "--threads", "1", "--seed", "3",
           "--no-val-metrics"]


def test_run_file_gives_the_same_config_as_the_options(tmp_path):
    root, splits = _data(tmp_path)
    (tmp_path / "run.toml").write_text(RUN)
    by_file, data, args = _resolve(["--config", str(tmp_path / "run.toml")])
    by_options, data2, _ = _resolve([str(root), "--out", "x.safetensors", "--tasks", "gfp_pc", "ivf", "--splits",
                                     str(splits), "--val-crop", "32", "--val-degraded", *OPTIONS])
    assert by_file == by_options and by_file.decay_start == 1 and by_file.restore == 4
    # the file's relative paths are relative to its folder
    assert data["root"] == str(root) and data["splits"] == str(splits)
    assert args.out == str(tmp_path / "out" / "tiny.safetensors") and args.init == "admm" and args.name == "tiny"
    assert {k: data2[k] for k in ("tasks", "val_crop", "val_degraded")} == \
        {k: data[k] for k in ("tasks", "val_crop", "val_degraded")}
    # options given on the command line override the file; the others keep the file's values
    cfg, data, args = _resolve(["--config", str(tmp_path / "run.toml"), "--epochs", "5", "--out", "o.safetensors",
                                "--no-val-degraded"])
    assert cfg.epochs == 5 and cfg.lr == 3e-4 and cfg.decay_start == 1 and args.out == "o.safetensors"
    assert data["val_degraded"] is False and data["val_crop"] == 32
    # without the file and without options: the CLI's defaults (the paper's schedule scaled to the epochs)
    cfg, _, _ = _resolve([str(root), "--out", "x.safetensors", "--epochs", "30"])
    assert (cfg.decay_start, cfg.decay_every, cfg.lr, cfg.guided) == (10, 2, 1e-4, True)


@pytest.mark.parametrize("text,message", [
    ("epochs = 0\n", "epochs: input should be greater than or equal to 1, got 0"),
    ("lr = -1.0\n", "lr: input should be greater than 0"),
    ("target = 'mean'\n", "target: input should be 'max' or 'lift'"),
    ("epoch = 3\n", "unknown key 'epoch'"),
    ("[data]\ntask = ['ivf']\n", "unknown key(s) task in [data]"),
    ("[data]\nval_crop = 4\n", "data.val_crop: input should be greater than or equal to 16"),
    ("out = 3\n", "out must be a string"),
    ("epochs = \n", "not valid TOML"),
])
def test_run_file_refuses_unknown_keys_and_bad_values_naming_them(tmp_path, text, message):
    from napari_derun.training.run_file import read_run_file

    f = tmp_path / "run.toml"
    f.write_text(text)
    with pytest.raises(ValueError) as e:
        read_run_file(f)
    assert message in str(e.value) and str(f) in str(e.value)


def test_train_cli_names_the_bad_setting_and_where_it_came_from(tmp_path, capsys):
    from napari_derun.cli import main

    root, _ = _data(tmp_path)
    f = tmp_path / "run.toml"
    f.write_text("patch = 32\n")
    assert main(["train", str(root / "gfp_pc"), "--config", str(f), "--out", str(tmp_path / "m.safetensors"),
                 "--patch", "8"]) == 1
    assert "--patch: input should be greater than or equal to 16, got 8" in capsys.readouterr().err
    assert main(["train", str(root / "gfp_pc"), "--config", str(f)]) == 1
    assert "no output file" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "m.safetensors")]) == 1
    assert "no training data" in capsys.readouterr().err
    assert main(["train", str(root / "gfp_pc"), "--out", str(tmp_path / "m.safetensors"), "--val-crop", "32"]) == 1
    assert "need validation pairs" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow  # ~17 s / ~7 s: keeps the default suite under 2 minutes
def test_resume_a_run_started_from_a_run_file(tmp_path, capsys):
    """A run file's run (2 epochs x 2 steps, 32² patches), then --resume to 3 epochs: the history continues."""
    from napari_derun.cli import main
    from napari_derun.io.checkpoint import read_checkpoint_info

    _data(tmp_path)
    f = tmp_path / "run.toml"
    f.write_text(RUN)
    out, ck = tmp_path / "out" / "tiny.safetensors", tmp_path / "out" / "tiny.ckpt.safetensors"
    (tmp_path / "out").mkdir()
    # --resume before any checkpoint exists starts the run
    assert main(["train", "--config", str(f), "--resume", "--log", "json", "-q"]) == 0
    text = capsys.readouterr().out
    assert "yet: starting the run" in text and "validating on 6" in text  # 2 val pairs + 2 degraded copies each
    lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert set(lines[0]) == {"epoch", "train_loss", "val_loss", "rank", "SR", "SCD", "lr", "best", "time"}
    info = read_checkpoint_info(out)
    assert info["data"]["tasks"] == ["gfp_pc", "ivf"] and "test pairs never read" in info["data"]["split"]
    assert info["data"]["licence"] == "synthetic test pairs" and info["data"]["settings"]["val_crop"] == 32
    assert info["command"] == f"napari-derun train --config {f} --resume --log json -q"
    assert info["run_file"]["text"] == RUN and info["training"]["config"]["restore"] == 4
    assert len(info["data"]["train"]["names"]) == 4 and not [n for n in info["data"]["val"]["names"] if "3" in n]
    assert read_checkpoint_info(ck)["training_state"]["epoch"] == 2

    assert main(["train", "--config", str(f), "--resume", "--epochs", "3", "--overwrite", "--log", "json", "-q"]) == 0
    text = capsys.readouterr().out
    assert "changed: epochs=3" in text and f"resume {ck}" in text
    assert [json.loads(x)["epoch"] for x in text.splitlines() if x.startswith("{")] == [3]
    info = read_checkpoint_info(out)
    assert [h["epoch"] for h in info["history"]] == [1, 2, 3] and info["training"]["epochs_done"] == 3
    assert read_checkpoint_info(ck)["training_state"]["epoch"] == 3


@pytest.mark.parametrize("run,task,init,gain", [("gfp_pc_r", "gfp_pc", "gfp_pc", 1.0), ("ivf_g", "ivf", "ivf", 1.5)])
def test_the_run_files_of_tools_runs(run, task, init, gain):
    """tools/runs/<run>.toml: the settings these runs were started with (the former training script's fixed
    ones included), with ../shared/data and tools/splits found from the file's folder."""
    from napari_derun.training.config import TrainConfig
    from napari_derun.training.run_file import read_run_file

    repo = Path(__file__).resolve().parents[1]
    rf = read_run_file(repo / "tools" / "runs" / f"{run}.toml")
    cfg = TrainConfig(**rf.config)
    assert (cfg.epochs, cfg.steps_per_epoch, cfg.lr, cfg.decay_start, cfg.decay_every, cfg.decay) == \
        (24, 200, 1e-4, 12, 2, 0.8)
    assert (cfg.val_every, cfg.val_metrics, cfg.val_initial, cfg.device, cfg.seed, cfg.checkpointing) == \
        (1, True, True, "cpu", 0, False)
    assert (cfg.degrade, cfg.restore, cfg.grad_clip, cfg.min_sr, cfg.w_salient, cfg.target, cfg.lift_gain) == \
        (0.5, 12, 1.0, 0.7, 10.0, "lift", gain)
    assert (cfg.patch, cfg.batch, cfg.train_pad, cfg.num_threads, cfg.guided) == (64, 4, 4, 1, True)
    runs = repo / "tools" / "runs"
    assert rf.run == {"name": run, "init": init, "checkpoint": str(runs / f"{run}.ckpt.safetensors"),
                      "out": str(runs / f"{run}.safetensors")}
    assert rf.data["root"] == str(repo.parent / "shared" / "data") and rf.data["splits"] == str(repo / "tools" / "splits")
    assert (rf.data["tasks"], rf.data["val_crop"], rf.data["val_degraded"]) == ([task], 256, True)
