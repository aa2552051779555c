"""``napari-derun profile``: parameters, multiply-adds and run time per method."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="parameters, multiply-adds and median fusion time of DeRUN, ADMM and the baselines",
        description="Count parameters and multiply-adds (convolutions + FFTs) and time each method on a "
        "size x size pair.",
    )
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    p.add_argument("--methods", default="derun,admm,average,max,laplacian", help="comma-separated methods")
    p.add_argument("--model", default=None, help="model behind 'derun'")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per method (median reported)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.size < 41:
        raise ValueError(f"--size must be at least 41 pixels, got {args.size}")
    from ..api import resolve_device
    from ..profiling import profile, profile_table

    rows = profile(size=args.size, methods=args.methods, device=args.device, repeats=args.repeats,
                   model=args.model)
    print(f"device: {resolve_device(args.device)}")
    print(profile_table(rows, args.size))
    return 0
