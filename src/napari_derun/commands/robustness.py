"""``napari-derun robustness``: metrics vs. degradation level of one input."""
from __future__ import annotations

import argparse


HELP = "degrade one input at increasing levels, fuse with each method, plot metrics vs. level"
DESCRIPTION = ("Apply haze / rain / low_light / noise / blur to input a or b at the given levels, fuse "
               "with each method and score against the clean sources; writes robustness.csv and robustness.png.")


def options(p) -> None:
    """The command's arguments (cli.py makes the parser with HELP and DESCRIPTION)."""
    from ..evaluation.runner import evaluate
    from ..evaluation.robust import robustness
    from ._options import add_options

    p.add_argument("dir", help="data folder with a/ and b/ sub-folders")
    add_options(p, robustness, ("input", "degradations", "levels", "methods", "model", "limit", "crop", "seed",
                                "device"), docs_from=(evaluate,), input={"choices": ["a", "b"]})
    p.add_argument("--out", "-o", default="derun_robustness", help="output folder (default: derun_robustness)")
    p.add_argument("-q", "--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..evaluation.robust import robustness

    rows, summary = robustness(args.dir, input=args.input, degradations=args.degradations, levels=args.levels,
                               methods=args.methods, out_dir=args.out, model=args.model, limit=args.limit,
                               seed=args.seed, crop=args.crop, device=args.device,
                               progress=not args.no_progress)
    print(f"{len(rows)} rows from {summary['n_pairs']} pairs -> {args.out}/robustness.csv, "
          f"{args.out}/robustness.png")
    return 0 if rows else 1
