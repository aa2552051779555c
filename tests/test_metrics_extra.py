"""SD, SF, MI, Qabf, SCD, SR and the mean rank, each against an independent computation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from napari_derun.evaluation import metrics_extra as mx


def _imgs(seed=0, shape=(48, 52)):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 255, shape)
    b = np.clip(a * 0.3 + rng.normal(100, 40, shape), 0, 255)
    f = np.clip(0.5 * a + 0.5 * b + rng.normal(0, 5, shape), 0, 255)
    return a, b, f


def test_sd_and_sf_by_hand():
    a, b, f = _imgs()
    assert mx.sd(a, b, f) == pytest.approx(math.sqrt(sum((v - f.mean()) ** 2 for v in f.ravel()) / f.size))
    H, W = f.shape
    rf = sum((f[i, j] - f[i, j - 1]) ** 2 for i in range(H) for j in range(1, W)) / (H * (W - 1))
    cf = sum((f[i, j] - f[i - 1, j]) ** 2 for i in range(1, H) for j in range(W)) / ((H - 1) * W)
    assert mx.sf(a, b, f) == pytest.approx(math.sqrt(rf + cf))
    assert mx.sf(a, b, f / 255.0, data_range=1.0) == pytest.approx(math.sqrt(rf + cf))


def _entropy_bits(*arrays):
    keys = np.stack([np.clip(np.rint(x), 0, 255).astype(int).ravel() for x in arrays], 1)
    _, counts = np.unique(keys, axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def test_mi_is_joint_entropy_identity():
    a, b, f = _imgs(1)
    want = (_entropy_bits(a) + _entropy_bits(f) - _entropy_bits(a, f)) + (
        _entropy_bits(b) + _entropy_bits(f) - _entropy_bits(b, f))
    assert mx.mi(a, b, f) == pytest.approx(want, rel=1e-9)
    # MI of an image with itself is its entropy
    assert mx.mutual_information(a, a) == pytest.approx(_entropy_bits(a), rel=1e-9)


def _qabf_loop(A, B, Fi):
    """Literal port of the widely used MATLAB Qabf (VIFB metricsQabf.m), loops and all."""
    def conv_same(x, h):
        H, W = x.shape
        out = np.zeros_like(x)
        hf = h[::-1, ::-1]
        for i in range(H):
            for j in range(W):
                s = 0.0
                for u in range(3):
                    for v in range(3):
                        ii, jj = i + u - 1, j + v - 1
                        if 0 <= ii < H and 0 <= jj < W:
                            s += x[ii, jj] * hf[u, v]
                out[i, j] = s
        return out

    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
    L, Tg, kg, Dg, Ta, ka, Da = 1, 0.9994, -15, 0.5, 0.9879, -22, 0.8

    def grad(x):
        sx, sy = conv_same(x, h3), conv_same(x, h1)
        g = np.sqrt(sx**2 + sy**2)
        ang = np.zeros_like(x)
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                ang[i, j] = math.pi / 2 if sx[i, j] == 0 else math.atan(sy[i, j] / sx[i, j])
        return g, ang

    gA, aA = grad(A)
    gB, aB = grad(B)
    gF, aF = grad(Fi)

    def q(gS, aS):
        Q = np.zeros_like(gS)
        for i in range(gS.shape[0]):
            for j in range(gS.shape[1]):
                if gS[i, j] == 0 or gF[i, j] == 0:
                    G = 0.0
                elif gS[i, j] > gF[i, j]:
                    G = gF[i, j] / gS[i, j]
                else:
                    G = gS[i, j] / gF[i, j]
                Aa = abs(abs(aS[i, j] - aF[i, j]) - math.pi / 2) * 2 / math.pi
                Q[i, j] = Tg / (1 + math.exp(kg * (G - Dg))) * Ta / (1 + math.exp(ka * (Aa - Da)))
        return Q

    num = np.sum(q(gA, aA) * gA**L + q(gB, aB) * gB**L)
    return num / np.sum(gA**L + gB**L)


def test_qabf_matches_a_loop_port():
    a, b, f = _imgs(2, (20, 23))
    assert mx.qabf(a, b, f) == pytest.approx(_qabf_loop(a, b, f), rel=1e-9)
    # perfect fusion of identical sources keeps every edge: Q = Γg·Γα/(…) at G = A = 1
    q1 = mx.qabf(a, a, a)
    assert q1 == pytest.approx(0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * 0.2)), rel=1e-6)
    assert mx.qabf(a, b, np.zeros_like(a)) < 1e-3  # no edge kept: only the sigmoids floor (Qg(0) = 5.5e-4)


def test_scd_against_corrcoef():
    a, b, f = _imgs(3)
    want = np.corrcoef((f - b).ravel(), a.ravel())[0, 1] + np.corrcoef((f - a).ravel(), b.ravel())[0, 1]
    assert mx.scd(a, b, f) == pytest.approx(want, rel=1e-12)
    # the overlay a + b − c has SCD 2 exactly
    assert mx.scd(a, b, a + b - 3.0) == pytest.approx(2.0)


def test_sr_by_hand_and_extremes():
    a, b, f = _imgs(4)
    hi = b >= np.quantile(b, 0.95)
    lo = b <= np.quantile(b, 0.5)
    want = (f[hi].mean() - f[lo].mean()) / (b[hi].mean() - b[lo].mean())
    assert mx.sr(a, b, f) == pytest.approx(want)
    assert mx.sr(a, b, b) == pytest.approx(1.0)
    assert mx.sr(a, b, 255 - b) == pytest.approx(-1.0)
    assert math.isnan(mx.sr(a, np.full_like(b, 3.0), f))


def test_mean_ranks_ties_and_order():
    s = {"x": [{"EN": 3.0, "SD": 1.0}], "y": [{"EN": 2.0, "SD": 1.0}], "z": [{"EN": 1.0, "SD": float("nan")}]}
    r = mx.mean_ranks(s, metrics=("EN", "SD"))
    assert r == {"x": pytest.approx((1 + 1.5) / 2), "y": pytest.approx((2 + 1.5) / 2), "z": pytest.approx(3.0)}
    with pytest.raises(ValueError):
        mx.mean_ranks({"x": [{"EN": 1.0}], "y": []}, metrics=("EN",))


def test_rank_metrics_keys_and_copy_behaviour():
    a, b, _ = _imgs(5, (64, 64))
    m = mx.rank_metrics(a, b, a)
    assert set(m) == set(mx.RANK_METRICS) | {"SCD", "SR"}
    assert m["Qabf"] > 0.5 and m["SSIM"] > 0.5
