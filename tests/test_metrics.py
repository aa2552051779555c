"""Tests of napari_derun.evaluation.metrics against independent computations.

References: scikit-image (SSIM, entropy), sewar (pixel VIF), hand-written loops of
the published formulas (UIQI, fast-FMI) and hand-worked small arrays (PSNR, AG).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_derun.evaluation import metrics as M

DATA = Path(__file__).parents[2] / "shared" / "data"


# ----------------------------------------------------------------------------
# test images
# ----------------------------------------------------------------------------
def _texture(seed: int, shape=(64, 64), sigma=2.0) -> np.ndarray:
    """Smooth random texture with a bright square, on 0-255."""
    rng = np.random.default_rng(seed)
    x = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    x = (x - x.min()) / (x.max() - x.min())
    h, w = shape
    x[h // 4 : h // 2, w // 3 : 2 * w // 3] += 0.5 * (seed % 2 + 1)
    x = (x - x.min()) / (x.max() - x.min())
    return 255.0 * x


@pytest.fixture(scope="module")
def triple():
    a = _texture(1)
    b = _texture(2)
    f = 0.5 * (a + b)
    return a, b, f


# ----------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------
def test_ssim_matches_skimage(triple):
    from skimage.metrics import structural_similarity

    a, b, f = triple
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    ref_a = structural_similarity(a, f, **kw)
    ref_b = structural_similarity(b, f, **kw)
    assert M.ssim_index(a, f) == pytest.approx(ref_a, abs=1e-10)
    assert M.ssim(a, b, f) == pytest.approx(0.5 * (ref_a + ref_b), abs=1e-10)
    assert 0.0 < M.ssim(a, b, f) < 1.0


def test_ssim_identity_and_data_range(triple):
    a, b, f = triple
    assert M.ssim(a, a, a) == pytest.approx(1.0, abs=1e-12)
    # same value when the inputs are given on [0, 1]
    assert M.ssim(a / 255, b / 255, f / 255, data_range=1.0) == pytest.approx(M.ssim(a, b, f), abs=1e-12)


# ----------------------------------------------------------------------------
# PSNR and AG: hand-worked
# ----------------------------------------------------------------------------
def test_psnr_hand_worked():
    a = np.zeros((2, 2))
    f = np.array([[10.0, 0.0], [0.0, 0.0]])
    b = f.copy()
    # MSE(A,F) = 100 / 4 = 25, MSE(B,F) = 0  ->  MSE = 12.5
    assert M.psnr(a, b, f) == pytest.approx(10 * math.log10(255**2 / 12.5), abs=1e-12)
    # all 255 away -> MSE = 255^2 -> 0 dB
    assert M.psnr(np.zeros((3, 3)), np.zeros((3, 3)), np.full((3, 3), 255.0)) == pytest.approx(0.0, abs=1e-12)
    assert M.psnr(a, a, a) == math.inf
    assert M.psnr(a / 255, b / 255, f / 255, data_range=1.0) == pytest.approx(M.psnr(a, b, f), abs=1e-9)


def test_ag_hand_worked():
    # single bright pixel: np.gradient gives gx = +-9 left/right, gy = +-9 above/below,
    # so four pixels have sqrt(81 / 2) and the mean over 9 pixels is 4 * 9 / sqrt(2) / 9.
    f = np.zeros((3, 3))
    f[1, 1] = 9.0
    assert M.average_gradient(f) == pytest.approx(2 * math.sqrt(2), abs=1e-12)
    z = np.zeros((3, 3))
    assert M.ag(z, z, f) == pytest.approx(2 * math.sqrt(2), abs=1e-12)
    # ramp of slope 3 along x: gx = 3 everywhere, gy = 0
    ramp = np.tile(3.0 * np.arange(6), (4, 1))
    assert M.average_gradient(ramp) == pytest.approx(3 / math.sqrt(2), abs=1e-12)
    assert M.average_gradient(np.full((5, 5), 17.0)) == 0.0


# ----------------------------------------------------------------------------
# EN
# ----------------------------------------------------------------------------
def test_entropy_matches_skimage(triple):
    from skimage.measure import shannon_entropy

    a, b, f = triple
    u8 = np.round(f).astype(np.uint8)
    assert M.entropy(u8) == pytest.approx(shannon_entropy(u8, base=2), abs=1e-12)
    assert M.en(a, b, u8) == pytest.approx(shannon_entropy(u8, base=2), abs=1e-12)
    # two equiprobable levels = 1 bit; constant = 0 bits
    two = np.zeros((4, 4))
    two[:2] = 200
    assert M.entropy(two) == pytest.approx(1.0, abs=1e-12)
    assert M.entropy(np.full((4, 4), 3.0)) == 0.0
    # all 256 levels equally often = 8 bits
    assert M.entropy(np.arange(256.0).reshape(16, 16)) == pytest.approx(8.0, abs=1e-12)


# ----------------------------------------------------------------------------
# UIQI
# ----------------------------------------------------------------------------
def _uiqi_loop(x: np.ndarray, y: np.ndarray, n: int = 8) -> float:
    """Straightforward Wang-Bovik Q: loop over every n x n window and average."""
    qs = []
    for i in range(x.shape[0] - n + 1):
        for j in range(x.shape[1] - n + 1):
            wx = x[i : i + n, j : j + n].ravel()
            wy = y[i : i + n, j : j + n].ravel()
            mx, my = wx.mean(), wy.mean()
            vx, vy = wx.var(), wy.var()
            cxy = np.mean((wx - mx) * (wy - my))
            lum = mx**2 + my**2
            if vx == 0 and vy == 0:
                q = 2 * mx * my / lum if lum > 0 else 1.0
            elif lum == 0:
                q = 1.0
            else:
                q = 4 * cxy * mx * my / ((vx + vy) * lum)
            qs.append(q)
    return float(np.mean(qs))


def test_uiqi_matches_hand_loop():
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 255, (16, 16))
    y = 0.6 * x + rng.uniform(0, 100, (16, 16))
    # a flat patch in both images (both-constant and one-constant windows)
    x[:9, :9] = 120.0
    y[:9, :9] = 80.0
    y[10:, 10:] = 30.0
    assert M.uiqi_index(x, y) == pytest.approx(_uiqi_loop(x, y), abs=1e-10)
    z = rng.uniform(0, 255, (16, 16))
    assert M.uiqi(x, z, y) == pytest.approx(0.5 * (_uiqi_loop(x, y) + _uiqi_loop(z, y)), abs=1e-10)


def test_uiqi_noise_is_near_zero_and_identity_is_one():
    rng = np.random.default_rng(7)
    u = rng.uniform(0, 255, (64, 64))
    v = rng.uniform(0, 255, (64, 64))
    assert abs(M.uiqi_index(u, v)) < 0.05  # sewar's uqi gives ~0.73 here
    assert M.uiqi(u, u, u) == pytest.approx(1.0, abs=1e-12)
    # constant images: luminance term only, with the FLAT_TOL² stabiliser
    c1, c2 = np.full((10, 10), 100.0), np.full((10, 10), 50.0)
    c = M.FLAT_TOL**2
    assert M.uiqi_index(c1, c2) == pytest.approx((2 * 100 * 50 + c) / (100**2 + 50**2 + c), abs=1e-12)
    assert M.uiqi_index(c1, c2) == pytest.approx(0.8, abs=1e-9)  # the reference's 2·100·50/(100²+50²)


# ----------------------------------------------------------------------------
# VIF
# ----------------------------------------------------------------------------
def test_vif_matches_sewar_per_source(triple):
    from sewar.full_ref import vifp as sewar_vifp

    a, b, f = triple
    va = sewar_vifp(a, f, sigma_nsq=2)
    vb = sewar_vifp(b, f, sigma_nsq=2)
    assert M.vifp(a, f) == pytest.approx(va, rel=1e-9)
    assert M.vifp(b, f) == pytest.approx(vb, rel=1e-9)
    assert M.vif(a, b, f) == pytest.approx(va + vb, rel=1e-9)


def test_vif_limits():
    a = _texture(3, (48, 48))
    assert M.vif(a, a, a) == pytest.approx(2.0, abs=1e-9)
    c = np.full((48, 48), 90.0)
    assert M.vifp(c, a) == 1.0  # 0/0 defined as 1 (constant reference)
    with pytest.raises(ValueError, match="at least 41"):
        M.vif(np.zeros((40, 60)), np.zeros((40, 60)), np.zeros((40, 60)))


# ----------------------------------------------------------------------------
# FMI
# ----------------------------------------------------------------------------
def _fmi_window_reference(xw: np.ndarray, fw: np.ndarray) -> float:
    """Fast-FMI of one 3x3 window pair, written literally after Haghighat's loops."""
    if np.array_equal(xw, fw):
        return 1.0

    def norm(w):
        if w.max() == w.min():
            return np.ones_like(w)
        return (w - w.min()) / (w.max() - w.min())

    xs = norm(xw).ravel(order="F")
    fs = norm(fw).ravel(order="F")
    n = xs.size
    xp, fp = xs / xs.sum(), fs / fs.sum()
    xc, fc = np.cumsum(xp), np.cumsum(fp)
    xt, ft = xp - xp.mean(), fp - fp.mean()
    s = float(np.sum(xt * ft))
    c = 0.0 if (s == 0 or xw.max() == xw.min() or fw.max() == fw.min()) else s / math.sqrt(
        np.sum(xt * xt) * np.sum(ft * ft)
    )
    i1 = np.arange(1, n + 1)
    xsd = math.sqrt(max(np.sum(i1**2 * xp) - np.sum(i1 * xp) ** 2, 0.0))
    fsd = math.sqrt(max(np.sum(i1**2 * fp) - np.sum(i1 * fp) ** 2, 0.0))
    if np.count_nonzero(xs) == 1:
        xsd = 0.0
    if np.count_nonzero(fs) == 1:
        fsd = 0.0

    def bound(u, v):
        return min(u, v) if c >= 0 else max(u + v - 1.0, 0.0)

    if xsd == 0 or fsd == 0 or c == 0:
        w = 0.0
    else:
        cov = sum(bound(fc[i], xc[j]) - fc[i] * xc[j] for i in range(n) for j in range(n))
        w = c / (cov / (fsd * xsd))
    hj = 0.0
    for i in range(n):
        for j in range(n):
            fi1 = fc[i - 1] if i > 0 else 0.0
            xj1 = xc[j - 1] if j > 0 else 0.0
            jb = bound(fc[i], xc[j]) - (bound(fi1, xc[j]) if i > 0 else 0.0)
            jb -= bound(fc[i], xj1) if j > 0 else 0.0
            jb += bound(fi1, xj1) if (i > 0 and j > 0) else 0.0
            jp = w * jb + (1 - w) * fp[i] * xp[j]
            if jp != 0:
                hj += -jp * math.log2(abs(jp))
    hx = -sum(p * math.log2(p) for p in xp if p > 0)
    hf = -sum(p * math.log2(p) for p in fp if p > 0)
    mi = hx + hf - hj
    return 0.0 if mi == 0 else 2 * mi / (hx + hf)


def _fmi_pair_reference(x: np.ndarray, f: np.ndarray) -> float:
    vals = [
        _fmi_window_reference(x[i : i + 3, j : j + 3], f[i : i + 3, j : j + 3])
        for i in range(x.shape[0] - 2)
        for j in range(x.shape[1] - 2)
    ]
    return float(np.mean(vals))


def test_fmi_matches_reference_loop():
    rng = np.random.default_rng(11)
    a = np.round(rng.uniform(0, 255, (8, 9)))
    b = np.round(rng.uniform(0, 255, (8, 9)))
    f = np.round(0.7 * a + 0.3 * b)
    f[:3, :3] = a[:3, :3]  # an identical window
    a[5:, 5:] = 40.0  # flat windows in A
    f[6:, :3] = 7.0  # flat windows in F
    b[0, :] = 0.0
    b[1, :] = 0.0
    b[2, 4] = 200.0  # a single-mass window in B
    assert M.fmi_pair(a, f) == pytest.approx(_fmi_pair_reference(a, f), abs=1e-9)
    assert M.fmi_pair(b, f) == pytest.approx(_fmi_pair_reference(b, f), abs=1e-9)
    expected = 0.5 * (_fmi_pair_reference(a, f) + _fmi_pair_reference(b, f))
    assert M.fmi(a, b, f) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("feature", M.FMI_FEATURES)
def test_fmi_identity_and_symmetry(triple, feature):
    a, b, f = triple
    assert M.fmi(a, a, a, feature=feature) == 1.0
    v = M.fmi(a, b, f, feature=feature)
    assert v == pytest.approx(M.fmi(b, a, f, feature=feature), abs=1e-12)
    assert 0.0 < v < 1.0


def test_fmi_limits():
    c1 = np.full((12, 12), 10.0)
    c2 = np.full((12, 12), 200.0)
    assert M.fmi_pair(c1, c2) == 0.0  # two different constants share no information
    assert M.fmi(c1, c2, c1) == pytest.approx(0.5)  # A = F -> 1, B-F -> 0
    rng = np.random.default_rng(2)
    a = _texture(4)
    noise = rng.uniform(0, 255, a.shape)
    assert M.fmi_pair(a, noise) < M.fmi_pair(a, 0.9 * a + 10)
    with pytest.raises(ValueError, match="feature"):
        M.fmi(a, a, a, feature="edges")
    with pytest.raises(ValueError, match="window"):
        M.fmi(a, a, a, window=4)


# ----------------------------------------------------------------------------
# phase congruency and Qp
# ----------------------------------------------------------------------------
def test_phase_congruency_step_edge_and_constant():
    x = np.full((64, 64), 20.0)
    x[:, 32:] = 220.0
    pc, big_m, small_m = M.phase_congruency(x)
    assert pc.shape == big_m.shape == small_m.shape == (64, 64)
    assert np.all(np.isfinite(pc)) and pc.min() >= 0.0 and pc.max() <= 1.0
    assert pc[:, 31:33].min() > 0.5  # on the edge
    assert pc[:, 10:22].max() < 0.1  # far from it
    assert big_m[32, 31] > big_m[32, 16]
    # rotating the image by 90 degrees moves the edge, PC stays (filters are symmetric)
    pc_t, _, _ = M.phase_congruency(x.T)
    np.testing.assert_allclose(pc_t, pc.T, atol=1e-6)
    pc0, m0, mm0 = M.phase_congruency(np.full((32, 32), 7.0))
    assert np.abs(pc0).max() < 1e-9
    assert np.all(np.isfinite(m0)) and np.all(np.isfinite(mm0))


def test_qp_identity_is_best_and_symmetric(triple):
    a, b, f = triple
    q_same, comps = M.qp(a, a, a, return_components=True)
    assert q_same == pytest.approx(np.prod(comps))
    assert 0.9 < q_same <= 1.0  # the fused map is not masked, so slightly < 1
    rng = np.random.default_rng(3)
    noisy = a + rng.normal(0, 20, a.shape)
    assert q_same > M.qp(a, a, noisy)
    assert q_same > M.qp(a, a, 0.5 * (a + b))
    assert M.qp(a, b, f) == pytest.approx(M.qp(b, a, f), abs=1e-12)
    assert 0.0 < M.qp(a, b, f) < 1.0


def test_qp_constant_sources_defined():
    c = np.full((32, 32), 80.0)
    assert M.qp(c, c, c) == 1.0  # no source feature: nothing lost (documented)
    assert np.isfinite(M.qp(c, c + 10, _texture(5, (32, 32))))


# ----------------------------------------------------------------------------
# all_metrics, input checks, constant images
# ----------------------------------------------------------------------------
def test_all_metrics_order_and_scale(triple):
    a, b, f = triple
    res = M.all_metrics(a, b, f)
    assert tuple(res) == M.METRIC_NAMES == ("SSIM", "PSNR", "AG", "FMI", "VIF", "EN", "UIQI", "Qp")
    assert all(isinstance(v, float) and math.isfinite(v) for v in res.values())
    for name in M.METRIC_NAMES:
        assert res[name] == pytest.approx(M.METRICS[name](a, b, f), abs=1e-12)
    res01 = M.all_metrics(a / 255, b / 255, f / 255, data_range=1.0)
    for name in M.METRIC_NAMES:
        assert res01[name] == pytest.approx(res[name], rel=1e-6, abs=1e-9), name


def test_all_metrics_constant_images_have_no_nan():
    c = np.full((48, 48), 50.0)
    d = np.full((48, 48), 100.0)
    same = M.all_metrics(c, c, c)
    assert same == {
        "SSIM": 1.0, "PSNR": math.inf, "AG": 0.0, "FMI": 1.0,
        "VIF": 2.0, "EN": 0.0, "UIQI": 1.0, "Qp": 1.0,
    }
    other = M.all_metrics(c, d, c)
    assert not any(math.isnan(v) for v in other.values())
    assert other["UIQI"] == pytest.approx(0.5 * (1.0 + 0.8))
    assert other["FMI"] == pytest.approx(0.5)


@pytest.mark.parametrize("name", M.METRIC_NAMES)
def test_bad_inputs_raise(name):
    fn = M.METRICS[name]
    good = np.zeros((48, 48))
    with pytest.raises(ValueError, match="same shape"):
        fn(good, good, np.zeros((48, 50)))
    bad = good.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fn(good, bad, good)
    bad[3, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        fn(good, good, bad)
    with pytest.raises(ValueError, match="2-D"):
        fn(np.zeros((48, 48, 3)), good, good)
    with pytest.raises(ValueError, match="data_range"):
        fn(good, good, good, data_range=0)


# ----------------------------------------------------------------------------
# real data (skipped when ../shared/data is absent)
# ----------------------------------------------------------------------------
@pytest.mark.skipif(not (DATA / "ivf").is_dir(), reason="shared data not available")
def test_real_pair_metrics_are_sane():
    from napari_derun.evaluation.baselines import average
    from napari_derun.io.planes import find_pairs, read_image, to_gray01

    pairs, _ = find_pairs(DATA / "ivf")
    assert pairs
    _, pa, pb = pairs[0]
    a = to_gray01(read_image(pa))[:128, :128]
    b = to_gray01(read_image(pb))[:128, :128]
    f = average(a, b)
    res = M.all_metrics(a, b, f, data_range=1.0)
    assert all(math.isfinite(v) for v in res.values())
    assert 0 < res["SSIM"] <= 1 and 0 < res["UIQI"] <= 1 and 0 < res["FMI"] < 1
    assert 0 < res["EN"] <= 8 and res["AG"] > 0 and res["PSNR"] > 10
    # the fused average keeps more of A than an unrelated image does
    assert res["SSIM"] > M.ssim(a, b, b[::-1, ::-1], data_range=1.0)


def test_uiqi_stable_under_roundoff():
    """Float round-off (1e-6 grey levels) in a flat black background must not move UIQI."""
    rng = np.random.default_rng(3)
    a = np.zeros((64, 64))
    a[16:48, 16:48] = rng.uniform(50, 200, (32, 32))
    b = np.zeros((64, 64))
    b[24:56, 8:40] = rng.uniform(30, 250, (32, 32))
    f = np.maximum(a, b)
    q0 = M.uiqi(a, b, f)
    q1 = M.uiqi(a, b, f + 1e-6 * rng.random(f.shape))
    assert abs(q0 - q1) < 1e-6
    # flat background (both windows zero) counts as perfect agreement
    assert M.uiqi(a, b, f) > M.uiqi(a, b, np.clip(f + 1.0, 0, 255))
