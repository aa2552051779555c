"""Parameters, multiply-adds (convolutions, matrix products, FFTs) and run time of each method."""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .runner import BASELINE_METHODS, DEFAULT_METHODS, _shipped_models

__all__ = ["profile", "profile_table"]

# ----------------------------------------------------------------------------
# parameters, multiply-adds and run time
# ----------------------------------------------------------------------------
def _count_torch_macs(fn: Callable[[], Any]) -> dict[str, int]:
    """Run ``fn`` and count multiply-adds of convolutions, matrix products and FFTs.

    Convolutions and matrix products come from PyTorch's own counter,
    :class:`torch.utils.flop_counter.FlopCounterMode` (its FLOPs / 2: output elements × input
    channels / groups × kernel taps; M × N × K). It has no formula for FFTs, which are counted
    here (radix-2 convention): a real transform of n points counts n·log2(n) real multiply-adds, a
    complex one 2·n·log2(n), n being the product of the transformed sizes. Element-wise operations
    are not counted.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    counts = {"conv": 0, "matmul": 0, "fft": 0}

    class FFTCounter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            pkt = func.overloadpacket
            if pkt in (aten._fft_r2c, aten._fft_c2r, aten._fft_c2c):
                dims = args[1]
                src = out if pkt is aten._fft_c2r else args[0]
                n = int(np.prod([src.shape[d] for d in dims]))
                batch = int(out.numel()) // max(1, int(np.prod([out.shape[d] for d in dims])))
                per = n * math.log2(max(n, 2))
                counts["fft"] += int(batch * per * (2 if pkt is aten._fft_c2c else 1))
            return out

    flops = FlopCounterMode(display=False)
    with flops, FFTCounter():
        fn()
    for op, n in flops.get_flop_counts().get("Global", {}).items():
        name = str(op)
        if "conv" in name:
            counts["conv"] += int(n) // 2
        elif any(k in name for k in ("mm", "matmul", "linear", "bmm")):
            counts["matmul"] += int(n) // 2
    counts["total"] = counts["conv"] + counts["matmul"] + counts["fft"]
    return counts


def _baseline_macs(name: str, h: int, w: int) -> int:
    """Analytic multiply-adds of the baselines (filter taps; comparisons not counted).

    average: H·W.  max: per source two separable Gaussian filters (sigma 2, 17 taps, 2
    passes) = 68·H·W, two sources.  laplacian: per level of size h×w, per source a
    reduce (2 passes × 5 taps) and an expand (2 passes × 5 taps on the up-sampled
    grid) = 20·h·w, plus one expand for the reconstruction = 10·h·w: 50·Σ h·w.
    """
    if name == "average":
        return h * w
    if name == "max":
        return 2 * 68 * h * w
    if name == "laplacian":
        total, hh, ww, side, n = 0, h, w, min(h, w), 0
        while (side + 1) // 2 >= 4 and n < 4:
            side = (side + 1) // 2
            n += 1
        for _ in range(n):
            total += 50 * hh * ww
            hh, ww = (hh + 1) // 2, (ww + 1) // 2
        return total
    raise ValueError(name)


def _profile_pair(size: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    a = ndi.gaussian_filter(rng.random((size, size)), 2.0)
    b = ndi.gaussian_filter(rng.random((size, size)), 6.0)
    a = (a - a.min()) / (np.ptp(a) + 1e-12)
    b = (b - b.min()) / (np.ptp(b) + 1e-12)
    return a.astype(np.float32), b.astype(np.float32)


def profile(
    size: int = 256,
    methods: Iterable[str] | str = DEFAULT_METHODS,
    device: str = "auto",
    repeats: int = 5,
    model: str | None = None,
) -> list[dict]:
    """Parameters, multiply-adds and median fusion time of each method on a ``size``² pair.

    ``"derun"`` is the shipped model (as in :func:`resolve_methods`) or, when none is
    shipped, the default DeRUN architecture initialised from HIFM (same parameter and
    multiply-add counts as a trained one).  Model multiply-adds are counted by
    intercepting the torch operations of one forward pass (see
    :func:`_count_torch_macs`); baselines analytically (:func:`_baseline_macs`).

    Args:
        size: side of the square test pair in pixels (at least 41).
        methods: derun (the model given by model, else the first shipped DeRUN), admm (training-free),
            average, max, laplacian, pixel_max, overlay, copy_a, copy_b, or model names / checkpoint paths;
            a list or one comma-separated string.
        device: auto (a GPU when there is one), cpu, cuda or mps.
        repeats: timed runs per method; the median is reported.
        model: the model behind ``derun`` (default: the shipped one).

    Returns:
        rows ``{"method", "params", "macs", "conv_macs", "fft_macs", "median_ms", "note"}``.
    """
    from ..engine import registry

    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    a, b = _profile_pair(size)
    rows = []
    for m in methods:
        note = ""
        if m in BASELINE_METHODS:
            fn = BASELINE_METHODS[m]
            run = lambda fn=fn: fn(a, b)  # noqa: E731
            params, macs = 0, {"total": _baseline_macs(m, size, size), "conv": 0, "fft": 0}
            note = "analytic (filter taps)"
        else:
            target = m
            if m == "derun":
                shipped = _shipped_models()
                if model is not None:
                    target = model
                elif shipped:
                    target = shipped[0]
                else:
                    from ..core.model import DeRUN

                    target = DeRUN.from_hifm()
                    note = "no shipped weights: default architecture, untrained"
            fuser = registry.load_model(target, device)
            ta, tb = a[None], b[None]
            run = lambda fuser=fuser: registry.fuse_planes(fuser, ta, tb)  # noqa: E731
            run()  # warm-up
            macs = _count_torch_macs(run)
            params = fuser.module.num_parameters()
            if fuser.kind == "admm":
                note = f"{fuser.n_stages} ADMM iterations, fixed filters"
            if fuser.device.startswith("cuda"):
                import torch

                def run(fuser=fuser, _sync=torch.cuda.synchronize):  # noqa: E306
                    registry.fuse_planes(fuser, ta, tb)
                    _sync()
        run()
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        rows.append({
            "method": m,
            "params": int(params),
            "macs": int(macs["total"]),
            "conv_macs": int(macs.get("conv", 0) + macs.get("matmul", 0)),
            "fft_macs": int(macs.get("fft", 0)),
            "median_ms": 1000.0 * float(np.median(times)),
            "note": note,
        })
    return rows


def profile_table(rows: Sequence[dict], size: int) -> str:
    """Plain-text / Markdown table of :func:`profile` rows."""
    lines = [
        f"| Method ({size}x{size}) | Parameters | Multiply-adds (G) | conv (G) | FFT (G) | median time (ms) | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['params']:,} | {r['macs'] / 1e9:.4f} | {r['conv_macs'] / 1e9:.4f} | "
            f"{r['fft_macs'] / 1e9:.4f} | {r['median_ms']:.1f} | {r['note']} |"
        )
    return "\n".join(lines) + "\n"
