"""``napari-derun evaluate``: score fusion methods on a folder of image pairs."""
from __future__ import annotations

import argparse
from pathlib import Path


HELP = "fuse every a/ + b/ pair of a folder with several methods and tabulate the fusion metrics"
DESCRIPTION = ("Fuse each pair of DIR/a and DIR/b (same file name = pair) with each method, score it "
               "with 14 metrics by default (the paper's eight SSIM PSNR AG FMI VIF EN UIQI Qp, then SD SF MI Qabf SCD "
               "SR; --metrics picks fewer), write per_image.csv and summary.md (mean ± std and the mean rank).")


def options(p) -> None:
    """The command's arguments (cli.py makes the parser with HELP and DESCRIPTION)."""
    from ..evaluation.runner import evaluate
    from ._options import add_options

    p.add_argument("dir", help="data folder with a/ (structural) and b/ (salient) sub-folders")
    p.add_argument("--out", "-o", default=None, help="output folder for per_image.csv and summary.md")
    add_options(p, evaluate, ("methods", "model", "device", "limit", "metrics"))
    p.add_argument("-q", "--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.out:  # before any work: the results must have somewhere to go
        from .._files import check_writable

        check_writable(Path(args.out) / "summary.md")
    from ..evaluation.runner import evaluate

    rows, summary = evaluate(args.dir, methods=args.methods, out_dir=args.out, device=args.device,
                             progress=not args.no_progress, model=args.model, limit=args.limit,
                             metrics=args.metrics)
    print(summary["markdown"])
    if args.out:
        print(f"wrote {args.out}/per_image.csv and {args.out}/summary.md")
    return 0 if rows else 1
