"""Classical restoration (data.restoration): the restore-then-fuse baseline and the ``restore=`` option of
``fuse`` and ``napari-derun fuse --restore-a/--restore-b``."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

import napari_derun as nd
from helpers import smooth_pair
from napari_derun.data import degrade, preprocess, restoration


def _smooth(h=96, w=80, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(ndi.gaussian_filter(rng.uniform(0.2, 0.8, (h, w)), 4.0) * 1.5 - 0.25, 0, 1)


def test_noise_estimate_and_denoising():
    clean = _smooth()
    rng = np.random.default_rng(1)
    for sigma in (0.02, 0.05):
        noisy = clean + rng.normal(0, sigma, clean.shape)
        assert restoration.estimate_noise(noisy) == pytest.approx(sigma, rel=0.15)
        den = restoration.denoise(np.clip(noisy, 0, 1))
        assert den.dtype == np.float32 and den.shape == clean.shape
        # non-local means removes most of the noise (mean squared error at least 4x lower)
        assert np.mean((den - clean) ** 2) < 0.25 * np.mean((np.clip(noisy, 0, 1) - clean) ** 2)
    assert restoration.estimate_noise(clean) < 0.005


def test_noise_score_against_a_direct_computation():
    """``noise_score`` on a small image, recomputed with explicit loops: Immerkær's 3 × 3 response and the Sobel
    gradient magnitude at every interior pixel (edge pixels replicated by reflection), the 10 % with the
    strongest gradient dropped, the mean absolute response scaled by sqrt(pi/2)/6."""
    x = np.random.default_rng(11).random((14, 17))
    p = np.pad(x, 1, mode="symmetric")  # scipy's "reflect" is numpy's "symmetric"
    N = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]
    SX = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    resp, grad = [], []
    for i in range(2, 14):
        for j in range(2, 17):
            win = p[i - 1:i + 2, j - 1:j + 2]
            resp.append(abs(sum(N[u][v] * win[u][v] for u in range(3) for v in range(3))))
            gx = sum(SX[u][v] * win[u][v] for u in range(3) for v in range(3))
            gy = sum(SX[v][u] * win[u][v] for u in range(3) for v in range(3))
            grad.append(np.hypot(gx, gy))
    resp, grad = np.array(resp), np.array(grad)
    keep = grad <= np.quantile(grad, 0.9)
    want = np.sqrt(np.pi / 2) * resp[keep].mean() / 6
    assert restoration.noise_score(x) == pytest.approx(want, rel=1e-9)


def test_noise_score_discounts_edges():
    """Fine texture inflates Immerkær's estimate over all pixels (its kernel cancels straight edges, not
    texture); leaving out the strongest gradients brings it back near the true noise std."""
    rng = np.random.default_rng(12)
    img = np.full((192, 192), 0.4)
    img[:54, :54] += 0.3 * rng.random((54, 54))  # a textured corner, 8 % of the image
    noisy = img + rng.normal(0, 0.02, img.shape)
    assert restoration.estimate_noise(noisy) > 1.2 * 0.02
    assert restoration.noise_score(noisy) == pytest.approx(0.02, rel=0.1)


def test_auto_denoises_only_the_noisy_planes():
    """``"auto"``: a clean plane passes unchanged, a noisy one is denoised exactly as ``"noise"`` would; per plane."""
    clean = _smooth(seed=3).astype(np.float32)
    noisy = np.clip(clean + np.random.default_rng(4).normal(0, 0.06, clean.shape), 0, 1).astype(np.float32)
    assert restoration.noise_score(clean) < restoration.NOISE_THRESHOLD < restoration.noise_score(noisy)
    np.testing.assert_array_equal(restoration.restore(clean, "auto"), clean)
    np.testing.assert_array_equal(restoration.restore(noisy, "auto"), restoration.denoise(noisy))
    got = restoration.restore_planes(np.stack([clean, noisy]), "auto", (1, 2))
    np.testing.assert_array_equal(got[0], clean)
    assert np.mean((got[1] - clean) ** 2) < 0.25 * np.mean((noisy - clean) ** 2)
    assert "auto" in restoration.OFFERED


def test_stripe_score_of_pure_column_offsets():
    """A plane made of column offsets alone: the score is the std over columns of each offset minus the mean of
    its 9 neighbours along the row (reflected at the edges), computed here by an explicit loop; its transpose
    (row stripes, not an infrared fixed pattern) scores minus the same."""
    c = np.random.default_rng(5).normal(0.5, 0.05, 64)
    x = np.tile(c, (48, 1))
    padded = np.concatenate([c[3::-1], c, c[:-5:-1]])  # reflect: d c b a | a b c d ... | ... d c b a
    expect = np.std([c[j] - padded[j:j + 9].mean() for j in range(64)])
    assert restoration.stripe_score(x) == pytest.approx(expect, rel=1e-9)
    assert restoration.stripe_score(x.T.copy()) == pytest.approx(-restoration.stripe_score(x.T.T), rel=1e-9)
    assert restoration.stripe_score(x.T.copy()) < 0


def test_auto_destripes_only_a_striped_plane():
    """``"auto"`` on infrared-like column noise: the striped plane is destriped exactly as ``"stripe_noise"``
    would and comes closer to the clean one; the clean plane and a noisy (unstriped) one are left to the
    noise rule."""
    clean = _smooth(seed=6).astype(np.float32)
    rng = np.random.default_rng(7)
    striped = np.clip(clean + rng.normal(0, 0.06, (1, clean.shape[1])), 0, 1).astype(np.float32)
    assert restoration.stripe_score(clean) < restoration.STRIPE_THRESHOLD < restoration.stripe_score(striped)
    got = restoration.restore(striped, "auto")
    np.testing.assert_array_equal(got, restoration.restore(striped, "stripe_noise"))
    assert np.mean((got - clean) ** 2) < 0.25 * np.mean((striped - clean) ** 2)
    np.testing.assert_array_equal(restoration.restore(clean, "auto"), clean)
    noisy = np.clip(clean + rng.normal(0, 0.06, clean.shape), 0, 1).astype(np.float32)
    assert restoration.stripe_score(noisy) < restoration.STRIPE_THRESHOLD
    np.testing.assert_array_equal(restoration.restore(noisy, "auto"), restoration.denoise(noisy))


def test_stretch_and_background_and_unknown_names():
    x = _smooth(seed=2)
    lo, hi = np.percentile(x, (1, 99))
    np.testing.assert_allclose(restoration.stretch(x), np.clip((x - lo) / (hi - lo), 0, 1), atol=1e-6)
    # a smooth offset added to a dark image with bright spots comes off again
    spots = np.zeros((96, 96))
    spots[::16, ::16] = 1.0
    spots = ndi.gaussian_filter(spots, 1.5) * 20
    yy = np.mgrid[0:96, 0:96][0] / 96
    with_bg = np.clip(spots + 0.3 * yy, 0, 1)
    err_before = np.abs(with_bg - np.clip(spots, 0, 1)).mean()
    assert np.abs(restoration.restore(with_bg, "background") - np.clip(spots, 0, 1)).mean() < 0.3 * err_before
    with pytest.raises(ValueError, match="choose one of"):
        restoration.restore(x, "fog")
    with pytest.raises(ValueError, match="grey"):
        restoration.restore(np.stack([x, x], -1), "noise")


def test_restore_planes_walks_planes_and_channels():
    planes = [np.clip(_smooth(seed=s) + np.random.default_rng(s).normal(0, 0.04, (96, 80)), 0, 1)
              for s in range(3)]
    zyx = np.stack(planes).astype(np.float32)
    got = restoration.restore_planes(zyx, "noise", (1, 2))
    for i in range(3):
        np.testing.assert_array_equal(got[i], restoration.denoise(zyx[i]))
    yxc = np.moveaxis(zyx, 0, -1)  # three colour channels
    got_c = restoration.restore_planes(yxc, "noise", (0, 1))
    np.testing.assert_array_equal(np.moveaxis(got_c, -1, 0), got)


def test_fuse_restore_is_restore_then_fuse():
    """``fuse(..., restore={"b": "noise"})`` on a uint16 stack equals restoring b's planes (mapped to [0, 1] by the
    stack's range) with non-local means, then fusing; the provenance records it."""
    a, b = smooth_pair(64, 56, seed=4)
    rng = np.random.default_rng(5)
    a16 = (300 + a * 20000).astype(np.uint16)[None].repeat(2, 0)
    b16 = np.clip(100 + (b + rng.normal(0, 0.08, (2, 64, 56))) * 15000, 0, 65535).astype(np.uint16)
    res = nd.fuse(a16, b16, model="admm", device="cpu", axes="ZYX", restore={"b": "shot_noise"}, return_result=True)
    a01 = preprocess.to_float01(a16, preprocess.normalization_range(a16))
    b01 = preprocess.to_float01(b16, preprocess.normalization_range(b16))
    b_r = np.stack([restoration.denoise(p) for p in b01])
    expected = nd.fuse(a01, b_r, model="admm", device="cpu", axes="ZYX")
    np.testing.assert_array_equal(res.fused, expected)
    assert res.provenance["parameters"]["restore"] == {"b": "shot_noise"}
    # the ranges reported are those of the inputs as given (what maps them to [0, 1])
    np.testing.assert_allclose(res.ranges[1], preprocess.normalization_range(b16))
    plain = nd.fuse(a16, b16, model="admm", device="cpu", axes="ZYX")
    assert np.abs(plain - expected).max() > 1e-3  # restoring changed the result


def test_fuse_restore_refuses_bad_requests():
    import dask.array as da

    a, b = smooth_pair(48, 40)
    with pytest.raises(ValueError, match="keys 'a' and/or 'b'"):
        nd.fuse(a, b, model="admm", device="cpu", restore={"c": "noise"})
    with pytest.raises(ValueError, match="restore\\['b'\\] = 'fog': choose one of"):
        nd.fuse(a, b, model="admm", device="cpu", restore={"b": "fog"})
    with pytest.raises(ValueError, match="numpy inputs"):
        nd.fuse(da.from_array(a), da.from_array(b), model="admm", device="cpu", restore={"b": "noise"})


def test_cli_restore_options(tmp_path, capsys):
    import tifffile

    from napari_derun.cli import main
    from napari_derun.io.images import read_provenance

    a, b = smooth_pair(64, 56, seed=6)
    hazy = degrade.haze(a, 3, seed=0)
    tifffile.imwrite(tmp_path / "A.tif", hazy.astype(np.float32))
    tifffile.imwrite(tmp_path / "B.tif", b.astype(np.float32))
    assert main(["fuse", str(tmp_path / "A.tif"), str(tmp_path / "B.tif"), "-o", str(tmp_path / "o.tif"),
                 "--model", "admm", "--device", "cpu", "--restore-a", "haze", "-q"]) == 0
    capsys.readouterr()
    out = tifffile.imread(tmp_path / "o.tif")
    np.testing.assert_array_equal(out, nd.fuse(hazy.astype(np.float32), b.astype(np.float32), model="admm",
                                               device="cpu", restore={"a": "haze"}))
    assert read_provenance(tmp_path / "o.tif")["parameters"]["restore"] == {"a": "haze"}
    with pytest.raises(SystemExit) as exc:  # argparse: usage error, exit status 2, nothing written
        main(["fuse", str(tmp_path / "A.tif"), str(tmp_path / "B.tif"), "-o", str(tmp_path / "p.tif"),
              "--restore-b", "fog"])
    assert exc.value.code == 2 and not (tmp_path / "p.tif").exists()
    err = capsys.readouterr().err
    assert "invalid choice" in err and "noise" in err


def test_fuse_widget_restores_an_input_when_asked(make_napari_viewer, qtbot):
    """The Fuse widget's 'Restore b first' choice, by a real click: the result is the library's restore-then-fuse,
    and the layer's metadata says so."""
    from qtpy.QtCore import Qt

    from napari_derun._widgets import FuseWidget

    viewer = make_napari_viewer()
    a, b = smooth_pair(64, 56, seed=8)
    b_noisy = np.clip(b + np.random.default_rng(9).normal(0, 0.08, b.shape), 0, 1).astype(np.float32)
    la = viewer.add_image(a.astype(np.float32), name="pc")
    lb = viewer.add_image(b_noisy, name="gfp")
    w = FuseWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.a_combo.value, w.b_combo.value = la, lb
    w.model_combo.value, w.device_combo.value = "admm", "cpu"
    w.restore_b_combo.value = "noise"
    qtbot.mouseClick(w.run_button.native, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert w.status.state == "done", w.status.message
    out = viewer.layers["gfp_pc_derun"]
    assert out.metadata["derun"]["parameters"]["restore"] == {"b": "noise"}
    np.testing.assert_array_equal(np.asarray(out.data), nd.fuse(a.astype(np.float32), b_noisy, model="admm",
                                                                 device="cpu", restore={"b": "noise"}))


def test_noise_hint_names_the_noisy_layer_unless_it_is_being_restored():
    """The Fuse widget's suggestion: only for an input whose noise estimate passes NOISE_HINT (chosen on the
    validation pairs), and not when a restoration is already chosen for it."""
    from napari_derun._widgets._fuse_job import NOISE_HINT, noise_hint

    a = _smooth(128, 128, seed=3)
    b = _smooth(128, 128, seed=4)
    noisy = np.clip(b + np.random.default_rng(0).normal(0, 2 * NOISE_HINT, b.shape), 0, 1)
    names = ("pc", "gfp")
    assert noise_hint(a, b, False, False, names, ("none", "none")) is None
    msg = noise_hint(a, noisy, False, False, names, ("none", "none"))
    assert msg is not None and "'gfp'" in msg and "'pc'" not in msg and "Restore" in msg
    assert noise_hint(a, noisy, False, False, names, ("none", "noise")) is None
    # a uint16 stack: the middle plane, on its own range
    stack = np.stack([(noisy * 40000 + 500).astype(np.uint16)] * 3)
    assert "'gfp'" in noise_hint(np.stack([a] * 3), stack, False, False, names, ("none", "none"))


def test_noise_hint_names_a_striped_layer():
    """Column stripes (an infrared camera's fixed pattern) get their own suggestion, naming 'stripe_noise';
    not when a restoration is chosen for that input, and not for the clean or the merely noisy one."""
    from napari_derun._widgets._fuse_job import noise_hint

    a = _smooth(128, 128, seed=3)
    b = _smooth(128, 128, seed=4)
    striped = np.clip(b + np.random.default_rng(1).normal(0, 0.06, (1, 128)), 0, 1)
    names = ("vis", "ir")
    msg = noise_hint(a, striped, False, False, names, ("none", "none"))
    assert msg is not None and "'ir'" in msg and "'vis'" not in msg and "stripe_noise" in msg
    assert "noisy" not in msg
    assert noise_hint(a, striped, False, False, names, ("none", "auto")) is None
    # row stripes are not a camera's column pattern
    assert noise_hint(striped.T.copy(), b, False, False, names, ("none", "none")) is None
