"""``napari-derun fuse``: fuse one pair of files, or every pair of a folder.

::

    napari-derun fuse A.tif B.tif -o OUT.tif
    napari-derun fuse DIR -o OUTDIR          # DIR/a/<name>.* + DIR/b/<name>.* -> OUTDIR/<name>.tif

TIFF inputs keep their axes (``series[0].axes``), ImageJ metadata (unit, spacing,
frame interval) or OME axes, and their X/Y resolution; outputs are written as
ImageJ TIFF when the structural input was ImageJ, OME-TIFF when it was OME, and
otherwise as a plain TIFF whose JSON description holds the axes. The provenance
(model, weights SHA-256, parameters, inputs) goes into the description JSON, the
ImageJ ``Info`` property or the OME description. PNG/JPEG inputs are accepted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..io.images import check_output_format, read_input


HELP = "fuse an image pair (A B -o OUT.tif) or a folder of pairs (DIR -o OUTDIR)"
DESCRIPTION = ("Fuse registered image pairs with DeRUN / HIFM. A = structural (phase contrast, MRI, "
               "visible), B = salient (GFP, PET, SPECT, CT, infrared). With one folder argument, pairs are "
               "DIR/a/<name>.* and DIR/b/<name>.* and results go to OUTDIR/<name>.tif.")


def options(p) -> None:
    """The command's arguments (cli.py makes the parser with HELP and DESCRIPTION)."""
    from ._options import add_options

    p.add_argument("inputs", nargs="+", metavar="INPUT", help="A B (two images) or DIR (with a/ and b/)")
    p.add_argument("-o", "--output", required=True, help="output .tif (pair) or folder (batch)")
    from ..api import fuse

    add_options(p, fuse, ("model", "device", "precision", "tile", "overlap", "batch_size", "axes"),
                precision={"choices": ["fp32", "bf16"], "default": "fp32"},
                axes={"help": "axes of both inputs when the files do not store them, e.g. ZYX, TZYX"})
    p.add_argument("--dtype", choices=["float32", "input"], default="float32",
                   help="float32 in [0, 1] (default) or the dtype of A (integers scaled to their full range)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (only those this command writes; never an input)")
    p.add_argument("--max-image-mb", type=float, default=None, metavar="MIB",
                   help="the most memory one input may take to decode and fuse (default: the memory available "
                   "now, or NAPARI_DERUN_MAX_IMAGE_MB; 0: no limit); larger images are refused before decoding")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask.distributed scheduler address (e.g. tcp://127.0.0.1:8786): fuse on its workers. "
                   "With a folder the workers read the inputs and write the outputs themselves: they must see "
                   "the same files at the same absolute paths (a shared file system)")
    from ..data.restoration import RESTORERS

    for side, example in (("a", "haze"), ("b", "noise")):
        p.add_argument(f"--restore-{side}", default=None, choices=sorted(RESTORERS), metavar="DEGRADATION",
                       help=f"restore {side.upper()} before fusing (classical, training-free; e.g. {example}): "
                       + ", ".join(sorted(RESTORERS)))
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="say which model --model auto chose for each pair, and why")


# ----------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    from .. import api

    opts = {"tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size, "axes": args.axes,
            "restore": {k: v for k, v in (("a", args.restore_a), ("b", args.restore_b)) if v} or None,
            "dtype": args.dtype, "overwrite": args.overwrite, "max_mb": args.max_image_mb}
    api.check_tiling(args.tile, args.overlap)  # before loading anything
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_image_mb is not None and not args.max_image_mb >= 0:
        raise ValueError(f"--max-image-mb must be >= 0 (0: no limit), got {args.max_image_mb}")
    if len(args.inputs) == 2:  # the output must be writable before any work is done
        from .._files import check_writable

        out = Path(args.output)
        if not out.is_dir():
            check_output_format(out)
            check_writable(out, overwrite=bool(args.overwrite), inputs=args.inputs)
        for p in args.inputs:
            if not Path(p).is_file():
                raise FileNotFoundError(f"no such image file: {p}")
    elif len(args.inputs) == 1:
        _check_output_folder(Path(args.inputs[0]), Path(args.output))
    if args.model == api.AUTO:
        from ..file_fusion import AutoModel

        fuser: Any = AutoModel(args.device, args.precision)
        api.resolve_device(args.device)  # an unavailable device: refused before any work
    else:
        fuser = api.load_model(args.model, args.device, args.precision)
    client = None
    if args.scheduler:
        from ..engine.distributed import connect

        client = connect(args.scheduler)  # within CONNECT_TIMEOUT, with at least one worker, or OSError
    try:
        if len(args.inputs) == 2:
            return _run_pair(args, fuser, opts, client)
        if len(args.inputs) == 1:
            return _run_folder(args, fuser, opts, client)
        raise ValueError("give two images (A B) or one folder (DIR with a/ and b/)")
    finally:
        if client is not None:
            client.close()


def _run_pair(args, fuser, opts, client) -> int:
    from tqdm import tqdm

    a, b = args.inputs
    out = Path(args.output)
    if out.is_dir():
        raise ValueError(f"-o {out} is a folder; for a pair give the output file name (e.g. {out}/fused.tif)")
    bar = None
    show = not args.quiet and client is None

    def cb(done, total):
        nonlocal bar
        if not show:
            return
        if bar is None:  # made at the first report, with the real total (not 0/1 then a jump to 1/9)
            bar = tqdm(total=total, desc=Path(a).name, unit="step", leave=False)
        bar.total = total
        bar.n = done
        bar.refresh()

    from .. import file_fusion

    try:
        res = file_fusion.fuse_files(a, b, out, fuser, opts, callback=cb, client=client)
    finally:
        if bar is not None:
            bar.close()
    _say_auto(args, Path(a).name, res)
    print(f"fused {a} + {b} -> {res['output']} ({res['axes']} {tuple(res['shape'])} {res['dtype']}, "
          f"model {res['model']})")
    return 0


def _check_output_folder(root: Path, outdir: Path) -> None:
    """``ValueError`` when the output folder is (or is inside) the input folders ``root/a`` or ``root/b``:
    results there would replace inputs or be read as inputs next time."""
    try:
        out = outdir.resolve()
        for sub in (root / "a", root / "b"):
            if sub.is_dir() and (out == sub.resolve() or sub.resolve() in out.parents):
                raise ValueError(f"-o {outdir} is the input folder {sub} (or inside it); napari-derun never writes "
                                 "onto its inputs, even with --overwrite: give another output folder")
    except (OSError, RuntimeError):
        return


def _run_folder(args, fuser, opts, client) -> int:
    from tqdm import tqdm

    from .. import file_fusion
    from ..io.planes import find_pairs

    root = Path(args.inputs[0])
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder (give A B for a single pair)")
    pairs, problems = find_pairs(root)
    for msg in problems:
        print(f"warning: {msg}", file=sys.stderr)
    if not pairs:
        raise ValueError(f"no image pairs in {root} (expected {root}/a and {root}/b with the same file names)")
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"-o {outdir} exists and is not a folder")
    outdir.mkdir(parents=True, exist_ok=True)
    failed: list[tuple[str, str]] = []
    n_ok = 0
    bar = tqdm(total=len(pairs), desc="fuse", unit="pair", disable=args.quiet, file=sys.stderr)
    if client is not None:
        from dask.distributed import as_completed

        from ..engine.distributed import model_spec

        if isinstance(fuser, file_fusion.AutoModel):  # one model for the batch, from its first pair
            from .. import api

            a0, ax0, _ = read_input(pairs[0][1], opts.get("axes"), opts.get("max_mb"))
            b0, bx0, _ = read_input(pairs[0][2], opts.get("axes"), opts.get("max_mb"))
            name, _, msg = api.auto_model(a0, b0, None if not (ax0 and bx0) else (ax0, bx0))
            print(f"{msg} (from the first pair, {pairs[0][0]}, for the whole folder)", file=sys.stderr)
            fuser = api.load_model(name, args.device, args.precision)
        spec = client.scatter(model_spec(fuser), broadcast=True)
        # absolute paths: a worker's working folder is not this one (the files must be on a shared file system)
        futs = {client.submit(file_fusion.fuse_files_remote, str(Path(pa).resolve()), str(Path(pb).resolve()),
                              str((outdir / f"{name}.tif").resolve()), spec, opts, pure=False): name
                for name, pa, pb in pairs}
        for fut in as_completed(futs):
            name = futs[fut]
            try:
                fut.result()
                n_ok += 1
            except Exception as e:  # noqa: BLE001 - reported, the batch goes on
                failed.append((name, f"{type(e).__name__}: {e}"))
                bar.write(f"FAILED {name}: {type(e).__name__}: {e}", file=sys.stderr)
            bar.update(1)
    else:
        for name, pa, pb in pairs:
            try:
                res = file_fusion.fuse_files(pa, pb, outdir / f"{name}.tif", fuser, opts)
                _say_auto(args, name, res, bar.write)
                n_ok += 1
            except Exception as e:  # noqa: BLE001 - reported, the batch goes on
                failed.append((name, f"{type(e).__name__}: {e}"))
                bar.write(f"FAILED {name}: {type(e).__name__}: {e}", file=sys.stderr)
            bar.update(1)
    bar.close()
    # each failure was reported once as it happened (FAILED name: why); the summary names them only
    print(f"fused {n_ok} of {len(pairs)} pairs into {outdir}"
          + (f"; {len(failed)} failed (see above): {', '.join(n for n, _ in failed)}" if failed else ""))
    return 1 if failed else 0


def _say_auto(args, name: str, res: dict, write=None) -> None:
    """With ``--verbose``: which model ``--model auto`` chose and why; a pair that looks swapped is always said."""
    auto = res.get("auto")
    if not auto:
        return
    write = write or (lambda m: print(m, file=sys.stderr))
    if getattr(args, "verbose", False):
        write(f"{name}: {auto['reason']}")
    if auto.get("looks_swapped"):
        write(f"warning: {name}: A and B look the wrong way round ({auto['role_reason']}); A must be the structural "
              "image and B the salient one")
