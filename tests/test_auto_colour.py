"""nd.fuse(model="auto") and the colour of the result (napari_derun.data.colour), without Qt."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import napari_derun as nd
from napari_derun.data import colour, sample_data


def test_auto_is_the_default_and_logs_the_model_and_why(caplog):
    a, b = sample_data.pet_mri(size=96)
    with caplog.at_level(logging.INFO, logger="napari_derun"):
        f = nd.fuse(a, b, device="cpu")
    assert "auto: medical, because" in caplog.text and "medical slice" in caplog.text
    np.testing.assert_array_equal(f, nd.fuse(a, b, model="medical", device="cpu"))


def test_auto_warns_when_the_roles_look_swapped():
    a, b = sample_data.gfp_pc(size=96)
    with pytest.warns(UserWarning, match="wrong way round"):
        nd.fuse(b, a, device="cpu")


def _green_excess(rgb):
    return rgb[..., 1] - 0.5 * (rgb[..., 0] + rgb[..., 2])


def test_grey_gfp_with_green_colormap_gives_grey_structure_and_green_gfp():
    """overlay: the green excess of the result sits where the GFP is bright; elsewhere the result is grey."""
    a, b_rgb = sample_data.gfp_pc(size=128, n_cells=8, seed=2)
    b = b_rgb[..., 1]
    f = nd.fuse(a, b, model="gfp_pc", device="cpu", b_colormap="green")
    assert f.shape == (128, 128, 3)
    g = _green_excess(f)
    pos, neg = b > 0.5 * b.max(), b <= np.median(b)
    assert g[pos].mean() > 0.25 and abs(g[neg].mean()) < 0.03
    cells = b > 0.2 * b.max()  # the GFP-positive cells: about 10 % of the image ...
    assert cells.mean() < 0.15 and g[cells].sum() > 0.8 * g.sum()  # ... hold over 80 % of the green excess
    # the green channel is the fused brightness; luminance mode returns exactly that brightness
    lum = nd.fuse(a, b, model="gfp_pc", device="cpu", colour="luminance")
    np.testing.assert_allclose(f[..., 1], lum, atol=1e-6)
    # structure visible in the grey part: the result follows the phase contrast away from the GFP
    assert np.corrcoef(lum[neg], a[neg])[0, 1] > 0.5


def test_rgb_gfp_and_equal_channel_rgb_phase_contrast_overlay():
    """Issue 19 item 3: RGB phase contrast (R = G = B) with a GFP: never a result without green."""
    a, b = sample_data.gfp_pc(size=128, n_cells=8, seed=2)
    a3 = np.repeat(a[..., None], 3, -1)
    for bb, cmap in ((b, None), (b[..., 1], "green")):
        f = nd.fuse(a3, bb, model="gfp_pc", device="cpu", colour="overlay", b_colormap=cmap)
        g = _green_excess(f)
        pos = b[..., 1] > 0.5 * b[..., 1].max()
        assert f.shape == (128, 128, 3) and g[pos].mean() > 0.2 and g[pos].mean() > 5 * abs(g[~pos].mean())


def test_colormap_tables_and_names():
    assert colour.colormap_lut("gray") is None and colour.colormap_lut(None) is None
    lut = colour.colormap_lut("green")
    np.testing.assert_allclose(lut[-1], (0, 1, 0))
    np.testing.assert_allclose(colour.colormap_lut(np.array([[0, 0, 0], [1, 0, 1]]))[-1], (1, 0, 1))
    assert colour.colormap_lut("magma").shape == (256, 3)
    with pytest.raises(ValueError, match="unknown colour map"):
        colour.colormap_lut("not-a-map")
    with pytest.raises(ValueError, match="colour must be"):
        nd.fuse(np.zeros((8, 8)), np.zeros((8, 8)), model="admm", colour="pink")


def test_overlay_never_clips_and_keeps_the_brightness():
    rng = np.random.default_rng(0)
    f, w = rng.random((16, 16)).astype(np.float32), rng.random((16, 16)).astype(np.float32)
    hue = rng.random((16, 16, 3)).astype(np.float32)
    hue /= hue.max(-1, keepdims=True)
    out = colour.overlay(f, w, hue)
    np.testing.assert_allclose(out.max(-1), f, atol=1e-6)
