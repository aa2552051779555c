"""Score the shipped DeRUN models on each task's validation split (every 5th pair sorted by name,
never trained on) against the training-free solver, the baselines, the references a user would
otherwise pick (overlay, pixelwise max, copies) and the "paper"-objective models, and draw the
side-by-side figures of docs/training.md.

    OMP_NUM_THREADS=1 python tools/eval_shipped.py --out docs/results [--tasks gfp_pc ivf ...]
        [--model gfp_pc=path.safetensors ...] [--paper gfp_pc=old.safetensors ...] [--figures]

Writes ``<out>/<task>.md`` (napari-derun evaluate's table with the mean-rank column),
``<out>/<task>.json`` and ``<out>/summary.md`` (the acceptance checks per task).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from napari_derun.data.task_guess import MODEL_OF_TASK as TASK_MODEL

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: FMI and Qp (slow, not in the mean rank) are left out here; `napari-derun evaluate` computes them
METRICS = ("SSIM", "PSNR", "AG", "VIF", "EN", "UIQI", "SD", "SF", "MI", "Qabf", "SCD", "SR")
REFS = ["admm", "average", "laplacian", "max", "pixel_max", "overlay", "copy_a", "copy_b"]


def val_pairs(task: str, data: Path = DATA, every: int = 5):
    from napari_derun.io.planes import find_pairs

    pairs, _ = find_pairs(data / task)
    pairs = sorted(pairs, key=lambda p: p[0])
    return [p for k, p in enumerate(pairs) if k % every == every - 1]


def _kv(items):
    return dict(x.split("=", 1) for x in items or [])


def checks(task: str, table: dict, ranks: dict, model: str, paper: str | None) -> list[str]:
    out = []
    r = ranks[model]
    for other in ["average", "laplacian", "admm"] + ([paper] if paper else []):
        if other in ranks:
            out.append(f"rank {r:.2f} vs {other} {ranks[other]:.2f}: {'ok' if r < ranks[other] else 'NOT met'}")
    sr = table[model]["SR"]["mean"]
    out.append(f"SR {sr:.3f} (>= 0.6): {'ok' if sr >= 0.6 else 'NOT met'}")
    scd, scd_avg = table[model]["SCD"]["mean"], table["average"]["SCD"]["mean"]
    out.append(f"SCD {scd:.3f} vs 0.9 x average {0.9 * scd_avg:.3f}: {'ok' if scd >= 0.9 * scd_avg else 'NOT met'}")
    for other in ("overlay", "pixel_max", "max", "copy_a", "copy_b"):
        out.append(f"{'ahead of' if r < ranks[other] else 'behind'} {other} ({ranks[other]:.2f})")
    return out


COMPACT = ("EN", "SD", "SF", "AG", "SSIM", "PSNR", "UIQI", "VIF", "Qabf", "SCD", "SR")
_ND = {"EN": 2, "SD": 1, "SF": 1, "AG": 2, "SSIM": 3, "PSNR": 2, "UIQI": 3, "VIF": 3, "Qabf": 3, "SCD": 2, "SR": 2}


def compact_table(table: dict, ranks: dict, highlight: str) -> str:
    """Methods sorted by mean rank; means only; the shipped model in bold."""
    lines = ["| method | Rank | " + " | ".join(COMPACT) + " |", "|---|---|" + "---|" * len(COMPACT)]
    for m in sorted(ranks, key=ranks.get):
        name = f"**{m}**" if m == highlight else m
        cells = [f"{table[m][k]['mean']:.{_ND[k]}f}" for k in COMPACT]
        lines.append(f"| {name} | {ranks[m]:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(task: str, pairs, models: dict[str, str], path: Path, n: int = 2) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_derun import api
    from napari_derun.evaluation import baselines
    from napari_derun.data import io, preprocess

    cols = ["a", "b", "average", "max (pixelwise)", "admm"] + list(models)
    fig, axes = plt.subplots(n, len(cols), figsize=(2.0 * len(cols), 2.1 * n), squeeze=False)
    for i, (name, pa, pb) in enumerate(pairs[:n]):
        p = preprocess.prepare_pair(io.read_image(pa), io.read_image(pb))
        a, b = p.a, p.b
        imgs = [a, b, baselines.average(a, b), np.maximum(a, b),
                np.clip(api.fuse_planes(api.load_model("admm", device="cpu"), a[None], b[None])[0], 0, 1)]
        for m in models.values():
            imgs.append(np.clip(api.fuse_planes(api.load_model(m, device="cpu"), a[None], b[None])[0], 0, 1))
        for j, (c, im) in enumerate(zip(cols, imgs)):
            ax = axes[i][j]
            ax.imshow(im, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(c, fontsize=9)
        axes[i][0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"{task}: validation pairs (luminance)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", nargs="+", default=list(TASK_MODEL))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--model", nargs="*", help="TASKMODEL=checkpoint overrides (default: the shipped weights)")
    ap.add_argument("--paper", nargs="*", help="TASKMODEL=checkpoint of the paper-objective model to compare with")
    ap.add_argument("--figures", default=None, help="folder for the side-by-side figures")
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args(argv)
    import torch

    from napari_derun.evaluation.runner import evaluate

    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    models, papers = _kv(a.model), _kv(a.paper)
    summary = ["# Acceptance checks on the validation splits", "",
               "Command: `python tools/eval_shipped.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`", ""]
    compact: list[str] = []
    for task in a.tasks:
        key = TASK_MODEL[task]
        pairs = val_pairs(task, Path(a.data))[: a.limit]
        model = models.get(key, key)
        methods = [model] + ([papers[key]] if key in papers else []) + REFS
        rows, s = evaluate(pairs, methods=methods, progress=False, verbose=False, metrics=METRICS)
        label = {m: Path(m).stem if "/" in m or m.endswith(".safetensors") else m for m in methods}
        mlabel = label[model]
        plabel = label.get(papers.get(key)) if key in papers else None
        (out / f"{task}.md").write_text(s["markdown"])
        compact.append(f"### {task} ({s['n_pairs']} validation pairs)\n\n" + compact_table(s["table"], s["ranks"], mlabel))
        (out / f"{task}.json").write_text(json.dumps({"ranks": s["ranks"], "table": s["table"], "n": s["n_pairs"]},
                                                     indent=1, default=float))
        summary += [f"## {task} ({s['n_pairs']} validation pairs, model {mlabel})", ""]
        summary += [f"- {c}" for c in checks(task, s["table"], s["ranks"], mlabel, plabel)] + [""]
        print(f"{task}: ranks " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(s["ranks"].items(), key=lambda x: x[1])),
              flush=True)
        if a.figures:
            figure(task, pairs, {mlabel: model}, Path(a.figures) / f"fusion_{task}.png")
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    (out / "tables.md").write_text("\n".join(compact))
    print("\n".join(summary))


if __name__ == "__main__":
    main()
