"""Performance benchmark: DeRUN and the training-free HIFM solver.

Prints a table and writes JSON with, for each method, size and batch:
parameters, multiply-adds (the counter of `napari-derun profile`,
``napari_derun.evaluation.profiling._count_torch_macs`` (torch.utils.flop_counter for convolutions and matrix products, FFTs counted alongside) at the
aten level), median latency, peak memory,
the bytes each stage must move at minimum, and the memory-bandwidth floor
(bytes ÷ measured copy bandwidth) so the gap to the physical limit is visible.

    python benchmarks/bench_perf.py --bf16               # CPU defaults: 256², 1024², 16×256²
    python benchmarks/bench_perf.py --sizes 256 1024 2048 --batches 1 16 --device cuda --bf16
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time

import torch

from napari_derun import api
from napari_derun.core.hifm import HIFMParams
from napari_derun.core.model import DeRUN
from napari_derun.evaluation.profiling import _count_torch_macs


def stage_bytes(kind: str, batch: int, h: int, w: int, L: int = 4, itemsize: int = 4) -> int:
    """Minimum bytes per stage: read and write the ADMM state (Y, E, F, H, G) once, read M.

    State channels: Y (1) + E, F (L each) + H, G (K = L each) = 1 + 4L, read and written,
    plus M read: the least any implementation of one stage must move through memory.
    """
    pad = 2 * 16
    pix = batch * (h + pad) * (w + pad)
    chans = 1 + 4 * L
    return (2 * chans + 1) * pix * itemsize


def copy_bandwidth(device: str) -> float:
    """Measured device copy bandwidth in bytes/s (read + write)."""
    n = 64 * 1024 * 1024 // 4 if device == "cpu" else 512 * 1024 * 1024 // 4
    x = torch.empty(n, device=device)
    y = torch.empty_like(x)
    for _ in range(2):
        y.copy_(x)
    sync(device)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        y.copy_(x)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * x.numel() * 4 / min(times)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class PeakRSS:
    """Sample the process RSS in a thread (CPU peak memory)."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self.base = self.peak
        self._stop = threading.Event()

    def __enter__(self):
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self.t.join()


def bench_one(fuser, batch, size, device, repeats, bf16=False):
    a = torch.rand(batch, 1, size, size, device=device)
    b = torch.rand(batch, 1, size, size, device=device)
    fuser.precision = "bf16" if bf16 else "fp32"
    ctx = contextlib.nullcontext()
    with ctx:
        c = _count_torch_macs(lambda: fuser.run(a, b))  # the same counter as `napari-derun profile`
    macs = c["total"]
    with ctx:
        fuser.run(a, b)  # warm-up
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    with ctx:  # timing without the memory sampler (its thread would compete for the 2 cores)
        for _ in range(repeats):
            if device.startswith("cuda"):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fuser.run(a, b)
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e) / 1000)
            else:
                t0 = time.perf_counter()
                fuser.run(a, b)
                times.append(time.perf_counter() - t0)
    with PeakRSS() as mem, ctx:  # one more pass for the peak memory
        fuser.run(a, b)
        sync(device)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else mem.peak - mem.base
    return macs, statistics.median(times), peak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1])
    ap.add_argument("--batch16-size", type=int, default=256, help="size for the batch-of-16 run (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast (Fuser precision='bf16')")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default="gfp_pc", help="DeRUN weights to time (shipped name or checkpoint; '' = untrained)")
    ap.add_argument("--json", default="benchmarks/results/perf.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    methods = {
        "derun": api.load_model(args.model, device) if args.model else api.load_model(DeRUN.from_hifm(HIFMParams()), device),
        "admm": api.load_model("admm", device),
    }
    bw = copy_bandwidth(device)
    runs = [(bt, s) for s in args.sizes for bt in args.batches]
    if args.batch16_size:
        runs.append((16, args.batch16_size))
    rows = []
    for name, fz in methods.items():
        n_params = fz.module.num_parameters() if fz.kind == "derun" else 0
        for bt, s in runs:
            for prec in (["fp32", "bf16"] if args.bf16 else ["fp32"]):
                macs, t, peak = bench_one(fz, bt, s, device, args.repeats, bf16=(prec == "bf16"))
                nbytes = stage_bytes(fz.kind, bt, s, s, itemsize=2 if prec == "bf16" else 4) * fz.n_stages
                floor = nbytes / bw
                rows.append(
                    dict(method=name, precision=prec, batch=bt, size=s, params=n_params, gmacs=macs / 1e9,
                         ms=t * 1e3, peak_mb=peak / 2**20, min_bytes_mb=nbytes / 2**20, floor_ms=floor * 1e3,
                         x_floor=t / floor)
                )
                r = rows[-1]
                print(
                    f"{name:6s} {prec:4s} {bt:3d}x{s:<5d} params {n_params:6d}  {r['gmacs']:8.2f} GMAC  "
                    f"{r['ms']:10.1f} ms  peak {r['peak_mb']:8.1f} MB  floor {r['floor_ms']:8.2f} ms "
                    f"({r['x_floor']:.0f}x)",
                    flush=True,
                )
    meta = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "copy_bandwidth_GBps": bw / 1e9,
    }
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
