"""Fusion time against torch's thread count, on a quiet machine and next to a competing busy core.

    python benchmarks/bench_threads.py [--size 512] [--repeats 5] [--settle 75] [--model gfp_pc]

For each condition (the machine as found, e.g. quiet or with a training job; then with one more busy
process spinning on a core) it times ``napari_derun.fuse`` of a
``size``² pair with 1 thread, with every core (torch's default) and with the count napari-derun picks
(:func:`napari_derun._runtime.default_threads`: ``NAPARI_DERUN_THREADS``, else the idle cores from
the 1-minute load average). ``--settle`` seconds pass after the busy process starts so that the load
average sees it, as it would for a job that was already running. Medians of ``--repeats`` runs after
one warm-up run. Writes ``benchmarks/results/threads.json`` (``--out``) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "threads.json"


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure(size: int, repeats: int, model: str) -> dict[str, float]:
    import numpy as np
    import torch

    import napari_derun as nd
    from napari_derun._runtime import default_threads

    rng = np.random.default_rng(0)
    a = rng.random((size, size)).astype(np.float32)
    b = rng.random((size, size)).astype(np.float32)
    fuser = nd.load_model(model, "cpu")
    cores = os.cpu_count() or 1
    picked = default_threads()
    out = {"picked_threads": picked, "load_1min": round(os.getloadavg()[0], 2)}
    for label, n in (("1 thread", 1), ("all cores (torch default)", cores), ("napari-derun's choice", picked)):
        torch.set_num_threads(n)
        with torch.inference_mode():
            out[label] = round(_time(lambda: nd.fuse(a, b, model=fuser, device="cpu"), repeats), 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--settle", type=float, default=75.0, help="seconds for the load average to see the busy core")
    ap.add_argument("--model", default="gfp_pc")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    os.environ.pop("NAPARI_DERUN_THREADS", None)
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or ''}".strip(", "),
           "python": platform.python_version(), "size": a.size, "model": a.model, "repeats": a.repeats}
    import torch

    res["torch"] = torch.__version__
    res["as found"] = measure(a.size, a.repeats, a.model)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(a.settle)
        res["+1 busy core"] = measure(a.size, a.repeats, a.model)
    finally:
        busy.kill()
        busy.wait()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    keys = [k for k in res["as found"] if k not in ("picked_threads", "load_1min")]
    print(f"{res['machine']}; torch {res['torch']}; {a.size}² fusion with {a.model}, median of {a.repeats} (s)\n")
    print("| condition | load (1 min) | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 2) + "|")
    for cond in ("as found", "+1 busy core"):
        r = res[cond]
        vals = [str(r[k]) + (f" ({r['picked_threads']} thr.)" if "choice" in k else "") for k in keys]
        print(f"| {cond} | {r['load_1min']} | " + " | ".join(vals) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
