"""nD layouts, whole-stack normalisation, dask laziness, tiling, OOM fallback, progress and cancel."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import napari_derun as nd
from helpers import smooth_pair
from napari_derun import api
from napari_derun.engine.stacks import (
    FuseCancelled,
    blend_weights,
    fuse_luma_planes,
    infer_axes,
    stack_ranges,
    tile_starts,
)
from napari_derun.data.preprocess import normalization_range, prepare_pair


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (fixture in conftest.py)."""


def _stack(n=3, h=32, w=28, dtype=np.uint16):
    planes = [smooth_pair(h, w, seed=s) for s in range(n)]
    a = np.stack([p[0] * (0.6 + 0.2 * i) for i, p in enumerate(planes)])
    b = np.stack([p[1] * (0.5 + 0.25 * i) for i, p in enumerate(planes)])
    if dtype == np.uint16:
        return (300 + a * 20000).astype(np.uint16), (50 + b * 9000).astype(np.uint16)
    return a.astype(np.float32), b.astype(np.float32)


def _reference_planes(a3, b3, ranges):
    """Independent per-plane computation with the 2-D building blocks and shared ranges."""
    f = api.load_model("admm", "cpu")
    out = []
    for pa, pb in zip(a3, b3):
        p = prepare_pair(pa, pb, ranges=ranges)
        x = api.fuse_planes(f, p.a[None], p.b[None])[0]
        out.append(np.clip(x, 0, 1))
    return np.stack(out)


def test_infer_axes_defaults_and_overrides():
    assert infer_axes((10, 12)) == "YX"
    assert infer_axes((10, 12, 3)) == "YXC"
    assert infer_axes((5, 10, 12)) == "ZYX"
    assert infer_axes((5, 10, 3), "ZYX") == "ZYX"
    assert infer_axes((2, 5, 10, 12), "tzyx") == "TZYX"
    for bad, axes in [((2, 5, 10, 12), None), ((5, 10, 12), "ZY"), ((5, 10, 12), "ZZX"), ((2, 10, 12), "CYX")]:
        with pytest.raises(ValueError):
            infer_axes(bad, axes)


def test_zyx_uses_whole_stack_ranges_not_per_plane():
    a, b = _stack(3)
    f = nd.fuse(a, b, model="admm", device="cpu")
    assert f.shape == a.shape and f.dtype == np.float32
    ra, rb = normalization_range(a), normalization_range(b)
    ref = _reference_planes(a, b, (ra, rb))
    np.testing.assert_allclose(f, ref, atol=1e-6)
    # per-plane normalisation would give a different result for planes of different brightness
    per_plane = np.stack([nd.fuse(a[i], b[i], model="admm") for i in range(3)])
    assert np.abs(per_plane - f).max() > 0.01


@pytest.mark.parametrize("axes,shape_from", [("TYX", (3,)), ("TZYX", (2, 3)), ("ZTYX", (3, 2))])
def test_layouts_round_trip(axes, shape_from):
    a, b = _stack(6, 24, 20)
    n = int(np.prod(shape_from))
    a6, b6 = a[:n], b[:n]
    A = a6.reshape(shape_from + a6.shape[1:])
    B = b6.reshape(shape_from + b6.shape[1:])
    f = nd.fuse(A, B, model="admm", axes=axes, device="cpu")
    assert f.shape == A.shape
    ref = _reference_planes(a6, b6, (normalization_range(A), normalization_range(B)))
    np.testing.assert_allclose(f.reshape(ref.shape), ref, atol=1e-6)


def test_axes_not_last_are_moved_back():
    a, b = _stack(3, 24, 20)
    A, B = np.moveaxis(a, 0, -1), np.moveaxis(b, 0, -1)  # YXZ
    f = nd.fuse(A, B, model="admm", axes="YXZ", device="cpu")
    assert f.shape == A.shape
    np.testing.assert_allclose(np.moveaxis(f, -1, 0), nd.fuse(a, b, model="admm", device="cpu"), atol=1e-6)


def test_rgb_stack_and_grey_stack():
    a, b = _stack(2, 24, 20, dtype=np.float32)
    b = np.clip(b, 0, 1)
    rgb = np.stack([b * 0.9, b * 0.4, 0.1 + 0 * b], -1).astype(np.float32)  # ZYXC
    f = nd.fuse(a, rgb, model="admm", device="cpu")
    assert f.shape == rgb.shape
    for i in range(2):
        np.testing.assert_allclose(f[i], nd.fuse(a[i], rgb[i], model="admm"), atol=1e-6)
    # a single YXC plane keeps the 2-D API's result
    assert nd.fuse(a[0], rgb[0], model="admm").shape == (24, 20, 3)
    # a (Z, Y, 3) grey stack needs axes= to not be read as one colour plane
    z3a = np.stack([a[0][:, :3], a[1][:, :3], a[0][:, 5:8]])
    z3b = np.stack([b[0][:, :3], b[1][:, :3], b[0][:, 5:8]])
    g = nd.fuse(z3a, z3b, model="admm", axes="ZYX")
    assert g.shape == (3, 24, 3)
    np.testing.assert_allclose(g, _reference_planes(z3a, z3b, ((0.0, 1.0), (0.0, 1.0))), atol=1e-6)


def test_dask_in_dask_out_lazy_and_equal():
    import dask.array as da
    a, b = _stack(4, 30, 26)
    A = da.from_array(a, chunks=(3, 15, 13))
    B = da.from_array(b, chunks=(1, 30, 26))
    from napari_derun.engine import registry

    calls = []
    orig = registry.fuse_planes  # what the nD engine calls

    def spy(*args, **kw):
        calls.append(1)
        return orig(*args, **kw)

    registry.fuse_planes = spy
    try:
        F = nd.fuse(A, B, model="admm", device="cpu", batch_size=2)
        assert isinstance(F, da.Array) and F.shape == a.shape and F.dtype == np.float32
        assert not calls  # lazy: nothing fused yet
        assert all(c == (a.shape[1],) for c in F.chunks[1:2]) and F.chunks[2] == (a.shape[2],)
        got = F.compute(scheduler="sync")
        assert calls
    finally:
        registry.fuse_planes = orig
    np.testing.assert_allclose(got, nd.fuse(a, b, model="admm", device="cpu"), atol=1e-6)


def test_dask_rgb_and_sampled_ranges(monkeypatch):
    import dask.array as da
    a, b = _stack(2, 24, 20, dtype=np.float32)
    b = np.clip(b, 0, 1)
    rgb = np.stack([b * 0.9, b * 0.4, 0.1 + 0 * b], -1).astype(np.float32)
    F = nd.fuse(da.from_array(a), da.from_array(rgb), model="admm", device="cpu")
    np.testing.assert_allclose(F.compute(), nd.fuse(a, rgb, model="admm"), atol=1e-6)
    # large dask arrays: percentiles of a strided sample, close to the exact ones
    from napari_derun.engine import stacks as ndm

    x = (np.random.default_rng(0).gamma(2.0, 500.0, (8, 256, 256))).astype(np.uint16)
    monkeypatch.setattr(ndm, "EXACT_PERCENTILE_MAX", 1000)
    monkeypatch.setattr(ndm, "SAMPLE_SIZE", 20000)
    lo, hi = stack_ranges(da.from_array(x, chunks=(1, 256, 256)))
    elo, ehi = normalization_range(x)
    assert abs(lo - elo) <= 0.05 * (ehi - elo) and abs(hi - ehi) <= 0.1 * (ehi - elo)


def test_tile_geometry_and_weights_partition_unity():
    starts, t = tile_starts(1000, 256, 64)
    assert t == 256 and starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(0 < s2 - s1 <= 256 - 64 for s1, s2 in zip(starts, starts[1:]))
    ws = blend_weights(1000, starts, t, 64)
    tot = np.zeros(1000)
    for s, w in zip(starts, ws):
        tot[s : s + t] += w
        assert w.min() >= 0 and w.max() <= 1
    assert tot.min() > 0.05
    # regular seams: weights sum to one away from the clamped last tile
    np.testing.assert_allclose(tot[: starts[-1]], 1.0, atol=1e-6)
    assert tile_starts(100, 256, 64) == ([0], 100)


def test_tiled_close_to_untiled_on_real_looking_data():
    a, b = smooth_pair(300, 260, seed=3)
    full = nd.fuse(a, b, model="admm", device="cpu", tile=0)
    tiled = nd.fuse(a, b, model="admm", device="cpu", tile=128, overlap=64)
    d = np.abs(tiled - full)
    # seams (interior): close to float precision with this overlap; borders: both solves' own padding
    assert d[32:-32, 32:-32].max() < 1e-3
    assert d.max() < 0.02
    # with a small overlap the seam error is larger: the blending matters
    small = np.abs(nd.fuse(a, b, model="admm", device="cpu", tile=128, overlap=8) - full)[32:-32, 32:-32].max()
    assert small > d[32:-32, 32:-32].max()


def test_oom_falls_back_to_smaller_batches_and_tiles():
    a, b = smooth_pair(192, 160, seed=1)
    la, lb = prepare_pair(a, b).a, prepare_pair(a, b).b
    A, B = np.stack([la, la * 0.9]), np.stack([lb, lb * 0.8])
    fuser = api.load_model("admm", "cpu")
    real = fuser.run
    seen = []

    def fake_run(ta, tb, return_stages=False, callback=None):
        seen.append(tuple(ta.shape))
        if ta.shape[0] * ta.shape[-1] * ta.shape[-2] > 96 * 96:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(ta, tb, return_stages=return_stages, callback=callback)

    fuser.run = fake_run
    out = fuse_luma_planes(fuser, A, B, tile=192, overlap=16, batch_size=2)
    # batch halved, then the tile halved; the smaller tiles then run
    assert seen[:3] == [(2, 1, 192, 160), (1, 1, 192, 160), (1, 1, 96, 96)]
    ref_fuser = api.load_model("admm", "cpu")
    ref = fuse_luma_planes(ref_fuser, A, B, tile=96, overlap=16, batch_size=1)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    # an OOM that persists at the smallest tile is raised
    fuser.run = lambda *a_, **k: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("always"))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        fuse_luma_planes(fuser, A, B, tile=96, overlap=16, batch_size=2)
    # other errors are not swallowed
    fuser.run = lambda *a_, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        fuse_luma_planes(fuser, A, B, tile=96, overlap=16)


def test_progress_and_cancel():
    a, b = _stack(3, 40, 36)
    events = []
    nd.fuse(a, b, model="admm", device="cpu", tile=24, overlap=8, callback=lambda d, t: events.append((d, t)))
    n_tiles = len(tile_starts(40, 24, 8)[0]) * len(tile_starts(36, 24, 8)[0])
    assert events[-1] == (3 * n_tiles * 9, 3 * n_tiles * 9)
    assert [d for d, _ in events] == sorted(d for d, _ in events)
    # 2-D untiled: the per-stage callback of the 2-D API
    ev2 = []
    nd.fuse(a[0], b[0], model="admm", callback=lambda d, t: ev2.append((d, t)))
    assert ev2 == [(i, 9) for i in range(1, 10)]
    # cancel between tiles / stages
    stop = threading.Event()

    def cb(done, total):
        if done >= 20:
            stop.set()

    with pytest.raises(FuseCancelled):
        nd.fuse(a, b, model="admm", device="cpu", tile=24, overlap=8, callback=cb, cancel=stop)
    # a callback raising stops too
    def boom(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nd.fuse(a, b, model="admm", device="cpu", callback=boom)
