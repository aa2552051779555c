"""``napari-derun robustness``: metrics vs. degradation level of one input."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "robustness",
        help="degrade one input at increasing levels, fuse with each method, plot metrics vs. level",
        description="Apply haze / rain / low_light / noise / blur to input a or b at the given levels, fuse "
        "with each method and score against the clean sources; writes robustness.csv and robustness.png.",
    )
    p.add_argument("dir", help="data folder with a/ and b/ sub-folders")
    p.add_argument("--input", choices=("a", "b"), default="b", help="which input to degrade (default: b)")
    p.add_argument("--degradations", default="haze,rain,low_light,noise,blur", help="comma-separated")
    p.add_argument("--levels", default="0,1,2,3,4,5", help="comma-separated levels 0..5")
    p.add_argument("--methods", default="derun,admm,average,max,laplacian", help="comma-separated methods")
    p.add_argument("--model", default=None, help="model behind 'derun'")
    p.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    p.add_argument("--crop", type=int, default=None, help="centre-crop pairs to at most N x N pixels (speed)")
    p.add_argument("--out", "-o", default="derun_robustness", help="output folder (default: derun_robustness)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random degradations")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("-q", "--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..robust import robustness

    rows, summary = robustness(args.dir, input=args.input, degradations=args.degradations, levels=args.levels,
                               methods=args.methods, out_dir=args.out, model=args.model, limit=args.limit,
                               seed=args.seed, crop=args.crop, device=args.device,
                               progress=not args.no_progress)
    print(f"{len(rows)} rows from {summary['n_pairs']} pairs -> {args.out}/robustness.csv, "
          f"{args.out}/robustness.png")
    return 0 if rows else 1
