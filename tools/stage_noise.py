"""Noise through the stages: how much of an input's noise each unfolded stage still carries.

For each test pair of a task, one input is degraded with noise (``--degradation``, level ``--level``) and the
model fuses it with ``return_stages=True``. Per stage k the error of ``X_k`` (the stage's fused image) against
the same model's final fusion of the *clean* pair is measured in two bands: the high-frequency RMS (the
difference minus its Gaussian blur, σ = 2: what noise is) and the full RMS. Stage 0 is ``a`` as it enters the
stages (after the input restoration network when the model has one). Prints a table and, with ``--figure``,
draws the curve and the stage images of the first pair.

    OMP_NUM_THREADS=1 python tools/stage_noise.py --task gfp_pc --model gfp_pc --degradation shot_noise \\
        --side b --level 4 [--figure docs/images/stage_noise_gfp.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_robust import DATA, test_pairs  # noqa: E402


def high(x: np.ndarray) -> np.ndarray:
    return x - ndi.gaussian_filter(x, 2.0)


def stage_errors(fuser, a, b, da, db):
    import torch

    from napari_derun.engine.registry import fuse_planes

    ref = fuse_planes(fuser, a[None], b[None])[0]
    x, st = fuse_planes(fuser, da[None], db[None], return_stages=True)
    mod = fuser.module
    a_in = da
    if getattr(mod, "restore", None) is not None:
        with torch.no_grad():
            a_in = mod.restore(torch.from_numpy(da)[None, None], torch.from_numpy(db)[None, None])[0][0, 0].numpy()
    xs = [a_in] + [s[0] for s in st["X"]]
    hf = [float(np.sqrt(np.mean(high(xk - ref) ** 2))) for xk in xs]
    full = [float(np.sqrt(np.mean((xk - ref) ** 2))) for xk in xs]
    return hf, full, xs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="gfp_pc")
    p.add_argument("--model", default="gfp_pc")
    p.add_argument("--degradation", default="shot_noise")
    p.add_argument("--side", default="b", choices=("a", "b"))
    p.add_argument("--level", type=int, default=4)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--figure", default=None)
    a = p.parse_args(argv)
    from napari_derun.data.degrade import apply
    from napari_derun.engine.registry import load_model

    fuser = load_model(a.model, device="cpu")
    hfs, fulls, first = [], [], None
    for i, (name, pa, pb) in enumerate(test_pairs(a.task, Path(a.data), a.crop)):
        rng = np.random.default_rng([7, i])
        da = apply(pa, a.degradation, a.level, seed=rng) if a.side == "a" else pa
        db = apply(pb, a.degradation, a.level, seed=rng) if a.side == "b" else pb
        hf, full, xs = stage_errors(fuser, pa, pb, da, db)
        hfs.append(hf)
        fulls.append(full)
        if first is None:
            first = (name, da, db, xs)
    hf, full = np.mean(hfs, 0), np.mean(fulls, 0)
    print(f"{a.model} on {len(hfs)} {a.task} test pairs, {a.side} degraded by {a.degradation} level {a.level}")
    print("| stage | " + " | ".join(str(k) for k in range(len(hf))) + " |")
    print("|---|" + "---|" * len(hf))
    print("| high-frequency RMS error | " + " | ".join(f"{v:.4f}" for v in hf) + " |")
    print("| RMS error | " + " | ".join(f"{v:.4f}" for v in full) + " |")
    if a.figure:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        name, da, db, xs = first
        show = [0, 1, 3, 5, len(xs) - 1]
        fig = Figure(figsize=(2.2 * (len(show) + 3), 2.6), dpi=90)
        axs = fig.subplots(1, len(show) + 3)
        axs[0].imshow(da, cmap="gray", vmin=0, vmax=1)
        axs[0].set_title("a in", fontsize=8)
        axs[1].imshow(db, cmap="gray", vmin=0, vmax=1)
        axs[1].set_title("b in", fontsize=8)
        for ax, k in zip(axs[2:], show):
            ax.imshow(np.clip(xs[k], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_title("restored a" if k == 0 else f"X, stage {k}", fontsize=8)
        axs[-1].plot(range(len(hf)), hf, marker="o", ms=3)
        axs[-1].set_title("HF RMS error vs stage", fontsize=8)
        axs[-1].tick_params(labelsize=7)
        for ax in axs[:-1]:
            ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(a.figure)
        print(f"wrote {a.figure}")


if __name__ == "__main__":
    main()
