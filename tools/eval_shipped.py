"""Evaluate a shipped DeRUN weight file against "admm" and simple baselines on its validation split.

    OMP_NUM_THREADS=1 python tools/eval_shipped.py gfp_pc --tasks gfp_pc --out /tmp/eval_gfp_pc.json

Metrics: napari_derun.metrics.all_metrics on grey 0-255 luminance of a, b and the fused image.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from train_shipped import DATA, load_split


def evaluate(methods, va):
    from napari_derun import api, baselines
    from napari_derun.metrics import METRIC_NAMES, all_metrics

    rows = {}
    for m in methods:
        t0 = time.perf_counter()
        if m in ("average", "max_abs", "laplacian_pyramid"):
            fn = getattr(baselines, m)
            fused = [fn(a, b) for a, b in zip(va.a, va.b)]
        else:
            fz = api.load_model(m, device="cpu")
            fused = [np.clip(api.fuse_planes(fz, a[None], b[None])[0], 0, 1) for a, b in zip(va.a, va.b)]
        t_fuse = time.perf_counter() - t0
        scores = [all_metrics(a * 255.0, b * 255.0, f * 255.0) for a, b, f in zip(va.a, va.b, fused)]
        rows[m] = {k: [s[k] for s in scores] for k in METRIC_NAMES}
        rows[m]["fuse_seconds"] = t_fuse
        print(m, {k: round(float(np.mean(v)), 4) for k, v in rows[m].items() if k != "fuse_seconds"}, flush=True)
    return rows


def table(rows, name):
    from napari_derun.metrics import METRIC_NAMES

    lines = ["| method | " + " | ".join(METRIC_NAMES) + " |", "|---|" + "---|" * len(METRIC_NAMES)]
    means = {m: {k: float(np.mean(r[k])) for k in METRIC_NAMES} for m, r in rows.items()}
    best = {k: max(means, key=lambda m: means[m][k]) for k in METRIC_NAMES}
    for m, r in rows.items():
        cells = []
        for k in METRIC_NAMES:
            c = f"{np.mean(r[k]):.3f} ± {np.std(r[k]):.3f}"
            cells.append(f"**{c}**" if best[k] == m else c)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    others = [m for m in rows if m != name]
    wins_all = sum(all(means[name][k] > means[o][k] for o in others) for k in METRIC_NAMES)
    wins_admm = sum(means[name][k] > means["admm"][k] for k in METRIC_NAMES) if "admm" in rows else None
    return "\n".join(lines), wins_all, wins_admm


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    _, va = load_split(a.tasks, DATA)
    methods = a.methods or [a.name, "admm", "average", "max_abs", "laplacian_pyramid"]
    rows = evaluate(methods, va)
    prev = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}
    prev.update(rows)
    Path(a.out).write_text(json.dumps(prev))
    if a.name in prev:
        t, w, wa = table(prev, a.name)
        print(t)
        print(f"{a.name} is best on {w}/8 metrics against all others; beats admm on {wa}/8; n={len(va)}")


if __name__ == "__main__":
    main()
