"""Which degradations can ``restore="auto"`` recognise blind?  Image statistics of the clean train and
validation images of every task (never the test split) and of their degraded copies, per modality and level.

    OMP_NUM_THREADS=1 python tools/auto_detect_study.py --out /tmp/auto_detect.json

Statistics (napari_derun.data.restoration): ``noise`` (Immerkær), ``noise_score`` (Immerkær away from edges,
what ``"auto"`` uses), ``stripes`` (:func:`stripe_score`),
``haze`` (:func:`haze_score`), ``range`` (1–99 % percentile range). Prints, per statistic and modality, the
largest value over clean images and the smallest / median over each degradation and level.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_robust import DATA, split_pairs  # noqa: E402


def stats(x):
    from napari_derun.data.restoration import estimate_noise, haze_score, noise_score, stripe_score

    lo, hi = np.percentile(x, (1, 99))
    return {"noise": estimate_noise(x), "noise_score": noise_score(x), "stripes": stripe_score(x),
            "haze": haze_score(x), "range": float(hi - lo)}


def main(argv=None):
    from napari_derun.data.degrade import MODALITIES, TASK_MODALITIES, apply

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASK_MODALITIES))
    p.add_argument("--crop", type=int, default=192)
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    rows = []  # (modality, condition, level, pair, stats)
    for task in args.tasks:
        pairs = split_pairs(task, DATA, args.crop, "train")[:12] + split_pairs(task, DATA, args.crop, "val")
        for side, mod in zip("ab", TASK_MODALITIES[task]):
            for i, (name, a, b) in enumerate(pairs):
                x = a if side == "a" else b
                rows.append((mod, "clean", 0, f"{task}/{name}", stats(x)))
                for deg in MODALITIES[mod]:
                    for lv in args.levels:
                        rows.append((mod, deg, lv, f"{task}/{name}", stats(apply(x, deg, lv, seed=1000 + i))))
        print(task, "done", file=sys.stderr, flush=True)
    for key in ("noise", "noise_score", "stripes", "haze", "range"):
        print(f"\n## {key}")
        clean_max = max(r[4][key] for r in rows if r[1] == "clean")
        worst = max((r for r in rows if r[1] == "clean"), key=lambda r: r[4][key])
        print(f"clean, all modalities: max {clean_max:.4f} ({worst[0]} {worst[3]})")
        for mod in sorted({r[0] for r in rows}):
            c = [r[4][key] for r in rows if r[0] == mod and r[1] == "clean"]
            print(f"{mod:15s} clean: median {np.median(c):.4f} max {max(c):.4f}")
            for deg in MODALITIES[mod]:
                line = []
                for lv in args.levels:
                    v = [r[4][key] for r in rows if r[0] == mod and r[1] == deg and r[2] == lv]
                    line.append(f"L{lv} min {min(v):.4f} med {np.median(v):.4f}")
                print(f"    {deg:15s} " + " | ".join(line))
    if args.out:
        args.out.write_text(json.dumps([list(r) for r in rows]))


if __name__ == "__main__":
    main()
