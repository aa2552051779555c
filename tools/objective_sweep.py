"""Where do the training objectives put real fusions and single-source copies? (docs/training.md)

For the training pairs of each task (first ``--limit`` per task, full images), evaluates the parts of
the "fusion" objective and the "paper" objective (Eq. 14) for candidate outputs: copies of a and b,
average, pixelwise max, the salient lift, the Laplacian pyramid. Then, over a grid of weights, counts
on how many pairs the objective's own intensity target (max or lift) scores below *both* copies.

    OMP_NUM_THREADS=1 python tools/objective_sweep.py --limit 8 > sweep.md
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGET = {"gfp_pc": "lift", "ivf": "lift", "pet_mri": "max", "spect_mri": "max", "ct_mri": "max"}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--data", default=str(DATA))
    a = ap.parse_args(argv)
    import torch

    from napari_derun.evaluation import baselines
    from napari_derun.training.datasets import PairDataset
    from napari_derun.core.losses import derun_loss
    from napari_derun.core.objectives import FusionWeights, fusion_loss, salient_lift

    torch.set_num_threads(1)
    t = lambda x: torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))[None, None]  # noqa: E731
    parts_all, paper_all = {}, {}
    for task, tgt in TARGET.items():
        tr, _ = PairDataset(Path(a.data) / task).split(every=5)
        for i in range(min(a.limit, len(tr))):
            A, B = t(tr.a[i]), t(tr.b[i])
            floor = torch.tensor([tr.b_floor(i)])
            cands = {"copy_a": A, "copy_b": B, "average": (A + B) / 2, "pixel_max": torch.maximum(A, B),
                     "lift": salient_lift(A, B, floor),
                     "laplacian": t(baselines.laplacian_pyramid(tr.a[i], tr.b[i]))}
            for name, x in cands.items():
                # the intensity term depends on the target: store both
                for target in ("max", "lift"):
                    _, p = fusion_loss(x, A, B, floor, FusionWeights(target=target))
                    parts_all.setdefault((task, target, name), []).append(p)
                paper_all.setdefault((task, name), []).append(float(derun_loss(x, A, B)[0]))
    names = ["copy_a", "copy_b", "average", "pixel_max", "lift", "laplacian"]
    print("## The paper's objective (Eq. 14) on training pairs, mean\n")
    print("| task | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for task in TARGET:
        vals = [np.mean(paper_all[(task, n)]) for n in names]
        best = int(np.argmin(vals))
        print(f"| {task} | " + " | ".join(f"**{v:.3f}**" if j == best else f"{v:.3f}" for j, v in enumerate(vals)) + " |")
    print("\n## Fusion objective: pairs where the target fusion scores below both copies\n")
    grid = list(itertools.product([1, 2, 5, 10], [5, 10, 20], [1], [0.0, 0.1, 1.0]))
    print("| w_int | w_grad | w_ssim | w_lgde | " + " | ".join(TARGET) + " | all |\n|---|---|---|---|" + "---|" * (len(TARGET) + 1))
    for w in grid:
        cells, tot, n = [], 0, 0
        for task, tgt in TARGET.items():
            fused = "lift" if tgt == "lift" else "pixel_max"
            L = {nm: np.array([w[0] * p["intensity"] + w[1] * p["gradient"] + w[2] * p["ssim"] + w[3] * p["lgde"]
                               for p in parts_all[(task, tgt, nm)]]) for nm in ("copy_a", "copy_b", fused)}
            ok = int(np.sum((L[fused] < L["copy_a"]) & (L[fused] < L["copy_b"])))
            cells.append(f"{ok}/{len(L[fused])}")
            tot, n = tot + ok, n + len(L[fused])
        mark = "**" if w == (5, 10, 1, 0.1) else ""
        print(f"| {mark}{w[0]}{mark} | {w[1]} | {w[2]} | {w[3]} | " + " | ".join(cells) + f" | {tot}/{n} |")


if __name__ == "__main__":
    main()
