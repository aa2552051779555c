"""Tests of the training engine (napari_derun.training) and `napari-derun train`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers import smooth_pair

import torch

from napari_derun.io.checkpoint import load_checkpoint  # noqa: E402
from napari_derun.core.hifm import HIFMParams  # noqa: E402
from napari_derun.core.model import DeRUN  # noqa: E402
from napari_derun.training.datasets import PairDataset
from napari_derun.training.config import TrainConfig
from napari_derun.training.validation import evaluate_pairs
from napari_derun.training.loop import finetune, train# noqa: E402

STEP_KEYS = {"kind", "step", "total_steps", "epoch", "loss", "pixel", "lgde", "lr"}
EPOCH_KEYS = {"kind", "epoch", "epochs", "train_loss", "val_loss", "metrics", "rank", "lr", "best"}
FUSION_STEP_KEYS = {"kind", "step", "total_steps", "epoch", "loss", "intensity", "gradient", "ssim", "lgde", "lr"}


def _keys(ev) -> set[str]:
    """An event's fields, with the objective's ``parts`` flattened in."""
    import dataclasses

    return {f.name for f in dataclasses.fields(ev) if f.name != "parts"} | set(getattr(ev, "parts", {}) or {})


def tiny(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DeRUN.from_hifm(HIFMParams(n_iter=2))


def cfg(**kw):
    base = dict(epochs=1, steps_per_epoch=2, batch=2, patch=32, lr=1e-3, device="cpu", val_metrics=False,
                val_initial=False)
    base.update(kw)
    return TrainConfig(**base)


def pairs(n=3, h=48, w=40):
    return [smooth_pair(h, w, seed=s) for s in range(n)]


def write_folder(root: Path, n=3) -> list[tuple[np.ndarray, np.ndarray]]:
    """PNG 8-bit grey, PNG 8-bit RGB, TIFF 16-bit grey / RGB pairs."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    out = []
    for i in range(n):
        a, b = smooth_pair(40, 36, seed=i)
        kind = i % 4
        if kind == 0:
            Image.fromarray((a * 255).astype(np.uint8)).save(root / "a" / f"p{i}.png")
            Image.fromarray((b * 255).astype(np.uint8)).save(root / "b" / f"p{i}.png")
        elif kind == 1:
            rgb = np.stack([b, b * 0.5, b * 0.2], -1)
            Image.fromarray((a * 255).astype(np.uint8)).save(root / "a" / f"p{i}.png")
            Image.fromarray((rgb * 255).astype(np.uint8)).save(root / "b" / f"p{i}.png")
        elif kind == 2:
            tifffile.imwrite(root / "a" / f"p{i}.tif", (a * 65535).astype(np.uint16))
            tifffile.imwrite(root / "b" / f"p{i}.tif", (b * 65535).astype(np.uint16))
        else:
            rgb = np.stack([b, b * 0.7, b * 0.1], -1)
            tifffile.imwrite(root / "a" / f"p{i}.tif", (a * 65535).astype(np.uint16))
            tifffile.imwrite(root / "b" / f"p{i}.tif", (rgb * 65535).astype(np.uint16), photometric="rgb")
        out.append((a, b))
    return out


def test_dataset_from_folder_mixed_formats(tmp_path):
    src = write_folder(tmp_path, n=4)
    (tmp_path / "a" / "lonely.png").write_bytes((tmp_path / "a" / "p0.png").read_bytes())
    ds = PairDataset(tmp_path)
    assert ds.names == ["p0", "p1", "p2", "p3"]
    assert any("lonely" in p for p in ds.problems)
    for x in ds.a + ds.b:
        assert x.dtype == np.float32 and x.shape == (40, 36)
        assert 0.0 <= x.min() and x.max() <= 1.0
    # 8-bit grey: exactly /255
    np.testing.assert_allclose(ds.a[0], (src[0][0] * 255).astype(np.uint8) / 255.0, atol=1e-6)
    # 8-bit RGB b: BT.601 luminance of the stored colour
    rgb = np.asarray(Image.open(tmp_path / "b" / "p1.png")).astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.b[1], rgb @ [0.299, 0.587, 0.114], atol=1e-5)
    # 16-bit: robust percentile stretch, strongly correlated with the source
    assert np.corrcoef(ds.a[2].ravel(), src[2][0].ravel())[0, 1] > 0.99
    prov = ds.provenance()
    assert prov["count"] == 4 and prov["names"] == ds.names


def test_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        PairDataset(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="no usable image pairs"):
        PairDataset(tmp_path)
    with pytest.raises(ValueError):
        PairDataset([])


def test_dataset_from_arrays_and_split():
    prs = pairs(10)
    ds = PairDataset(prs)
    assert len(ds) == 10 and ds.source == "arrays"
    np.testing.assert_array_equal(ds.a[3], prs[3][0])  # float already in [0, 1]: kept
    tr, va = ds.split(every=5)
    assert va.names == ["pair_004", "pair_009"] and len(tr) == 8
    assert not set(tr.names) & set(va.names)
    tr2, va2 = ds.split_fraction(0.2)
    assert va2.names == va.names
    both = PairDataset.concat([tr, va], ["x", "y"])
    assert len(both) == 10 and both.names[0] == "x/pair_000"


def test_patches_augmentation_and_padding():
    a = np.arange(20 * 30, dtype=np.float32).reshape(20, 30) / 600
    b = 1 - a
    ds = PairDataset([(a, b)])
    rng = np.random.default_rng(0)
    na, nb = ds.batch(rng, batch=5, patch=16)
    assert na.shape == nb.shape == (5, 1, 16, 16) and na.dtype == np.float32
    np.testing.assert_allclose(na + nb, 1.0, atol=1e-6)  # a and b cut and transformed identically
    # every patch is one of the 8 dihedral transforms of a crop of a
    for p in na[:, 0]:
        found = False
        for k in range(4):
            for fl in (False, True):
                q = np.rot90(p, -k) if not fl else np.rot90(p[:, ::-1], -k)
                y, x = np.argwhere(np.isclose(a, q[0, 0]))[0]
                if a[y:y + 16, x:x + 16].shape == (16, 16) and np.allclose(a[y:y + 16, x:x + 16], q):
                    found = True
        assert found
    # patch larger than the image: reflection padding, still the right size
    pa, pb = ds.sample(np.random.default_rng(1), patch=40, augment=False)
    assert pa.shape == (40, 40)
    np.testing.assert_array_equal(pa[:20, :30], a)
    np.testing.assert_array_equal(pa[20:40, :30], a[::-1])
    # seeded: same patches again
    na2, _ = ds.batch(np.random.default_rng(0), batch=5, patch=16)
    np.testing.assert_array_equal(na, na2)


def test_lr_schedule():
    c = TrainConfig()
    assert c.lr_at(0) == c.lr_at(49) == 1e-4
    assert c.lr_at(50) == pytest.approx(0.9e-4)
    assert c.lr_at(59) == pytest.approx(0.9e-4)
    assert c.lr_at(60) == pytest.approx(0.81e-4)
    assert c.lr_at(149) == pytest.approx(1e-4 * 0.9**10)
    assert TrainConfig().steps_per_epoch is None and TrainConfig().epochs == 150


def test_loss_decreases_and_callbacks():
    prs = pairs(2, 48, 48)
    events = []
    res = train(prs, val_pairs=prs[:1], init=tiny(), config=cfg(epochs=3, steps_per_epoch=4, val_metrics=True,
                                                                val_initial=True, augment=False,
                                                                objective="paper", select="loss"),
                callback=events.append)
    steps = [e for e in events if e.kind == "step"]
    epochs = [e for e in events if e.kind == "epoch"]
    assert len(steps) == 12 and len(epochs) == 3
    assert all(_keys(e) == STEP_KEYS for e in steps)
    assert all(_keys(e) == EPOCH_KEYS for e in epochs)
    assert [e.step for e in steps] == list(range(1, 13)) and steps[0].total_steps == 12
    for e in steps:
        assert e.loss >= e.parts["pixel"] + 10 * e.parts["lgde"] - 1e-6
    assert set(epochs[-1].metrics) == {"EN", "SD", "SF", "AG", "SSIM", "PSNR", "UIQI", "VIF", "Qabf", "SCD", "SR"}
    # validation loss (full images, deterministic) went down from the model-based start
    init_loss = res.info["metrics"]["initial"]["val_loss"]
    assert min(h["val_loss"] for h in res.history) < init_loss
    # the best model really is the one with the lowest recorded validation loss
    best = min(res.history, key=lambda h: h["val_loss"])
    ev = evaluate_pairs(res.best_model, PairDataset(prs[:1]), metrics=False, config=cfg(objective="paper"))
    assert ev["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert res.info["metrics"]["best"]["epoch"] == best["epoch"]
    assert res.info["metrics"]["best"]["selected_by"] == "validation loss"
    assert res.info["data"]["train"]["count"] == 2 and res.info["training"]["torch"] == torch.__version__


@pytest.mark.slow  # several seconds: the slow suite (the default one stays under 2 minutes)
def test_fusion_objective_selects_by_validation_rank():
    prs = pairs(2, 48, 48)
    events = []
    c = cfg(epochs=3, steps_per_epoch=2, val_metrics=True, val_initial=True, augment=False, lr=3e-3)
    assert c.objective == "fusion" and c.select == "rank"
    res = train(prs, val_pairs=prs[:1], init="admm", config=c, callback=events.append)
    steps = [e for e in events if e.kind == "step"]
    assert all(_keys(e) == FUSION_STEP_KEYS for e in steps)
    assert res.model.config.guided  # a new model is the guided DeRUN by default
    ranks = [h["rank"] for h in res.history]
    assert all(r is not None and 1.0 <= r <= 5.0 for r in ranks)  # model among 4 references
    best = res.info["metrics"]["best"]
    assert best["selected_by"] == "validation mean rank" and best["rank"] == min(ranks)
    assert best["epoch"] == res.history[ranks.index(min(ranks))]["epoch"]
    # the kept weights are the ones that scored that rank
    from napari_derun.training.validation import reference_scores

    ev = evaluate_pairs(res.best_model, PairDataset(prs[:1]), config=c, references=reference_scores(PairDataset(prs[:1])))
    assert ev["rank"] == pytest.approx(best["rank"])
    assert res.info["training"]["objective"] == "fusion"


def test_checkpointed_forward_same_gradients():
    from napari_derun.core.losses import derun_loss

    m = tiny()
    with torch.no_grad():  # move the nonlinear branches off zero so every piece matters
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    a, b = torch.rand(2, 1, 20, 24), torch.rand(2, 1, 20, 24)
    grads = []
    for fn in (m.forward, lambda x, y: m(x, y, checkpoint=True)):
        m.zero_grad()
        x = fn(a, b)
        derun_loss(x, a, b)[0].backward()
        grads.append((x.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert len(grads[0][1]) == len(grads[1][1]) > 10
    for g0, g1 in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-7)


def test_stop_flag_returns_best():
    prs = pairs(2)
    ev = threading.Event()
    seen = []

    def cb(e):
        seen.append(e)
        if e.kind == "epoch" and e.epoch == 2:
            ev.set()

    res = train(prs, val_pairs=prs[:1], init=tiny(), config=cfg(epochs=50, steps_per_epoch=2), callback=cb, stop=ev)
    assert res.stopped and len(res.history) == 2
    assert sum(e.kind == "step" for e in seen) == 4
    best = min(res.history, key=lambda h: h["val_loss"])
    ev2 = evaluate_pairs(res.best_model, PairDataset(prs[:1]), metrics=False, config=cfg())
    assert ev2["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    # a callable works as well, and stopping before any step still returns a usable model
    res2 = train(prs, init=tiny(), config=cfg(epochs=5), stop=lambda: True)
    assert res2.stopped and res2.history == []
    x = res2.best_model(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    assert torch.isfinite(x).all()


def test_reproducible_with_seed(one_thread):
    # bitwise reproducibility needs one thread: parallel conv/FFT reductions vary at ~1e-5
    prs = pairs(2)
    r1 = train(prs, init=tiny(), config=cfg(steps_per_epoch=3, seed=5))
    r2 = train(prs, init=tiny(), config=cfg(steps_per_epoch=3, seed=5))
    r3 = train(prs, init=tiny(), config=cfg(steps_per_epoch=3, seed=6))
    s1, s2, s3 = r1.model.state_dict(), r2.model.state_dict(), r3.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)
    assert any(not torch.equal(s1[k], tiny().state_dict()[k]) for k in s1)  # it did train
    # init="admm" (random shared convs) is seeded too
    c = cfg(steps_per_epoch=1, patch=24, batch=1)
    m1, m2 = train(prs, init="admm", config=c).model, train(prs, init="admm", config=c).model
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())


def test_checkpoint_and_resume(tmp_path, one_thread):
    prs = pairs(2)
    ck = tmp_path / "ck.safetensors"
    full = train(prs, val_pairs=prs[:1], init=tiny(), config=cfg(epochs=3))
    part = train(prs, val_pairs=prs[:1], init=tiny(), config=cfg(epochs=3), checkpoint_path=ck,
                 stop=lambda: len(list(tmp_path.glob("ck.safetensors"))) and
                 json.loads((tmp_path / "ck.safetensors.json").read_text())["training_state"]["epoch"] >= 2)
    assert len(part.history) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors", "ck.safetensors.json"]  # no temp files
    model, info, extra = load_checkpoint(ck)
    assert info["training_state"]["epoch"] == 2
    assert any(k.startswith("adam/") for k in extra)
    assert all(torch.equal(v, part.model.state_dict()[k]) for k, v in model.state_dict().items())
    events = []
    res = train(prs, val_pairs=prs[:1], resume=ck, callback=events.append)
    assert [e.epoch for e in events if e.kind == "epoch"] == [3]
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    # resuming gives exactly the uninterrupted run (same optimizer state, schedule and sampling)
    sf, sr = full.model.state_dict(), res.model.state_dict()
    for k in sf:
        torch.testing.assert_close(sr[k], sf[k], rtol=1e-5, atol=1e-6)
    assert res.history[-1]["val_loss"] == pytest.approx(full.history[-1]["val_loss"], rel=1e-4)


def test_finetune_from_checkpoint_path(tmp_path):
    prs = pairs(2)
    base = train(prs, init=tiny(), config=cfg())
    p = base.save(tmp_path / "m.safetensors", name="mine")
    assert json.loads((tmp_path / "m.safetensors.json").read_text())["name"] == "mine"
    res = finetune(prs, model=str(p), epochs=2, lr=1e-4, patch=32, steps_per_epoch=1, batch=2, device="cpu",
                   val_metrics=False)
    assert len(res.history) == 2 and res.history[0]["lr"] == res.history[1]["lr"] == 1e-4
    assert res.info["training"]["init"] == str(p)
    assert res.model.config.n_stages == 2


@pytest.mark.slow  # subprocesses / real pairs: the slow suite (the default one stays under 2 minutes)
def test_cli_train(tmp_path):
    write_folder(tmp_path / "data", n=4)
    init = tmp_path / "init.safetensors"
    from napari_derun.io.checkpoint import save_checkpoint

    save_checkpoint(init, tiny(), {"name": "tiny"})
    out = tmp_path / "model.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "napari_derun.cli", "train", str(tmp_path / "data"), "--out", str(out), "--init", str(init),
           "--epochs", "1", "--patch", "32", "--batch", "2", "--steps-per-epoch", "2", "--val-fraction", "0.25",
           "--no-val-metrics", "--device", "cpu", "--name", "tiny_cli", "--threads", "1",
           "--degrade", "1", "--modalities", "mri,pet", "--restore", "4", "--w-salient", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    info = json.loads((tmp_path / "model.safetensors.json").read_text())
    assert info["name"] == "tiny_cli"
    stored = info["training"]["config"]
    assert (stored["degrade"], stored["modalities"], stored["restore"], stored["w_salient"]) == (1.0, ["mri", "pet"], 4, 2.0)
    assert info["data"]["train"]["count"] == 3 and info["data"]["val"]["names"] == ["p3"]
    import napari_derun as nd

    fz = nd.load_model(str(out), device="cpu")
    assert fz.name == "tiny_cli"
    assert fz.module.config.restore == 4  # --restore grew the start model
    r = subprocess.run([sys.executable, "-m", "napari_derun.cli", "train", str(tmp_path / "missing"), "--out",
                        str(tmp_path / "other.safetensors")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "does not exist" in r.stderr


SHIPPED = ["gfp_pc", "medical", "ivf"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_and_fuse(name):
    import napari_derun as nd
    from napari_derun.data import sample_data
    from napari_derun.api import WEIGHTS_DIR

    path = WEIGHTS_DIR / f"{name}.safetensors"
    assert path.exists(), f"the shipped {name} weights are missing from the package"
    assert path.stat().st_size < 200_000
    assert name in nd.list_models()
    fz = nd.load_model(name, device="cpu")
    assert fz.kind == "derun" and fz.name == name and fz.n_stages == 9
    assert fz.info["data"]["val"]["count"] > 0 and fz.info["data"]["tasks"]
    a, b = sample_data.gfp_pc() if name != "medical" else sample_data.pet_mri()
    f = nd.fuse(a, b, model=name, device="cpu")
    assert f.shape[:2] == a.shape[:2] and np.isfinite(f).all()
    assert 0.0 <= f.min() and f.max() <= 1.0 and f.std() > 0.01


@pytest.mark.slow
def test_finetune_gfp_does_not_worsen_validation_rank(shared_data, one_thread):
    """Fine-tuning the shipped gfp_pc model on 5 pairs keeps or improves its validation mean rank
    (the starting model is a candidate, so the kept model never scores worse), and the recorded
    scores are what an independent re-evaluation of the returned model gives."""
    from napari_derun.training.validation import reference_scores

    ds = PairDataset(shared_data / "gfp_pc")
    tr = PairDataset._from_planes(ds.names[:5], ds.a[:5], ds.b[:5], ds.source)
    va = PairDataset._from_planes(ds.names[50:54], ds.a[50:54], ds.b[50:54], ds.source)
    res = finetune(tr, model="gfp_pc", epochs=2, lr=1e-4, patch=64, val_pairs=va, steps_per_epoch=5,
                   device="cpu", val_metrics=True, seed=0)
    init, best = res.info["metrics"]["initial"], res.info["metrics"]["best"]
    assert res.info["training"]["config"]["objective"] == "fusion"  # the shipped model's own objective
    assert best["selected_by"] == "validation mean rank"
    assert best["rank"] <= init["rank"]
    ev = evaluate_pairs(res.best_model, va, config=TrainConfig.from_dict(res.info["training"]["config"]),
                        references=reference_scores(va))
    assert ev["rank"] == pytest.approx(best["rank"]) and ev["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_events_are_typed():
    from napari_derun.training.events import EpochEvent, StepEvent

    prs = pairs(2, 48, 48)
    events = []
    train(prs, val_pairs=prs[:1], init=tiny(), config=cfg(epochs=2, steps_per_epoch=2, objective="paper",
                                                           select="loss"), callback=events.append)
    steps = [e for e in events if isinstance(e, StepEvent)]
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    assert len(steps) == 4 and len(epochs) == 2
    s = steps[0]
    assert s.kind == "step" and isinstance(s.loss, float) and set(s.parts) == {"pixel", "lgde"}
    assert [e.epoch for e in epochs] == [1, 2] and epochs[0].val_loss is not None
    with pytest.raises(TypeError):  # attribute access only: events are not mappings
        s["loss"]


def test_train_config_is_validated():
    import pydantic

    with pytest.raises(ValueError, match="batch"):
        TrainConfig(batch=0)
    with pytest.raises(ValueError, match="patch"):
        TrainConfig(patch=2)
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="nope")
    with pytest.raises(ValueError, match="betas"):
        TrainConfig(betas=(0.9, 1.5))
    with pytest.raises(pydantic.ValidationError):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="Extra inputs|extra"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "bogus": 1})
    c = TrainConfig()
    with pytest.raises(ValueError):
        c.epochs = -1  # changes are validated too
    assert TrainConfig.from_dict(c.to_dict()) == c
    s = TrainConfig.for_epochs(150)
    assert (s.decay_start, s.decay_every) == (50, 10) and TrainConfig.for_epochs(30).decay_start == 10


def test_selection_floor_on_salient_contrast():
    """``min_sr``: an epoch that loses the salient image's contrast ranks behind every epoch that
    keeps at least ``min_sr`` of it, whatever its mean rank; without a floor the rank decides."""
    from napari_derun.training.validation import selected_by as _selected_by, selection_score as _selection_score

    keeps, hides = ({"SR": 0.7}, 3.0), ({"SR": 0.4}, 1.5)
    plain = TrainConfig()
    assert _selection_score(*hides, plain) < _selection_score(*keeps, plain)
    floor = TrainConfig(min_sr=0.6)
    assert _selection_score(*keeps, floor) == 3.0
    assert _selection_score(*keeps, floor) < _selection_score(*hides, floor)
    # below the floor, the better rank still wins (when no epoch reaches it)
    assert _selection_score({"SR": 0.5}, 2.0, floor) < _selection_score({"SR": 0.1}, 2.5, floor)
    assert _selection_score({"SR": float("nan")}, 1.0, floor) > _selection_score(*keeps, floor)
    assert _selection_score({}, None, floor) is None
    assert _selected_by(True, floor) == "validation mean rank among epochs with SR >= 0.6"
    with pytest.raises(ValueError):
        TrainConfig(min_sr=-0.1)
