"""DeRUN beside a published peer, IFCNN-MAX (Zhang et al. 2020), on the same machine, in one process.

    python benchmarks/bench_peers.py                                   # 256² … 2048², 1 and 2 threads
    python benchmarks/bench_peers.py --quick                           # 512² and 1024², 3 repeats, no stack
    python benchmarks/bench_peers.py --sizes 512 1024 --repeats 5 --threads 1 2 --device cpu

Methods: the shipped models (``gfp_pc``, ``medical``, ``ivf``, loaded with ``napari_derun.load_model``),
the training-free ``admm``, and IFCNN-MAX built from its published architecture with its released weights,
read from ``../shared/anchors/ifcnn/IFCNN-MAX.pth`` (or ``--ifcnn PATH`` / ``$IFCNN_WEIGHTS``; the weights
never ship with the package). Without the file the peer is skipped with a message and the ratios are left out.

Timing: for each size and thread count every method runs once per round, in an order rotated each round
(interleaved, so that the load of a shared machine hits all methods alike), after one warm-up; the report
gives each method's median and its ratio to IFCNN-MAX's median. Peak memory: each method once more in a
fresh process (``--memory-size``), peak resident memory above the process's baseline after loading. The
stack: a 2048² × 20-plane uint16 pair through ``napari_derun.fuse`` with tiling (``--stack-planes``).
Results: JSON (``--json``, default ``benchmarks/results/peers_<device>.json``) and a Markdown table on stdout
(``--table FILE...`` prints the table of saved results).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_IFCNN = HERE.parent.parent / "shared" / "anchors" / "ifcnn" / "IFCNN-MAX.pth"
SHIPPED = ("gfp_pc", "medical", "ivf")


def ifcnn_path(given: str | None) -> pathlib.Path:
    """Where the IFCNN-MAX weights are looked for: ``--ifcnn``, ``$IFCNN_WEIGHTS``, then the anchors folder."""
    return pathlib.Path(given or os.environ.get("IFCNN_WEIGHTS") or DEFAULT_IFCNN)


def build_ifcnn(path: pathlib.Path, device: str):
    """IFCNN with the MAX fusion rule, from the paper's architecture and the released weights.

    Each input (grey replicated to 3 channels, ImageNet-normalised) goes through conv1 (7×7, no bias,
    replicate padding 3) and conv2 (3×3, replicate padding 1, BN, ReLU); the two feature maps are fused by
    element-wise max; conv3 (3×3, replicate padding 1, BN, ReLU) and conv4 (1×1) reconstruct 3 channels,
    de-normalised; the grey output is their mean.

    Args:
        path: the released ``IFCNN-MAX.pth`` (a plain state dict).
        device: torch device.

    Returns:
        A function ``f(a, b)`` on ``(B, 1, H, W)`` tensors in [0, 1] returning ``(B, 1, H, W)``.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(64, 64, 3, bias=False)
            self.bn = nn.BatchNorm2d(64)

        def forward(self, x):
            return F.relu(self.bn(self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))))

    class IFCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, bias=False)
            self.conv2, self.conv3 = Block(), Block()
            self.conv4 = nn.Conv2d(64, 3, 1)

        def forward(self, a, b):
            mean = torch.tensor([0.485, 0.456, 0.406], device=a.device).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225], device=a.device).view(1, 3, 1, 1)
            feats = [self.conv2(self.conv1(F.pad((x.expand(-1, 3, -1, -1) - mean) / std, (3, 3, 3, 3), mode="replicate")))
                     for x in (a, b)]
            out = self.conv4(self.conv3(torch.maximum(*feats)))
            return (out * std + mean).mean(1, keepdim=True)

    net = IFCNN()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net = net.eval().to(device)

    def run(a, b):
        with torch.inference_mode():
            return net(a, b)

    return run


def methods(device: str, ifcnn: pathlib.Path, names: list[str]):
    """name → ``f(a, b)`` for the methods to time (IFCNN-MAX first when its weights exist)."""
    import napari_derun

    out = {}
    if ifcnn.is_file():
        out["IFCNN-MAX"] = build_ifcnn(ifcnn, device)
    else:
        print(f"IFCNN-MAX skipped: no weights at {ifcnn} (give --ifcnn PATH or $IFCNN_WEIGHTS)", file=sys.stderr)
    for n in names:
        f = napari_derun.load_model(n, device=device)
        out[n] = f.run
    return out


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(fns: dict, size: int, repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds per call of every method, interleaved: one warm-up, then ``repeats`` rotated rounds."""
    import torch

    g = torch.Generator().manual_seed(size)
    a = torch.rand(1, 1, size, size, generator=g).to(device)
    b = torch.rand(1, 1, size, size, generator=g).to(device)
    names = list(fns)
    for n in names:
        fns[n](a, b)
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            fns[n](a, b)
            _sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def _peak_child(method: str, size: int, device: str, ifcnn: str) -> None:
    """(In a child process) one call of ``method`` at ``size``; prints the peak memory above baseline in MiB."""
    import resource

    import torch

    fns = methods(device, pathlib.Path(ifcnn), [] if method == "IFCNN-MAX" else [method])
    a, b = torch.rand(1, 1, size, size).to(device), torch.rand(1, 1, size, size).to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fns[method](a, b)
        print(json.dumps({"peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}))
        return
    base = _rss_now()
    with open("/proc/self/clear_refs", "w") as fh:  # reset the kernel's peak RSS (Linux)
        fh.write("5")
    fns[method](a, b)
    peak = _hwm() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak - base}))


def _rss_now() -> float:
    with open("/proc/self/status") as fh:
        return next(float(x.split()[1]) / 1024 for x in fh if x.startswith("VmRSS"))


def _hwm() -> float | None:
    with open("/proc/self/status") as fh:
        return next((float(x.split()[1]) / 1024 for x in fh if x.startswith("VmHWM")), None)


def peak_memory(method: str, size: int, device: str, ifcnn: pathlib.Path, threads: int) -> float | None:
    """Peak memory (MiB) of one call in a fresh process; ``None`` where it cannot be measured."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--_peak", method, str(size), device, str(ifcnn)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=True).stdout
        return round(json.loads(out.strip().splitlines()[-1])["peak_mib"], 1)
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError, OSError) as e:
        print(f"peak memory of {method} at {size}² not measured: {e}", file=sys.stderr)
        return None


def stack_run(model: str, planes: int, size: int, tile: int, device: str) -> dict:
    """Wall time of a ``planes × size²`` uint16 pair through ``napari_derun.fuse`` with tiling."""
    import numpy as np

    import napari_derun

    rng = np.random.default_rng(0)
    a = rng.integers(0, 4096, (planes, size, size), dtype=np.uint16)
    b = rng.integers(0, 4096, (planes, size, size), dtype=np.uint16)
    t0 = time.perf_counter()
    out = napari_derun.fuse(a, b, model=model, device=device, axes="ZYX", tile=tile, colour="luminance")
    dt = time.perf_counter() - t0
    return {"model": model, "planes": planes, "size": size, "tile": tile, "seconds": round(dt, 2),
            "seconds_per_plane": round(dt / planes, 3), "shape": list(np.shape(out))}


def machine() -> dict:
    """CPU, cores, load, torch version: what the numbers mean."""
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(x.split(":", 1)[1].strip() for x in fh if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(paths: list[str]) -> str:
    """The Markdown table of one or more results files (``--table``): median seconds and × IFCNN-MAX."""
    rows, names = [], []
    for path in paths:
        res = json.loads(pathlib.Path(path).read_text())
        for r in res["timings"]:
            names += [n for n in r["median_s"] if n not in names]
            rows.append(r)
    out = ["| threads | size | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for r in rows:
        ratio = r.get("ratio_to_ifcnn") or {}
        cells = [(f"{r['median_s'][n]:.2f} s" + (f" ({ratio[n]:.2f}×)" if n in ratio and n != "IFCNN-MAX" else ""))
                 if n in r["median_s"] else "–" for n in names]
        out.append(f"| {r['threads']} | {r['size']}² | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (see the module docstring); returns the results dict."""
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_peak":
        _peak_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
        return {}
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=[*SHIPPED, "admm"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ifcnn", default=None, help="IFCNN-MAX.pth (default: ../shared/anchors/ifcnn/)")
    ap.add_argument("--memory-size", type=int, default=1024, help="size of the peak-memory runs (0: none)")
    ap.add_argument("--stack-planes", type=int, default=20, help="planes of the 2048² stack run (0: none)")
    ap.add_argument("--stack-size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="512² and 1024², 3 repeats, no memory or stack run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--table", nargs="+", default=None, help="only print the Markdown table of these results files")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return {}
    if args.quick:
        args.sizes, args.repeats, args.memory_size, args.stack_planes = [512, 1024], 3, 0, 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark on the GPU", file=sys.stderr)
        return {"skipped": "no CUDA device"}
    ifc = ifcnn_path(args.ifcnn)
    fns = methods(args.device, ifc, args.models)
    res: dict = {"machine": machine(), "device": args.device, "repeats": args.repeats, "timings": [],
                 "ifcnn_weights": str(ifc) if ifc.is_file() else None}
    print("| threads | size | " + " | ".join(fns) + " |")
    print("|---|---|" + "---:|" * len(fns))
    for th in args.threads:
        torch.set_num_threads(th)
        for s in args.sizes:
            t = time_interleaved(fns, s, args.repeats, args.device)
            med = {n: statistics.median(v) for n, v in t.items()}
            ref = med.get("IFCNN-MAX")
            row = {"threads": th, "size": s, "median_s": {n: round(v, 4) for n, v in med.items()},
                   "all_s": {n: [round(x, 4) for x in v] for n, v in t.items()},
                   "ratio_to_ifcnn": {n: round(v / ref, 3) for n, v in med.items()} if ref else None}
            res["timings"].append(row)
            cells = [f"{v:.3f} s" + (f" ({v / ref:.2f}×)" if ref and n != "IFCNN-MAX" else "") for n, v in med.items()]
            print(f"| {th} | {s}² | " + " | ".join(cells) + " |", flush=True)
    if args.memory_size:
        res["peak_memory_mib"] = {n: peak_memory(n, args.memory_size, args.device, ifc, min(args.threads))
                                  for n in fns}
        res["peak_memory_size"] = args.memory_size
        print(f"peak memory at {args.memory_size}² (MiB):", res["peak_memory_mib"])
    if args.stack_planes:
        torch.set_num_threads(max(args.threads))
        res["stack"] = stack_run(args.models[0], args.stack_planes, args.stack_size, args.tile, args.device)
        print("stack:", res["stack"])
    out = pathlib.Path(args.json or HERE / "results" / f"peers_{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
