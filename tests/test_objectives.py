"""The training objectives: SSIM against the metric code, and what each objective prefers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_derun.evaluation import metrics
from napari_derun.data import preprocess
from napari_derun.core.losses import derun_loss
from napari_derun.core.objectives import FusionWeights, fusion_loss, objective_loss, salient_lift, ssim_against, ssim_torch
from napari_derun.data.sample_data import gfp_pc, pet_mri


def _t(x):
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))[None, None]


def test_ssim_torch_equals_the_metric():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (40, 37))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    got = float(ssim_torch(_t(x).double(), _t(y).double())[0])
    assert got == pytest.approx(metrics.ssim_index(x, y, data_range=1.0), abs=1e-6)


def test_ssim_against_several_references_equals_the_metric():
    # the training loss's one-pass SSIM of x against a and b: each equals the metric code's SSIM
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (2, 33, 45))
    refs = [np.clip(x + rng.normal(0, s, x.shape), 0, 1) for s in (0.05, 0.3)]
    got = ssim_against(torch.as_tensor(x)[:, None], *(torch.as_tensor(r)[:, None] for r in refs))
    assert got.shape == (2, 2)
    for i, r in enumerate(refs):
        for k in range(2):
            assert float(got[i, k]) == pytest.approx(metrics.ssim_index(x[k], r[k], data_range=1.0), abs=1e-6)


@pytest.mark.parametrize("band_max", [2048, 8])
def test_window_means_equal_the_11x11_gaussian_window(monkeypatch, band_max):
    # the loss's separable window (banded products, or two convolutions above BAND_MAX_SIDE) against the
    # 2-D window applied by explicit sums, values and gradients, in float64
    from napari_derun.core import objectives
    monkeypatch.setattr(objectives, "BAND_MAX_SIDE", band_max)
    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.uniform(0, 1, (2, 3, 19, 14)), dtype=torch.float64).requires_grad_()
    r = np.arange(11) - 5.0
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / g.sum() ** 2
    xn = x.detach().numpy()
    ref = np.zeros((2, 3, 9, 4))
    for i in range(9):
        for j in range(4):
            ref[:, :, i, j] = (xn[:, :, i:i + 11, j:j + 11] * w).sum(axis=(-2, -1))
    got = objectives._window_means(x)
    np.testing.assert_allclose(got.detach().numpy(), ref, atol=1e-12)
    # gradient of Σ c·means: every input pixel collects the window weights of the outputs it reaches
    c = rng.normal(size=ref.shape)
    (got * torch.as_tensor(c)).sum().backward()
    gref = np.zeros(xn.shape)
    for i in range(9):
        for j in range(4):
            gref[:, :, i:i + 11, j:j + 11] += c[:, :, i, j, None, None] * w
    np.testing.assert_allclose(x.grad.numpy(), gref, atol=1e-12)


def test_salient_lift_definition():
    a = torch.tensor([[[[0.5, 0.5, 0.9]]]])
    b = torch.tensor([[[[0.1, 0.6, 0.8]]]])
    # b0 = median(b) = 0.6: a + relu(b − 0.6), clipped
    torch.testing.assert_close(salient_lift(a, b), torch.tensor([[[[0.5, 0.5, 1.0]]]]))
    torch.testing.assert_close(salient_lift(a, b, torch.tensor([0.0])), torch.tensor([[[[0.6, 1.0, 1.0]]]]))
    # gain 2: a + 2 relu(b − 0.3) = [0.5, 1.1, 1.9] → clipped
    torch.testing.assert_close(salient_lift(a, b, torch.tensor([0.3]), gain=2.0), torch.tensor([[[[0.5, 1.0, 1.0]]]]))
    torch.testing.assert_close(salient_lift(a * 0.5, b, torch.tensor([0.5]), gain=1.5),
                               torch.tensor([[[[0.25, 0.4, 0.9]]]]))


def test_lift_gain_reaches_the_loss():
    a = torch.full((1, 1, 16, 16), 0.3)
    b = torch.zeros(1, 1, 16, 16)
    b[..., 4:12, 4:12] = 0.4  # median 0 → target a + g·b inside the square
    x = a + 1.5 * b
    low = float(fusion_loss(x, a, b, weights=FusionWeights(target="lift", lift_gain=1.5, gradient=0, ssim=0,
                                                           lgde=0))[0])
    high = float(fusion_loss(x, a, b, weights=FusionWeights(target="lift", gradient=0, ssim=0, lgde=0))[0])
    assert low == pytest.approx(0.0, abs=1e-7)
    # gain 1: target a + b, |x − T| = 0.5·0.4 on a quarter of the pixels, weight 5
    assert high == pytest.approx(5 * 0.25 * 0.2, rel=1e-5)
    with pytest.raises(ValueError, match="lift_gain"):
        FusionWeights(lift_gain=float("nan"))


def _sample_pairs():
    out = []
    for make in (gfp_pc, pet_mri):
        a, b = make()
        p = preprocess.prepare_pair(a, b)
        out.append((p.a, p.b))
    return out


def _sample(name):
    a, b = {"gfp_pc": gfp_pc, "pet_mri": pet_mri}[name]()
    p = preprocess.prepare_pair(a, b)
    return [(p.a, p.b)]


def _real_pairs(root, task, n=3):
    from napari_derun.training.datasets import PairDataset

    ds = PairDataset(root / task, select=lambda i, name: i < n)
    return list(zip(ds.a, ds.b))


def _check_fusion_beats_copies(pairs, target):
    w = FusionWeights(target=target)
    for a, b in pairs:
        A, B = _t(a), _t(b)
        fused = salient_lift(A, B) if target == "lift" else torch.maximum(A, B)
        lf = float(fusion_loss(fused, A, B, weights=w)[0])
        la = float(fusion_loss(A, A, B, weights=w)[0])
        lb = float(fusion_loss(B, A, B, weights=w)[0])
        assert lf < la and lf < lb, (target, lf, la, lb)
        # the paper's Eq. 14 prefers the copy of the structural image to this fusion
        assert float(derun_loss(A, A, B)[0]) < float(derun_loss(fused, A, B)[0])


# phase contrast is bright everywhere, so max(a, b) is nearly a copy of a there: GFP data use "lift"
@pytest.mark.parametrize("sample,target", [("gfp_pc", "lift"), ("pet_mri", "max"), ("pet_mri", "lift")])
def test_fusion_objective_ranks_fusion_below_both_copies_on_samples(sample, target):
    _check_fusion_beats_copies(_sample(sample), target)


@pytest.mark.parametrize("task,target", [("gfp_pc", "lift"), ("ivf", "lift"), ("pet_mri", "max"),
                                         ("ct_mri", "max"), ("spect_mri", "max")])
@pytest.mark.slow
def test_fusion_objective_ranks_fusion_below_both_copies_on_real_pairs(shared_data, task, target):
    _check_fusion_beats_copies(_real_pairs(shared_data, task), target)


def test_objective_dispatch_and_validation():
    a, b = _sample_pairs()[0]
    A, B = _t(a), _t(b)
    loss, parts = objective_loss("paper", A, A, B)
    assert set(parts) == {"pixel", "lgde"}
    loss, parts = objective_loss("fusion", A, A, B)
    assert set(parts) == {"intensity", "gradient", "ssim", "lgde"} and loss > 0
    with pytest.raises(ValueError, match="unknown objective"):
        objective_loss("nope", A, A, B)
    with pytest.raises(ValueError, match="intensity target"):
        FusionWeights(target="min")
    with pytest.raises(ValueError, match="finite number"):
        FusionWeights(gradient=-1.0)


def test_fusion_loss_has_gradients():
    a, b = _sample_pairs()[1]
    x = _t(0.5 * (a + b)).requires_grad_(True)
    loss, _ = fusion_loss(x, _t(a), _t(b))
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
