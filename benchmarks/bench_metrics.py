"""Time each fusion metric on a 512 x 512 (A, B, F) triple.

Usage::

    python benchmarks/bench_metrics.py [--size 512] [--repeat 3] [--pair DIR NAME]

By default the images are synthetic (smooth random textures with edges, fixed
seeds), so the script needs no data.  ``--pair ../shared/data/ivf MSRS_00004N``
uses a real pair instead (cropped / padded to the size); F is the average fusion.
Prints the best of ``--repeat`` wall-clock runs per metric, then ``all_metrics``.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import ndimage as ndi

from napari_derun.evaluation import metrics as M


def _synthetic(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = ndi.gaussian_filter(rng.standard_normal((size, size)), 3.0)
    x += 0.3 * ndi.gaussian_filter(rng.standard_normal((size, size)), 0.7)
    yy, xx = np.mgrid[:size, :size]
    x += 1.5 * (((yy - size / 2) ** 2 + (xx - size / 3) ** 2) < (size / 6) ** 2)
    x = (x - x.min()) / (x.max() - x.min())
    return 255.0 * x


def _real(folder: str, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    from napari_derun.io.planes import find_pairs, read_image, to_gray01

    pairs, _ = find_pairs(folder)
    match = [p for p in pairs if p[0] == name]
    if not match:
        raise SystemExit(f"pair {name!r} not found in {folder}")
    _, pa, pb = match[0]
    out = []
    for p in (pa, pb):
        g = 255.0 * to_gray01(read_image(p)).astype(np.float64)
        g = g[:size, :size]
        g = np.pad(g, ((0, size - g.shape[0]), (0, size - g.shape[1])), mode="reflect")
        out.append(g)
    return out[0], out[1]


def _best(fn, repeat: int) -> tuple[float, object]:
    best = np.inf
    val = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        val = fn()
        best = min(best, time.perf_counter() - t0)
    return best, val


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pair", nargs=2, metavar=("DIR", "NAME"))
    args = ap.parse_args(argv)

    if args.pair:
        a, b = _real(args.pair[0], args.pair[1], args.size)
        source = f"real pair {args.pair[1]}"
    else:
        a, b = _synthetic(args.size, 1), _synthetic(args.size, 2)
        source = "synthetic textures"
    f = 0.5 * (a + b)

    print(f"machine: {platform.machine()} {platform.processor() or ''}".rstrip()
          + f", {os.cpu_count()} logical CPUs, Python {platform.python_version()}, numpy {np.__version__}")
    print(f"images: {args.size}x{args.size} ({source}), best of {args.repeat} runs")
    print(f"{'metric':<14}{'seconds':>9}  value")
    total = 0.0
    for name in M.METRIC_NAMES:
        t, v = _best(lambda fn=M.METRICS[name]: fn(a, b, f), args.repeat)
        total += t
        print(f"{name:<14}{t:9.3f}  {v:.4f}")
    for feat in M.FMI_FEATURES[1:]:
        t, v = _best(lambda ft=feat: M.fmi(a, b, f, feature=ft), args.repeat)
        print(f"{'FMI_' + feat:<14}{t:9.3f}  {v:.4f}")
    t, _ = _best(lambda: M.all_metrics(a, b, f), args.repeat)
    print(f"{'sum of eight':<14}{total:9.3f}")
    print(f"{'all_metrics':<14}{t:9.3f}")


if __name__ == "__main__":
    main()
