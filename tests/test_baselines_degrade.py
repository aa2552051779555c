"""Tests of the fusion baselines and the degradation simulators."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_derun.evaluation import baselines as B
from napari_derun.data import degrade as D


def _img(seed: int, shape=(48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    x = (x - x.min()) / (x.max() - x.min())
    return (0.1 + 0.8 * x).astype(np.float32)  # away from 0 and 1: little clipping


@pytest.fixture(scope="module")
def pair():
    return _img(1), _img(2)


# ----------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(B.BASELINES))
def test_baseline_contract(pair, name):
    a, b = pair
    fn = B.BASELINES[name]
    f = fn(a, b)
    assert f.dtype == np.float32 and f.shape == a.shape
    assert f.min() >= 0.0 and f.max() <= 1.0
    # fusing an image with itself returns it
    np.testing.assert_allclose(fn(a, a), a, atol=1e-6)
    # symmetric in the two sources
    np.testing.assert_allclose(fn(a, b), fn(b, a), atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        fn(a, b[:, :-1])
    with pytest.raises(ValueError, match="2-D"):
        fn(np.stack([a] * 3, -1), np.stack([b] * 3, -1))
    bad = b.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fn(a, bad)


def test_average_values(pair):
    a, b = pair
    np.testing.assert_allclose(B.average(a, b), (a.astype(np.float64) + b) / 2, atol=1e-7)


def test_max_abs_picks_the_active_source():
    flat = np.full((32, 32), 0.5)
    rng = np.random.default_rng(0)
    textured = np.clip(0.5 + 0.2 * rng.standard_normal((32, 32)), 0, 1)
    mixed = flat.copy()
    mixed[:, 16:] = textured[:, 16:]
    f = B.max_abs(flat, mixed)
    # the textured half comes from `mixed`, exactly
    np.testing.assert_array_equal(f[:, 20:], mixed[:, 20:].astype(np.float32))
    # two flat images: the average
    np.testing.assert_allclose(B.max_abs(np.full((8, 8), 0.2), np.full((8, 8), 0.6)), 0.4, atol=1e-7)
    with pytest.raises(ValueError):
        B.max_abs(flat, flat, sigma=0)


def test_laplacian_pyramid_keeps_details_of_both():
    a = np.full((64, 64), 0.3)
    a[20:44, 10:12] = 0.9  # a vertical line in A
    b = np.full((64, 64), 0.5)
    b[40:42, 20:60] = 0.05  # a dark horizontal line in B
    f = B.laplacian_pyramid(a, b, levels=4)
    avg = B.average(a, b)
    # both lines keep more contrast than in the average
    assert f[30, 10:12].mean() - f[30, 30] > avg[30, 10:12].mean() - avg[30, 30]
    assert f[35, 40] - f[40:42, 40].mean() > avg[35, 40] - avg[40:42, 40].mean()
    # levels=0 is the average; too many levels are clamped; odd sizes work
    np.testing.assert_allclose(B.laplacian_pyramid(a, b, levels=0), avg, atol=1e-6)
    odd = B.laplacian_pyramid(a[:37, :51], b[:37, :51], levels=50)
    assert odd.shape == (37, 51)
    with pytest.raises(ValueError, match="levels"):
        B.laplacian_pyramid(a, b, levels=-1)


# ----------------------------------------------------------------------------
# degradations
# ----------------------------------------------------------------------------
NAMES = sorted(D.DEGRADATIONS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(40, 56), (40, 56, 3)])
def test_degradation_contract(name, shape):
    rng = np.random.default_rng(4)
    img = rng.uniform(0.05, 0.95, shape).astype(np.float32)
    # level 0: identity
    np.testing.assert_array_equal(D.apply(img, name, 0, seed=1), img)
    for level in range(1, 6):
        out = D.apply(img, name, level, seed=3)
        assert out.shape == img.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert np.all(np.isfinite(out))
        # deterministic with a seed, and it does change the image
        np.testing.assert_array_equal(out, D.apply(img, name, level, seed=3))
        assert not np.array_equal(out, img)
    # uint8 input is scaled by 1/255
    u8 = (img * 255).round().astype(np.uint8)
    np.testing.assert_allclose(D.apply(u8, name, 0), u8 / 255.0, atol=1e-6)


@pytest.mark.parametrize("name", ["rain", "low_light", "gaussian_noise"])
def test_random_degradations_depend_on_seed(name):
    img = _img(5)
    assert not np.array_equal(D.apply(img, name, 3, seed=1), D.apply(img, name, 3, seed=2))
    gen = np.random.default_rng(9)
    np.testing.assert_array_equal(
        D.apply(img, name, 3, seed=np.random.default_rng(9)), D.apply(img, name, 3, seed=gen)
    )


def _series(name, img, seed=0):
    return [D.apply(img, name, lv, seed=seed).astype(np.float64) for lv in range(6)]


def test_haze_contrast_decreases():
    img = _img(6)
    outs = _series("haze", img)
    contrast = [np.mean(np.abs(o - D.HAZE_AIRLIGHT)) for o in outs]
    assert all(c1 > c2 for c1, c2 in zip(contrast, contrast[1:]))
    assert outs[5].mean() > outs[0].mean()  # brighter, towards the airlight


def test_rain_adds_more_streaks():
    img = _img(7)
    outs = _series("rain", img)
    added = [np.mean(o - img) for o in outs]
    assert added[0] == 0.0
    assert all(d1 < d2 for d1, d2 in zip(added, added[1:]))
    assert all(np.all(o >= img - 1e-6) for o in outs)  # screen blend only brightens


def test_low_light_darkens():
    img = _img(8)
    outs = _series("low_light", img)
    means = [o.mean() for o in outs]
    assert all(m1 > m2 for m1, m2 in zip(means, means[1:]))
    # relative noise (shot noise) grows: compare to the noiseless darkened image
    snr = []
    for lv in range(1, 6):
        clean = D.LOW_LIGHT_GAIN[lv] * np.power(img.astype(np.float64), D.LOW_LIGHT_GAMMA[lv])
        snr.append(clean.mean() / np.std(outs[lv] - clean))
    assert all(s1 > s2 for s1, s2 in zip(snr, snr[1:]))


def test_gaussian_noise_std_increases():
    img = np.full((64, 64), 0.5, np.float32)
    outs = _series("gaussian_noise", img, seed=1)
    stds = [np.std(o - img) for o in outs]
    assert stds[0] == 0.0
    assert all(s1 < s2 for s1, s2 in zip(stds, stds[1:]))
    np.testing.assert_allclose(stds[1:], D.NOISE_SIGMA[1:], rtol=0.1)


def test_blur_removes_detail():
    img = _img(9)
    outs = _series("blur", img)
    grad = [np.mean(np.abs(np.diff(o, axis=1))) for o in outs]
    assert all(g1 > g2 for g1, g2 in zip(grad, grad[1:]))
    np.testing.assert_allclose([o.mean() for o in outs], img.mean(), atol=1e-3)


def test_degradation_bad_arguments():
    img = _img(10)
    for level in (-1, 6, 2.5, True, None):
        with pytest.raises(ValueError, match="level"):
            D.haze(img, level)
    with pytest.raises(ValueError, match="unknown degradation"):
        D.apply(img, "snow", 1)
    with pytest.raises(ValueError, match="shape"):
        D.blur(np.zeros((4, 4, 2)), 1)
    bad = img.copy()
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match="NaN"):
        D.gaussian_noise(bad, 1)
