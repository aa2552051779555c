"""Peak memory of tiled fusion, and tiled-vs-whole-plane differences at tile seams.

Memory (each configuration runs in its own child process; peak RSS from ``getrusage``)::

    OMP_NUM_THREADS=1 python benchmarks/bench_memory.py memory --size 4096 --tile 1024 --tile 0

Seams (max / 99.9th percentile |tiled − untiled| on mosaics of real pairs from
``../shared/data/ivf`` — falls back to the built-in samples when absent)::

    OMP_NUM_THREADS=1 python benchmarks/bench_memory.py seams --tile 256 --tile 512 --overlap 32 --overlap 64 --overlap 128

Results are printed as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def make_pair(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A real-looking uint16 pair: textured structure + noisy blobs (built in blocks to stay small)."""
    rng = np.random.default_rng(seed)
    yy = np.arange(size, dtype=np.float32)[:, None]
    xx = np.arange(size, dtype=np.float32)[None, :]
    a = 0.5 + 0.2 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    a += 0.05 * rng.standard_normal((size, size), dtype=np.float32)
    a[size // 4 : size // 2, size // 3 : size // 2] += 0.3
    b = np.zeros((size, size), np.float32)
    for _ in range(40):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 80, size / 20)
        y0, y1 = int(max(0, cy - 4 * r)), int(min(size, cy + 4 * r))
        x0, x1 = int(max(0, cx - 4 * r)), int(min(size, cx + 4 * r))
        b[y0:y1, x0:x1] += np.exp(-((yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2) / (2 * r * r))
    b += 0.03 * rng.standard_normal((size, size), dtype=np.float32)
    a16 = np.clip(1000 + a * 30000, 0, 65535).astype(np.uint16)
    b16 = np.clip(200 + b * 20000, 0, 65535).astype(np.uint16)
    return a16, b16


def child_memory(size: int, tile: int, overlap: int | None, model: str) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import napari_derun as nd

    nd.load_model(model, "cpu")  # import everything first: the baseline includes torch
    base = _rss_mb()
    a, b = make_pair(size)
    after_data = _rss_mb()
    t0 = time.perf_counter()
    f = nd.fuse(a, b, model=model, device="cpu", tile=tile, overlap=overlap)
    dt = time.perf_counter() - t0
    return {"bench": "memory", "size": size, "tile": tile, "overlap": overlap, "model": model,
            "seconds": round(dt, 1), "rss_after_import_mb": round(base), "rss_after_data_mb": round(after_data),
            "peak_rss_mb": round(_rss_mb()), "out_shape": list(f.shape), "out_mean": float(f.mean())}


def run_memory(args) -> None:
    for tile in args.tile or [1024]:
        cmd = [sys.executable, __file__, "_child", "--size", str(args.size), "--tile", str(tile), "--model", args.model]
        if args.overlap:
            cmd += ["--overlap", str(args.overlap[0])]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(json.dumps({"bench": "memory", "tile": tile, "error": out.stderr[-2000:]}), flush=True)
        else:
            print(out.stdout.strip().splitlines()[-1], flush=True)


def _mosaic_pairs(n: int = 2):
    from napari_derun.io.planes import find_pairs, read_image
    from napari_derun.data.preprocess import prepare_pair

    root = SHARED / "ivf"
    if root.is_dir():
        pairs, _ = find_pairs(root)
        planes = []
        for _, pa, pb in pairs[: n * n]:
            p = prepare_pair(read_image(pa), read_image(pb))
            planes.append((p.a, p.b))
        src = "ivf mosaic"
    else:  # pragma: no cover - no shared data
        from napari_derun.data import sample_data

        planes = []
        for s in range(n * n):
            a, b = sample_data.gfp_pc(seed=s)
            p = prepare_pair(a, b)
            planes.append((p.a, p.b))
        src = "gfp_pc sample mosaic"
    h = min(p[0].shape[0] for p in planes)
    w = min(p[0].shape[1] for p in planes)
    rows_a = [np.concatenate([planes[r * n + c][0][:h, :w] for c in range(n)], 1) for r in range(n)]
    rows_b = [np.concatenate([planes[r * n + c][1][:h, :w] for c in range(n)], 1) for r in range(n)]
    return np.concatenate(rows_a, 0), np.concatenate(rows_b, 0), src


def run_seams(args) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import napari_derun as nd

    a, b, src = _mosaic_pairs(args.mosaic)
    full = nd.fuse(a, b, model=args.model, device="cpu", tile=0)
    for tile in args.tile or [256, 512]:
        for ov in args.overlap or [16, 32, 64, 128]:
            if ov >= tile // 2 + 1:
                continue
            t0 = time.perf_counter()
            f = nd.fuse(a, b, model=args.model, device="cpu", tile=tile, overlap=ov)
            d = np.abs(f - full)
            # the whole-plane solve has its own wrap-around error within ~2 pad widths of the image
            # border (pad = 16): the interior figure isolates the tile seams
            di = d[32:-32, 32:-32]
            print(json.dumps({"bench": "seams", "data": src, "shape": list(a.shape), "model": args.model,
                              "tile": tile, "overlap": ov, "max_abs": round(float(d.max()), 5), "max_abs_interior": round(float(di.max()), 5),
                              "p999_abs": round(float(np.percentile(d, 99.9)), 5),
                              "mean_abs": round(float(d.mean()), 6), "max_abs_8bit": round(float(d.max()) * 255, 2),
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["memory", "seams", "_child"])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--tile", type=int, action="append")
    p.add_argument("--overlap", type=int, action="append")
    p.add_argument("--model", default="admm")
    p.add_argument("--mosaic", type=int, default=2, help="seams: n x n mosaic of ivf pairs")
    args = p.parse_args()
    if args.mode == "_child":
        ov = args.overlap[0] if args.overlap else None
        print(json.dumps(child_memory(args.size, args.tile[0], ov, args.model)), flush=True)
    elif args.mode == "memory":
        run_memory(args)
    else:
        run_seams(args)


if __name__ == "__main__":
    main()
