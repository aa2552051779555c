"""The public fuse() API on 2-D inputs: normalisation, colour, errors, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_derun as nd
from helpers import smooth_pair
from napari_derun.io.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_info, save_checkpoint
from napari_derun.core.hifm import hifm_admm
from napari_derun.core.model import DeRUN, DeRUNConfig
from napari_derun.data.preprocess import rgb_to_ycbcr, ycbcr_to_rgb


def test_import_is_lazy():
    import subprocess
    import sys

    code = "import sys, napari_derun; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fuse_grey_float_matches_solver():
    a, b = smooth_pair(40, 36)
    f = nd.fuse(a, b, model="admm", device="cpu")
    assert f.shape == a.shape and f.dtype == np.float32
    assert 0.0 <= f.min() and f.max() <= 1.0
    np.testing.assert_allclose(f, np.clip(hifm_admm(a, b), 0, 1), atol=1e-6)


def test_fuse_uint8_and_uint16_normalisation():
    a, b = smooth_pair(40, 36)
    a8, b8 = (a * 255).round().astype(np.uint8), (b * 255).round().astype(np.uint8)
    f8 = nd.fuse(a8, b8, model="admm")
    np.testing.assert_allclose(f8, nd.fuse(a8 / 255.0, b8 / 255.0, model="admm"), atol=1e-5)
    # uint16 with an arbitrary offset and gain fuses like its percentile-stretched version
    a16 = (1000 + a * 20000).astype(np.uint16)
    b16 = (500 + b * 3000).astype(np.uint16)
    f16 = nd.fuse(a16, b16, model="admm")
    lo_a, hi_a = np.percentile(a16, (0.1, 99.9))
    lo_b, hi_b = np.percentile(b16, (0.1, 99.9))
    ref = nd.fuse(np.clip((a16 - lo_a) / (hi_a - lo_a), 0, 1), np.clip((b16 - lo_b) / (hi_b - lo_b), 0, 1), model="admm")
    np.testing.assert_allclose(f16, ref, atol=1e-4)


def test_fuse_colour_on_luminance():
    a, b = smooth_pair(32, 30)
    rgb_b = np.stack([b * 0.9, b * 0.5, 0.2 + 0 * b], axis=-1).astype(np.float32)  # pseudo-colour salient
    f = nd.fuse(a, rgb_b, model="admm")
    assert f.shape == (32, 30, 3)
    ycc_b = rgb_to_ycbcr(rgb_b)
    luma = nd.fuse(a, ycc_b[..., 0], model="admm")
    # the fused luminance is the grey fusion of the luminances; chroma is b's where not clipped
    ycc_f = rgb_to_ycbcr(f)
    inside = (f > 0.01).all(-1) & (f < 0.99).all(-1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ycc_f[..., 0][inside], luma[inside], atol=1e-4)
    np.testing.assert_allclose(ycc_f[..., 1:][inside], ycc_b[..., 1:][inside], atol=1e-4)
    # grey content stored as RGB is treated as grey
    g = nd.fuse(np.stack([a] * 3, -1), b, model="admm")
    assert g.shape == (32, 30)
    np.testing.assert_allclose(g, nd.fuse(a, b, model="admm"), atol=1e-6)


def test_ycbcr_round_trip():
    rgb = np.random.default_rng(0).random((8, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=2e-3)


def test_fuse_return_stages():
    a, b = smooth_pair(30, 30)
    f, st = nd.fuse(a, b, model="admm", return_stages=True)
    assert st["X"].shape == (9, 30, 30) and st["E"].shape == (8, 4, 30, 30)
    np.testing.assert_allclose(np.clip(st["X"][-1], 0, 1), f, atol=1e-6)


@pytest.mark.parametrize(
    "a,b,match",
    [
        (np.zeros((10, 10)), np.zeros((10, 12)), "differ in size"),
        (np.full((10, 10), np.nan), np.zeros((10, 10)), "NaN"),
        (np.zeros((10, 10)), np.array([[np.inf] * 10] * 10), "NaN/Inf"),
        (np.zeros((2, 3, 10, 10)), np.zeros((2, 3, 10, 10)), "shape"),
        (np.zeros((0, 10)), np.zeros((0, 10)), "empty"),
        (np.zeros(10), np.zeros(10), "shape"),
        (np.zeros((10, 10), dtype=complex), np.zeros((10, 10)), "dtype"),
    ],
)
def test_bad_input_errors(a, b, match):
    with pytest.raises(ValueError, match=match):
        nd.fuse(a, b, model="admm")


def test_constant_images_fuse_without_nan():
    for a, b in [
        (np.zeros((20, 20)), np.zeros((20, 20))),
        (np.full((20, 20), 7, np.uint16), np.full((20, 20), 300, np.uint16)),
        (np.full((20, 20), 0.5, np.float32), smooth_pair(20, 20)[1]),
    ]:
        f = nd.fuse(a, b, model="admm")
        assert np.isfinite(f).all()


def test_unknown_model_name():
    a, b = smooth_pair(16, 16)
    with pytest.raises(ValueError, match="unknown model"):
        nd.fuse(a, b, model="no-such-model")


def test_checkpoint_round_trip_and_fuse(tmp_path):
    net = DeRUN(DeRUNConfig(n_stages=3))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(tmp_path / "m.safetensors", net, {"name": "mine", "metrics": {"SSIM": 0.5}})
    assert read_checkpoint_info(path)["metrics"]["SSIM"] == 0.5
    assert (tmp_path / "m.safetensors.json").exists()
    net2, info, _ = load_checkpoint(path)
    for (k, v), (_, v2) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert torch.equal(v, v2), k
    a, b = smooth_pair(24, 24)
    with torch.no_grad():
        ref = net(torch.tensor(a)[None, None], torch.tensor(b)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(nd.fuse(a, b, model=str(path)), np.clip(ref, 0, 1), atol=1e-6)
    fz = nd.load_model(path, device="cpu")
    assert fz.sha256 and fz.name == "mine"


def test_foreign_and_corrupt_checkpoints(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a napari-derun checkpoint"):
        load_checkpoint(foreign)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        nd.load_model(corrupt)
    pickle_file = tmp_path / "model.pt"
    torch.save({"a": 1}, pickle_file)
    with pytest.raises(CheckpointError):
        nd.load_model(pickle_file)


def test_bf16_precision_close_to_fp32():
    import torch

    from napari_derun.data import sample_data

    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN on this CPU build")
    a, b = sample_data.gfp_pc(96)
    ref = nd.fuse(a, b, model="gfp_pc", device="cpu")
    fast = nd.fuse(a, b, model="gfp_pc", device="cpu", precision="bf16")
    assert fast.dtype == np.float32 and fast.shape == ref.shape
    rel = np.linalg.norm(fast - ref) / np.linalg.norm(ref)
    assert rel < 1e-2, rel
    assert not np.array_equal(fast, ref)  # it really ran in bfloat16
    rnd = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    r32 = nd.fuse(rnd[0], rnd[1], model="gfp_pc", device="cpu")
    r16 = nd.fuse(rnd[0], rnd[1], model="gfp_pc", device="cpu", precision="bf16")
    assert np.linalg.norm(r16 - r32) / np.linalg.norm(r32) < 1e-2
    fz = nd.load_model("admm", "cpu", precision="bf16")
    assert fz.provenance()["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        nd.load_model("admm", "cpu", precision="fp8")


def test_grey_gfp_real_pair_keeps_cells_bright(shared_data):
    """Real pair 04-D04 with the GFP channel as a grey image: the shipped gfp_pc model keeps the
    GFP-positive cells brighter than their surroundings (the v0.1 weights made them darker)."""
    from napari_derun.io.planes import read_image

    a = read_image(shared_data / "gfp_pc" / "a" / "04-D04.jpg")
    b = read_image(shared_data / "gfp_pc" / "b" / "04-D04.jpg")[..., 1]
    f = nd.fuse(a, b, model="gfp_pc", device="cpu")
    f = f if f.ndim == 2 else f.mean(-1)
    bf = b.astype(np.float64)
    pos = bf >= np.quantile(bf, 0.98)
    neg = bf <= np.median(bf)
    assert f[pos].mean() > f[neg].mean() + 0.1, (f[pos].mean(), f[neg].mean())


@pytest.mark.slow  # subprocesses / real pairs: the slow suite (the default one stays under 2 minutes)
def test_library_fuse_has_no_process_wide_side_effects():
    import subprocess
    import sys

    code = ("import numpy as np, sys, napari_derun as nd, napari_derun._runtime as r; "
            "nd.fuse(np.random.rand(40, 40), np.random.rand(40, 40), device='cpu'); "
            "print(r._state['done'], 'triton' in sys.modules and sys.modules['triton'] is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "NAPARI_DERUN_MALLOPT": ""})
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_return_result_describes_the_run():
    """``return_result=True``: the same pixels as the plain call, with the ranges used (the uint16 stack's
    percentiles, computed once), the output axes, the tile when planes were tiled, and the provenance;
    ``names`` name the inputs in messages."""
    a, b = smooth_pair(80, 72, seed=3)
    a16 = np.stack([(200 + a * (9000 + 500 * i)).astype(np.uint16) for i in range(2)])
    b16 = np.stack([(50 + b * 20000).astype(np.uint16)] * 2)
    plain = nd.fuse(a16, b16, model="admm", device="cpu", axes="ZYX", tile=64)
    res = nd.fuse(a16, b16, model="admm", device="cpu", axes="ZYX", tile=64, return_result=True)
    np.testing.assert_array_equal(res.fused, plain)
    lo, hi = np.percentile(a16, (0.1, 99.9))
    np.testing.assert_allclose(res.ranges[0], (lo, hi))
    assert res.axes == "ZYX" and res.tile == 64 and res.stages is None
    pars = res.provenance["parameters"]
    assert pars["tile"] == 64 and pars["overlap"] is not None and pars["ranges"][1] == list(res.ranges[1])
    assert res.provenance["model"] == "admm"
    whole = nd.fuse(a16[0], b16[0], model="admm", device="cpu", return_result=True, return_stages=True)
    assert whole.tile is None and whole.provenance["parameters"]["overlap"] is None
    assert whole.stages["X"].shape == (9, 80, 72) and whole.axes == "YX"
    bad = a.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="image pc.tif contains 1 NaN"):
        nd.fuse(bad, b, model="admm", device="cpu", names=("pc.tif", "gfp.tif"))
