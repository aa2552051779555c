"""``napari-derun profile``: parameters, multiply-adds and run time per method."""
from __future__ import annotations

import argparse


HELP = "parameters, multiply-adds and median fusion time of DeRUN, ADMM and the baselines"
DESCRIPTION = ("Count parameters and multiply-adds (convolutions + FFTs) and time each method on a "
               "size x size pair.")


def options(p) -> None:
    """The command's arguments (cli.py makes the parser with HELP and DESCRIPTION)."""
    from ..evaluation.runner import evaluate
    from ..evaluation.profiling import profile
    from ._options import add_options

    add_options(p, profile, ("size", "methods", "model", "repeats", "device"), docs_from=(evaluate,))


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    from ..evaluation.metrics import MIN_METRIC_SIDE

    if args.size < MIN_METRIC_SIDE:
        raise ValueError(f"--size must be at least {MIN_METRIC_SIDE} pixels, got {args.size}")
    from ..api import resolve_device
    from ..evaluation.profiling import profile, profile_table

    rows = profile(size=args.size, methods=args.methods, device=args.device, repeats=args.repeats,
                   model=args.model)
    print(f"device: {resolve_device(args.device)}")
    print(profile_table(rows, args.size))
    return 0
