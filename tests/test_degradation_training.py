"""Modality degradations (napari_derun.data.degrade), degraded training inputs with clean targets,
validation against the clean sources, and the input restoration network of the model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from helpers import smooth_pair

from napari_derun.core.hifm import HIFMParams
from napari_derun.core.model import DeRUN, InputRestore
from napari_derun.data import degrade as D
from napari_derun.training.datasets import PairDataset, degrade_batch, photometric_batch
from napari_derun.evaluation.metrics_extra import rank_metrics
from napari_derun.training.config import TrainConfig
from napari_derun.training.validation import evaluate_pairs
from napari_derun.training.loop import train


def const(v, shape=(256, 256)):
    return np.full(shape, v, dtype=np.float32)


# --------------------------------------------------------------------------- the degradation models
def test_every_modality_lists_known_degradations():
    for mod, names in D.MODALITIES.items():
        assert names and all(n in D.DEGRADATIONS for n in names), mod
    for task, (ma, mb) in D.TASK_MODALITIES.items():
        assert ma in D.MODALITIES and mb in D.MODALITIES, task


@pytest.mark.parametrize("level", [1, 3, 4])
def test_shot_noise_is_poisson_gaussian(level):
    x = const(0.3)
    y = D.shot_noise(x, level, seed=0).astype(np.float64)
    n, r = D.SHOT_PHOTONS[level], D.SHOT_READ[level]
    # unbiased, variance of Poisson(N x) / N plus read noise (clipping at 0 is rare at 0.3)
    assert y.mean() == pytest.approx(0.3, abs=4 * np.sqrt(0.3 / n / y.size) + 0.01)
    assert y.var() == pytest.approx(0.3 / n + r**2, rel=0.1)


def test_shot_noise_few_photons_at_level_4():
    # "a few photons per pixel at the cells": a half-scale cell gets 2.5 photons on average at level 4
    assert D.SHOT_PHOTONS[4] * 0.5 <= 5
    y = D.shot_noise(const(0.5), 4, seed=1)
    assert len(np.unique(np.round(y * D.SHOT_PHOTONS[4]))) > 3  # quantised photon counts, spread out


def test_stripe_noise_is_per_column():
    y = D.stripe_noise(const(0.5), 4, seed=0).astype(np.float64)
    col_std, row_std = y.mean(0).std(), y.mean(1).std()
    assert col_std == pytest.approx(D.STRIPE_SIGMA[4], rel=0.2)
    assert row_std < col_std / 5


def test_low_contrast_squeezes_around_the_mean():
    a, _ = smooth_pair(64, 64, seed=0)
    for lv in (1, 3, 5):
        y = D.low_contrast(a, lv).astype(np.float64)
        assert y.mean() == pytest.approx(a.mean(), abs=1e-5)
        assert y.std() == pytest.approx(D.LOW_CONTRAST[lv] * a.std(), rel=1e-4)


def test_background_adds_a_smooth_offset():
    x = const(0.2, (96, 96))
    y = D.background(x, 3, seed=0).astype(np.float64) - 0.2
    o = D.BACKGROUND[3]
    assert y.min() >= 0.5 * o - 1e-6 and y.max() <= o + 1e-6
    assert np.abs(np.diff(y, axis=0)).max() < 0.02  # smooth


def test_defocus_is_a_normalised_disk():
    k = D._disk(3.0)
    assert k.sum() == pytest.approx(1.0)
    assert k[3, 3] > 0 and k[0, 0] == 0  # centre in, corners out
    np.testing.assert_allclose(D.defocus(const(0.4, (32, 32)), 4), 0.4, atol=1e-6)
    a, _ = smooth_pair(64, 64, seed=1)
    hi = lambda z: np.abs(z - ndi.gaussian_filter(z, 1.0)).mean()  # noqa: E731
    assert hi(D.defocus(a, 2)) < hi(a)


def test_poisson_counts_variance_and_colour():
    y = D.poisson_counts(const(0.5), 3, seed=0).astype(np.float64)
    assert y.var() == pytest.approx(0.5 / D.PET_COUNTS[3], rel=0.1)
    rgb = np.stack([const(0.6, (64, 64)), const(0.3, (64, 64)), const(0.15, (64, 64))], -1)
    out = D.poisson_counts(rgb, 2, seed=0).astype(np.float64)
    ok = out[..., 0] < 1.0  # unclipped pixels keep the colour map's ratios
    np.testing.assert_allclose(out[ok][:, 1] / out[ok][:, 0], 0.5, rtol=1e-4)


def test_rician_bias_in_the_dark():
    y = D.rician(const(0.0), 4, seed=0).astype(np.float64)
    s = D.RICIAN_SIGMA[4]
    assert y.mean() == pytest.approx(s * np.sqrt(np.pi / 2), rel=0.05)  # Rayleigh mean
    bright = D.rician(const(0.6), 4, seed=0).astype(np.float64)
    assert bright.mean() == pytest.approx(0.6, abs=0.01)


def test_ct_low_dose_noise_grows_with_dose_reduction():
    yy, xx = np.mgrid[:64, :64]
    phantom = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 20**2, 0.5, 0.1).astype(np.float32)
    inner = (yy - 32) ** 2 + (xx - 32) ** 2 < 12**2
    errs = [np.std(D.ct_low_dose(phantom, lv, seed=0)[inner] - 0.5) for lv in (1, 3, 5)]
    assert errs[0] < errs[1] < errs[2]
    assert abs(D.ct_low_dose(phantom, 1, seed=0)[inner].mean() - 0.5) < 0.05


def test_composite_is_the_steps_in_turn():
    a, _ = smooth_pair(48, 48, seed=2)
    out = D.composite(a, [("low_light", 2), ("blur", 1)], seed=5)
    g = np.random.default_rng(5)
    ref = D.apply(D.apply(a, "low_light", 2, seed=g), "blur", 1, seed=g)
    np.testing.assert_array_equal(out, ref)


# --------------------------------------------------------------------------- degraded training batches
def test_degrade_batch_is_seeded_and_keeps_the_clean_batch():
    a = np.stack([smooth_pair(32, 32, seed=s)[0] for s in range(6)])[:, None]
    b = np.stack([smooth_pair(32, 32, seed=s)[1] for s in range(6)])[:, None]
    a0, b0 = a.copy(), b.copy()
    mods = [("visible", "infrared")] * 5 + [None]
    da, db = degrade_batch(a, b, mods, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(a, a0)  # the clean batch is untouched (it is the loss's target)
    np.testing.assert_array_equal(b, b0)
    changed = [not (np.array_equal(da[i], a[i]) and np.array_equal(db[i], b[i])) for i in range(6)]
    assert changed == [True] * 5 + [False]  # unknown modalities stay clean
    da2, db2 = degrade_batch(a, b, mods, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(da, da2)
    np.testing.assert_array_equal(db, db2)
    same = degrade_batch(a, b, mods, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(same[0], a)
    np.testing.assert_array_equal(same[1], b)


def test_photometric_batch_changes_exposure_of_both_images():
    a = np.stack([smooth_pair(32, 32, seed=s)[0] for s in range(8)])[:, None]
    b = np.stack([smooth_pair(32, 32, seed=s)[1] for s in range(8)])[:, None]
    pa, pb = photometric_batch(a, b, 1.0, np.random.default_rng(0))
    assert pa.min() >= 0 and pa.max() <= 1 and pb.min() >= 0 and pb.max() <= 1
    for i in range(8):
        assert not np.allclose(pa[i], a[i]) and not np.allclose(pb[i], b[i])
        # a monotone map: the order of the pixels is kept (away from clipping)
        inside = (pa[i] > 0) & (pa[i] < 1)
        order = np.argsort(a[i][inside])
        assert np.all(np.diff(pa[i][inside][order]) >= -1e-7)
    np.testing.assert_array_equal(photometric_batch(a, b, 0.0, np.random.default_rng(0))[0], a)


def test_degraded_copies_keep_the_clean_references():
    prs = [smooth_pair(48, 48, seed=s) for s in range(2)]
    ds = PairDataset(prs).with_modalities("mri", "pet")
    dg = ds.degraded([("a", "rician", 3), ("b", "poisson_counts", 4)], seed=1)
    assert len(dg) == 4 and dg.names[1] == "pair_000@b:poisson_counts:4"
    np.testing.assert_array_equal(dg.ref_a[1], ds.a[0])
    np.testing.assert_array_equal(dg.a[1], ds.a[0])  # side b degraded, a kept
    assert not np.array_equal(dg.b[1], ds.b[0])
    assert dg.modalities == [("mri", "pet")] * 4
    both = PairDataset.concat([ds, dg])
    assert len(both) == 6 and both.ref_b[5] is dg.ref_b[3]
    with pytest.raises(ValueError, match="unknown modality"):
        ds.with_modalities("mri", "x-ray")


def test_concat_with_task_prefix_sets_modalities():
    ds = PairDataset.concat([PairDataset([smooth_pair(32, 32)]), PairDataset([smooth_pair(32, 32)])],
                            ["ivf", "mine"])
    assert ds.modalities == [("visible", "infrared"), None]


def test_validation_scores_against_the_clean_sources():
    model = DeRUN.from_hifm(HIFMParams(n_iter=2))
    ds = PairDataset([smooth_pair(48, 48, seed=3)]).with_modalities("visible", "infrared")
    dg = ds.degraded([("a", "gaussian_noise", 4)], seed=0)
    ev = evaluate_pairs(model, dg, config=TrainConfig(device="cpu"))
    with torch.no_grad():
        f = model(torch.from_numpy(dg.a[0])[None, None], torch.from_numpy(dg.b[0])[None, None])[0, 0].numpy()
    want = rank_metrics(ds.a[0] * 255.0, ds.b[0] * 255.0, np.clip(f, 0, 1) * 255.0)
    for k, v in want.items():
        assert ev["metrics"][k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


def _cfg(**kw):
    base = dict(epochs=1, steps_per_epoch=2, batch=2, patch=32, lr=1e-3, device="cpu", val_metrics=False,
                val_initial=False, guided=False)
    base.update(kw)
    return TrainConfig(**base)


def test_training_feeds_degraded_inputs_and_scores_the_clean_pair(monkeypatch, one_thread):
    seen = {"inputs": [], "targets": []}
    real_forward, real_loss = DeRUN.forward, TrainConfig.loss

    def forward(self, a, b, *args, **kw):
        if torch.is_grad_enabled():
            seen["inputs"].append((a.clone(), b.clone()))
        return real_forward(self, a, b, *args, **kw)

    def loss(self, x, a, b, b_floor=None):
        seen["targets"].append((a.clone(), b.clone()))
        return real_loss(self, x, a, b, b_floor)

    monkeypatch.setattr(DeRUN, "forward", forward)
    monkeypatch.setattr(TrainConfig, "loss", loss)
    prs = [smooth_pair(48, 48, seed=s) for s in range(3)]
    train(prs, init=DeRUN.from_hifm(HIFMParams(n_iter=2)),
          config=_cfg(degrade=1.0, modalities=("visible", "infrared")))
    assert len(seen["inputs"]) == len(seen["targets"]) == 2
    for (ia, ib), (ta, tb) in zip(seen["inputs"], seen["targets"]):
        assert not (torch.equal(ia, ta) and torch.equal(ib, tb))  # degraded inputs, clean targets
    # degrade=0 is the clean run exactly (the degradations draw from their own generator)
    seen["inputs"].clear()
    seen["targets"].clear()
    train(prs, init=DeRUN.from_hifm(HIFMParams(n_iter=2)), config=_cfg())
    for (ia, ib), (ta, tb) in zip(seen["inputs"], seen["targets"]):
        assert torch.equal(ia, ta) and torch.equal(ib, tb)


def test_degradation_training_is_reproducible(one_thread):
    prs = [smooth_pair(48, 48, seed=s) for s in range(3)]
    c = _cfg(degrade=0.7, modalities=("phase_contrast", "fluorescence"), restore=4, seed=3)
    r1 = train(prs, init="admm", config=c)
    r2 = train(prs, init="admm", config=c)
    s1, s2 = r1.model.state_dict(), r2.model.state_dict()
    assert r1.model.config.restore == 4
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(float(v.abs().max()) > 0 for k, v in s1.items() if k.startswith("restore.out"))  # it trained R


def test_train_only_restore_trains_the_restoration_network_towards_the_clean_inputs(one_thread):
    prs = [smooth_pair(48, 48, seed=s) for s in range(3)]
    start = DeRUN.from_hifm(HIFMParams(n_iter=2), guided=True, restore=4)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    c = _cfg(degrade=1.0, modalities=("phase_contrast", "fluorescence"), restore=4, guided=True,
             train_only="restore", steps_per_epoch=3, seed=2)
    res = train(prs, init=start, config=c)
    after = res.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("restore.") for k in changed)  # the fusion stages stay as they were
    assert any(k.startswith("restore.out") for k in changed)
    # the loss of a step is the L1 distance of the restored inputs to the clean ones (independent computation)
    from napari_derun.training.restore_only import restore_loss

    a, b = (torch.from_numpy(x)[None, None] for x in prs[0])
    na, nb = a + 0.05 * torch.randn_like(a), b + 0.05 * torch.randn_like(b)
    with torch.no_grad():
        loss, parts = restore_loss(res.model, na, nb, a, b)
        ra, rb = res.model.restore(na, nb)
    want = float((ra - a).abs().mean() + (rb - b).abs().mean())
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert parts["restore_a"] + parts["restore_b"] == pytest.approx(want, rel=1e-6)


def test_train_only_restore_refuses_what_it_cannot_train():
    prs = [smooth_pair(48, 48, seed=s) for s in range(2)]
    with pytest.raises(ValueError, match="input restoration network"):
        train(prs, init=DeRUN.from_hifm(HIFMParams(n_iter=2)),
              config=_cfg(degrade=1.0, modalities=("visible", "infrared"), train_only="restore"))
    with pytest.raises(ValueError, match="degraded inputs"):
        train(prs, init=DeRUN.from_hifm(HIFMParams(n_iter=2)), config=_cfg(restore=4, train_only="restore"))
    with pytest.raises(ValueError):
        TrainConfig(train_only="stages")


def test_train_config_checks_degradation_fields():
    with pytest.raises(ValueError, match="unknown modalities"):
        TrainConfig(modalities=("visible", "sonar"))
    with pytest.raises(ValueError, match="degrade_levels"):
        TrainConfig(degrade_levels=(3, 1))
    with pytest.raises(ValueError):
        TrainConfig(degrade=1.5)
    c = TrainConfig(degrade=0.5, modalities=("mri", "ct"), degrade_levels=(2, 4))
    assert TrainConfig.from_dict(c.to_dict()) == c


# --------------------------------------------------------------------------- the restoration network
def test_untrained_restoration_network_changes_nothing():
    a, b = (torch.from_numpy(x)[None, None] for x in smooth_pair(40, 52, seed=4))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain = DeRUN.from_hifm(guided=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        withr = DeRUN.from_hifm(guided=True, restore=8)
    withr.load_state_dict({**withr.state_dict(), **plain.state_dict()})
    with torch.no_grad():
        torch.testing.assert_close(withr(a, b), plain(a, b), rtol=0, atol=0)
    r = InputRestore(8)
    ra, rb = r(a, b)
    assert torch.equal(ra, a) and torch.equal(rb, b)
    tiny_a, tiny_b = torch.rand(1, 1, 3, 2), torch.rand(1, 1, 3, 2)  # replicate padding: any size
    assert withr(tiny_a, tiny_b).shape == (1, 1, 3, 2)


def test_restoration_network_receives_gradients_and_fits_the_budget():
    m = DeRUN.from_hifm(guided=True, restore=12)
    assert m.num_parameters() < 70_000
    a, b = torch.rand(1, 1, 24, 24), torch.rand(1, 1, 24, 24)
    m(a, b).square().mean().backward()
    assert float(m.restore.out.weight.grad.abs().sum()) > 0


def test_shipped_model_gets_a_zero_restoration_network():
    from napari_derun.engine.registry import load_model
    from napari_derun.training.loop import _with_restore

    base = load_model("gfp_pc", device="cpu").module
    grown = _with_restore(base, 6)
    assert grown.config.restore == 6 and base.config.restore == 0
    a, b = (torch.from_numpy(x)[None, None] for x in smooth_pair(40, 40, seed=5))
    with torch.no_grad():
        torch.testing.assert_close(grown(a, b), base(a, b), rtol=0, atol=0)


def test_salient_term_weighs_the_salient_pixels():
    from napari_derun.core.objectives import FusionWeights, fusion_loss

    a = torch.full((1, 1, 32, 32), 0.4)
    b = torch.zeros(1, 1, 32, 32)
    b[..., 10:14, 10:14] = 0.8  # one small bright cell on a dark background
    w = FusionWeights(target="lift", salient=1.0)
    target = (a + torch.relu(b - 0.0)).clamp(0, 1)
    dim = target.clone()
    dim[..., 10:14, 10:14] -= 0.3  # the cell dimmed by 0.3
    _, parts = fusion_loss(dim, a, b, torch.zeros(1), w)
    # independent computation: every salient pixel is off by 0.3, so the weighted mean is 0.3
    assert parts["salient"] == pytest.approx(0.3, rel=1e-5)
    assert parts["intensity"] == pytest.approx(0.3 * 16 / 1024, rel=1e-5)  # the plain L1 barely sees it
    _, exact = fusion_loss(target, a, b, torch.zeros(1), w)
    assert exact["salient"] == pytest.approx(0.0, abs=1e-7)
    _, off = fusion_loss(dim, a, b, torch.zeros(1), FusionWeights(target="lift"))
    assert "salient" not in off
    with pytest.raises(ValueError, match="salient"):
        FusionWeights(salient=-1.0)


def test_degrading_without_modalities_is_refused():
    prs = [smooth_pair(48, 48, seed=s) for s in range(2)]
    with pytest.raises(ValueError, match="modalities"):
        train(prs, init=DeRUN.from_hifm(HIFMParams(n_iter=2)), config=_cfg(degrade=0.5))
