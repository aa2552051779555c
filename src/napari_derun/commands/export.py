"""``napari-derun export``: a bioimage.io model package of a DeRUN model."""
from __future__ import annotations

import argparse
from pathlib import Path


HELP = "write a bioimage.io model package of a trained model (runs in bioimage.io tools; loads back here)"
DESCRIPTION = ("Write a bioimage.io model package (spec model 0.5) of a DeRUN model: two inputs "
               "(structural, salient), one output (fused), state-dict and TorchScript weights, test tensors, cover, "
               "documentation, citation and the training provenance. Needs pip install 'napari-derun[bioimageio]'.")


def options(p) -> None:
    """The command's arguments (cli.py makes the parser with HELP and DESCRIPTION)."""
    from ..engine.bmz_export import export_bioimageio
    from ._options import add_options

    p.add_argument("model", help="a shipped model name (gfp_pc, medical, ivf) or a .safetensors checkpoint")
    p.add_argument("-o", "--out", required=True, help="package to write: a .zip file (usual) or a folder")
    add_options(p, export_bioimageio, ("name",))
    p.add_argument("--author", action="append", default=None, help="an author of the package (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing package: a .zip atomically, in a folder only the package's own files")
    p.add_argument("--test", action="store_true",
                   help="then run bioimageio.core's model test on the package (needs bioimageio.core)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing but errors (with --test: the test's result line)")


def run(args: argparse.Namespace) -> int:
    from ..engine.bmz_export import check_package_target, export_bioimageio

    out = check_package_target(Path(args.out), args.overwrite, args.model)  # before any work

    path = export_bioimageio(args.model, out, name=args.name, authors=args.author, overwrite=args.overwrite)
    quiet = getattr(args, "quiet", False)
    if not quiet:
        print(f"wrote {path}")
    if args.test:
        from bioimageio.core import test_model

        summary = test_model(str(path))
        for d in summary.details:
            if not quiet or d.status != "passed":
                print(f"{d.status:>7}  {d.name}" + "".join(f"\n         {e.msg}" for e in d.errors))
        print(f"bioimageio.core model test: {summary.status}")
        return 0 if summary.status == "passed" else 1
    return 0
