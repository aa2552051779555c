"""CPU time of one DeRUN training step (batch 4 × 64², one thread) for the training settings.

    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py [--steps 6] [--rows now restore] [--json out.json]

Reports process CPU seconds per step (``time.process_time``: robust to other jobs on a shared
machine, unlike wall time) for: the v0.1 shipped-weights setting (plain model, paper loss, activation
checkpointing, reflect pad 16) and what the shipped runs use now (tools/runs/*.toml: guided model, fusion
loss, no checkpointing, pad 4), plus the steps between, and the next shipped setting (guided with the input
restoration network, ``restore=12``), with and without activation checkpointing.
"""
from __future__ import annotations

import argparse
import json
import time


def step_time(guided: bool, objective: str, checkpointing: bool, pad: int, steps: int, patch: int = 64,
              restore: int = 0) -> float:
    """Median process CPU seconds of one training step (after two warm-up steps)."""
    import torch

    from napari_derun.core.model import DeRUN, adjoint_loss
    from napari_derun.training.config import TrainConfig
    from napari_derun.training.loop import _padding

    torch.manual_seed(0)
    m = DeRUN.from_hifm(guided=guided, **({"restore": restore} if restore else {}))
    cfg = TrainConfig(objective=objective)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    a, b = torch.rand(4, 1, patch, patch), torch.rand(4, 1, patch, patch)
    times = []
    for i in range(steps + 2):
        t0 = time.process_time()
        opt.zero_grad()
        with _padding(m, pad):
            x = m(a, b, checkpoint=checkpointing)
        loss = cfg.loss(x, a, b)[0] + 0.01 * adjoint_loss(m)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.process_time() - t0)
    times.sort()
    return times[len(times) // 2]


ROWS = {
    "v01": ("v0.1 setting: plain, paper loss, checkpointing, pad 16", False, "paper", True, 16, 0),
    "plain16": ("plain, paper loss, no checkpointing, pad 16", False, "paper", False, 16, 0),
    "plain4": ("plain, paper loss, no checkpointing, pad 4", False, "paper", False, 4, 0),
    "now": ("guided, fusion loss, no checkpointing, pad 4 (the shipped runs)", True, "fusion", False, 4, 0),
    "restore": ("guided + restore=12, fusion loss, no checkpointing, pad 4", True, "fusion", False, 4, 12),
    "restore_ckpt": ("guided + restore=12, fusion loss, checkpointing, pad 4", True, "fusion", True, 4, 12),
}


def main(argv=None):
    """Time the chosen settings (``--rows``, default all) and print a table and JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = []
    for key in a.rows:
        label, *args = ROWS[key]
        t = step_time(*args[:4], steps=a.steps, restore=args[4])
        out.append({"key": key, "setting": label, "cpu_s_per_step": round(t, 3)})
        print(f"| {label} | {t:.3f} |", flush=True)
    res = {"torch": torch.__version__, "rows": out}
    print(json.dumps(res))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
