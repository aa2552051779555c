"""CUDA checks (issue 21): skipped without a CUDA device; ``benchmarks/gpu_check.sh`` runs them with
``pytest -k cuda``. No timing assertions: speed is reported by the benchmarks, not tested."""
from __future__ import annotations

import pytest
import torch

from test_speed_reference import CASES, _model, ref  # noqa: F401  (the fixture)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
#: cuFFT and cuDNN sum in another order than the CPU: a looser bound than the CPU's 1e-4
TOL_CUDA = 5e-4


@pytest.fixture
def exact_cuda():
    """No TF32 (which would round the convolutions to 10-bit mantissas) during the test."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@cuda
@pytest.mark.parametrize("name", ["gfp_pc", "medical", "ivf", "admm", "rand_restore", "rand_plain"])
def test_cuda_outputs_equal_cpu_reference(ref, name, exact_cuda):  # noqa: F811
    m = _model(name, ref).to("cuda")
    with torch.no_grad():
        for case in CASES:
            x = m(ref[f"in/{case}/a"].cuda(), ref[f"in/{case}/b"].cuda()).cpu()
            err = (x - ref[f"out/{name}/{case}"]).abs().max().item()
            assert err <= TOL_CUDA, f"{name} on {case} (CUDA): max abs difference {err:.2e}"


@cuda
@pytest.mark.parametrize("checkpoint", [False, True])
def test_cuda_gradients_match_cpu(ref, checkpoint, exact_cuda):  # noqa: F811
    m = _model("rand_restore", ref).train()
    a, b = ref["in/rand_b2_64x64/a"], ref["in/rand_b2_64x64/b"]
    grads = []
    for dev in ("cpu", "cuda"):
        m.zero_grad()
        m.to(dev)
        x = m(a.to(dev), b.to(dev), checkpoint=checkpoint)
        (x.square().mean() + (x - a.to(dev)).abs().mean()).backward()
        grads.append(torch.cat([p.grad.flatten().cpu() for p in m.parameters()]))
    rel = ((grads[1] - grads[0]).norm() / grads[0].norm()).item()
    assert rel <= 1e-2, f"CUDA gradients differ from the CPU's by {rel:.2e} relative"


@cuda
def test_cuda_bf16_close_to_fp32(ref):  # noqa: F811
    from napari_derun.engine.registry import load_model

    f32, bf16 = load_model("gfp_pc", device="cuda"), load_model("gfp_pc", device="cuda", precision="bf16")
    a, b = ref["in/real_130x97/a"].cuda(), ref["in/real_130x97/b"].cuda()
    x32, x16 = f32.run(a, b), bf16.run(a, b)
    assert ((x16 - x32).abs().mean() / x32.abs().mean()).item() < 2e-2


@cuda
def test_cuda_fuse_api_matches_cpu():
    import numpy as np

    import napari_derun

    rng = np.random.default_rng(0)
    a = rng.integers(0, 4096, (2, 150, 170), dtype=np.uint16)
    b = rng.integers(0, 4096, (2, 150, 170), dtype=np.uint16)
    kw = {"model": "gfp_pc", "axes": "ZYX", "colour": "luminance", "tile": 96}
    on_gpu = napari_derun.fuse(a, b, device="cuda", **kw)
    on_cpu = napari_derun.fuse(a, b, device="cpu", **kw)
    assert np.abs(on_gpu - on_cpu).max() < 2e-3  # TF32 may be on in the library path


@cuda
def test_cuda_short_training_run():
    import numpy as np

    from napari_derun.core.model import DeRUN
    from napari_derun.training.config import TrainConfig
    from napari_derun.training.loop import train

    rng = np.random.default_rng(0)
    prs = [(rng.random((80, 80), dtype=np.float32), rng.random((80, 80), dtype=np.float32)) for _ in range(4)]
    cfg = TrainConfig(epochs=2, batch=2, patch=32, steps_per_epoch=3, device="cuda", seed=0)
    res = train(prs, val_pairs=prs[:1], init=DeRUN.from_hifm(guided=True, restore=4), config=cfg)
    assert len(res.history) == 2 and all(np.isfinite(h["train_loss"]) for h in res.history)
