"""Mean rank and SR of shipped models and baselines on a task's *validation* pairs (tools/splits/<task>.json,
"val"; the test pairs are never read): the evidence for choosing between models.

    OMP_NUM_THREADS=1 python tools/val_rank.py ivf --crop 512 --models ivf medical gfp_pc admm
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task")
    p.add_argument("--models", nargs="+", default=["gfp_pc", "medical", "ivf", "admm"])
    p.add_argument("--crop", type=int, default=512, help="central crop of each pair (pixels)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    a = p.parse_args(argv)
    import torch

    from napari_derun.engine.registry import fuse_planes, load_model
    from napari_derun.evaluation import baselines
    from napari_derun.evaluation.metrics_extra import mean_ranks, rank_metrics
    from napari_derun.training.datasets import task_pairs

    torch.set_num_threads(1)
    _, va = task_pairs(a.data, [a.task], splits=ROOT / "tools" / "splits")
    va = va.center_crop(a.crop)
    fusers = {m: load_model(m, device="cpu") for m in a.models}
    scores: dict[str, list] = {}
    for x, y in zip(va.a, va.b):
        outs = {m: np.clip(fuse_planes(f, x[None], y[None])[0], 0, 1) for m, f in fusers.items()}
        outs.update(max=np.maximum(x, y), overlay=baselines.overlay(x, y), copy_a=x, copy_b=y,
                    laplacian=baselines.laplacian_pyramid(x, y), average=(x + y) / 2)
        for k, f in outs.items():
            scores.setdefault(k, []).append(rank_metrics(x * 255, y * 255, f * 255))
    r = mean_ranks(scores)
    print(f"{a.task}: {len(va)} validation pairs, central {a.crop} px; mean rank over the nine metrics (1 = best)")
    print("| method | rank | SR |\n|---|---|---|")
    for k in sorted(r, key=r.get):
        print(f"| {k} | {r[k]:.2f} | {np.mean([s['SR'] for s in scores[k]]):.2f} |")


if __name__ == "__main__":
    main()
