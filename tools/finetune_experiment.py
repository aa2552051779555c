"""Fine-tune a shipped model on 5 pairs of its task and score the validation mean rank before/after.

    OMP_NUM_THREADS=1 python tools/finetune_experiment.py [--model gfp_pc] [--task gfp_pc] [--epochs 4]

Training pairs: the first 5 of the task's training split (sorted by name); validation: the first
``--val`` pairs of its validation split (every 5th pair), never seen in training. The rank is the
model's mean rank over EN, SD, SF, AG, SSIM, PSNR, UIQI, VIF, Qabf against average, Laplacian pyramid,
max-abs and admm. Reported: the start model's rank, every epoch's rank and the kept model's (the start
is a candidate, so the kept model never ranks worse than the start).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gfp_pc")
    ap.add_argument("--task", default="gfp_pc")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--val", type=int, default=8)
    a = ap.parse_args(argv)
    import torch

    from napari_derun.training.datasets import PairDataset
    from napari_derun.training.loop import finetune, peak_rss_mb

    torch.set_num_threads(1)
    tr_all, va_all = PairDataset(DATA / a.task).split(every=5)
    tr = PairDataset._from_planes(tr_all.names[:5], tr_all.a[:5], tr_all.b[:5], tr_all.source)
    va = PairDataset._from_planes(va_all.names[: a.val], va_all.a[: a.val], va_all.b[: a.val], va_all.source)
    t = time.perf_counter()
    res = finetune(tr, model=a.model, epochs=a.epochs, lr=a.lr, patch=64, val_pairs=va, steps_per_epoch=a.steps,
                   device="cpu", val_metrics=True, seed=0)
    init, best = res.info["metrics"]["initial"], res.info["metrics"]["best"]
    out = {"model": a.model, "train": tr.names, "val": va.names, "objective": res.info["training"]["objective"],
           "initial_rank": init["rank"], "epoch_ranks": [h["rank"] for h in res.history],
           "kept_epoch": best["epoch"], "kept_rank": best["rank"],
           "initial_SR": init["metrics"]["SR"], "kept_SR": best["metrics"]["SR"],
           "seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": round(peak_rss_mb())}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
