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
import json
import sys
from pathlib import Path
from typing import Any

_TIF = (".tif", ".tiff")
#: 8-bit previews: one grey or RGB plane
_PREVIEW = (".png", ".jpg", ".jpeg")


_OME_KEYS = ("PhysicalSizeX", "PhysicalSizeXUnit", "PhysicalSizeY", "PhysicalSizeYUnit", "PhysicalSizeZ",
             "PhysicalSizeZUnit", "TimeIncrement", "TimeIncrementUnit")


def _ome_pixels(xml: str) -> dict:
    """Pixel sizes, units and channel names of an OME-XML header (``tifffile.xml2dict``, no regex)."""
    import tifffile

    try:
        image = tifffile.xml2dict(xml)["OME"]["Image"]
    except (KeyError, TypeError, ValueError):
        return {}
    pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
    out = {k: pixels[k] for k in _OME_KEYS if k in pixels}
    ch = pixels.get("Channel")
    chans = ch if isinstance(ch, list) else [ch] if isinstance(ch, dict) else []
    names = [c.get("Name") for c in chans if isinstance(c, dict) and c.get("Name")]
    if names:
        out["ChannelNames"] = names
    return out


def check_output_format(path) -> str:
    """``"tiff"`` or ``"preview"`` from the output's extension; ValueError for anything else."""
    suf = Path(path).suffix.lower()
    if suf in _TIF:
        return "tiff"
    if suf in _PREVIEW:
        return "preview"
    raise ValueError(f"cannot write {Path(path).name!r}: use .tif / .tiff (the data, with metadata) or "
                     ".png / .jpg (an 8-bit preview of one plane)")


def register(sub) -> None:
    from ._options import add_options

    p = sub.add_parser(
        "fuse",
        help="fuse an image pair (A B -o OUT.tif) or a folder of pairs (DIR -o OUTDIR)",
        description="Fuse registered image pairs with DeRUN / HIFM. A = structural (phase contrast, MRI, "
        "visible), B = salient (GFP, PET, SPECT, CT, infrared). With one folder argument, pairs are "
        "DIR/a/<name>.* and DIR/b/<name>.* and results go to OUTDIR/<name>.tif.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="A B (two images) or DIR (with a/ and b/)")
    p.add_argument("-o", "--output", required=True, help="output .tif (pair) or folder (batch)")
    from ..api import fuse

    add_options(p, fuse, ("model", "device", "precision", "tile", "overlap", "batch_size", "axes"),
                precision={"choices": ["fp32", "bf16"], "default": "fp32"},
                axes={"help": "axes of both inputs when the files do not store them, e.g. ZYX, TZYX"})
    p.add_argument("--dtype", choices=["float32", "input"], default="float32",
                   help="float32 in [0, 1] (default) or the dtype of A (integers scaled to their full range)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask.distributed scheduler address (e.g. tcp://127.0.0.1:8786): fuse on its workers")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- reading / writing
def read_input(path, axes: str | None = None) -> tuple[Any, str | None, dict]:
    """Read an image as ``(array, axes, meta)``; ``meta`` holds ``kind`` (imagej/ome/tiff/image),
    ``resolution``, ``resolutionunit`` and ``imagej`` metadata when present."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such image file: {p}")
    if p.suffix.lower() not in _TIF:
        from ..data.io import read_image

        return read_image(p), axes, {"kind": "image"}
    import tifffile

    try:
        with tifffile.TiffFile(str(p)) as tif:
            s = tif.series[0]
            arr = s.asarray()
            ax = s.axes
            page = tif.pages[0]
            rgb_file = getattr(page, "photometric", None) == tifffile.PHOTOMETRIC.RGB
            meta: dict[str, Any] = {"kind": "imagej" if tif.is_imagej else ("ome" if tif.is_ome else "tiff")}
            if tif.is_imagej and tif.imagej_metadata:
                meta["imagej"] = {k: v for k, v in tif.imagej_metadata.items()
                                  if k in ("unit", "spacing", "finterval", "fps", "xorigin", "yorigin", "zorigin")}
            if tif.is_ome and tif.ome_metadata:
                meta["ome"] = _ome_pixels(tif.ome_metadata)
            tags = page.tags
            if "XResolution" in tags and "YResolution" in tags:
                meta["resolution"] = (tags["XResolution"].value, tags["YResolution"].value)
                if "ResolutionUnit" in tags:
                    meta["resolutionunit"] = int(tags["ResolutionUnit"].value)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as e:
        raise ValueError(f"{p}: cannot read TIFF ({type(e).__name__}: {e})") from None
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    # drop size-1 axes, map tifffile letters to ours (S = samples → C colour; Q/I/… are plane axes)
    keep = [i for i, n in enumerate(arr.shape) if n > 1]
    if len(keep) < 2:
        raise ValueError(f"{p}: expected an image, got shape {arr.shape}")
    arr = arr.reshape([arr.shape[i] for i in keep])
    ax = "".join(ax[i] for i in keep)
    s_axes = ax
    if "S" in ax and (not rgb_file or ax.index("S") < ax.index("Y")):
        # samples before Y (planar storage) or not called RGB: a plain 3- or 4-plane z-stack written by
        # tifffile.imwrite(path, zstack) is stored exactly like this (axes SYX, photometric RGB).
        # Ambiguous, so read them as planes, say so, and let --axes say otherwise.
        plane = "Z" if "Z" not in ax else ("T" if "T" not in ax else "L")
        ax = ax.replace("S", plane)
        if axes is None:
            print(f"{p.name}: {arr.shape[ax.index(plane)]} planar samples (stored axes {s_axes}) read as {plane} planes "
                  f"(axes {ax}); if they are colour channels, pass --axes {s_axes.replace('S', 'C')}", file=sys.stderr)
    ax = ax.replace("S", "C")
    if "C" in ax and arr.shape[ax.index("C")] not in (3, 4):
        ax = ax.replace("C", "L")  # a non-RGB channel axis: fused plane by plane
    if axes is None:
        axes = ax if set("YX") <= set(ax) and len(set(ax)) == len(ax) else None
    if axes is not None and "C" in axes and axes.index("C") != len(axes) - 1:
        i = axes.index("C")
        arr = np.moveaxis(arr, i, -1)
        axes = axes[:i] + axes[i + 1 :] + "C"
    return arr, axes, meta


def _to_dtype(f, dtype_name: str, ref_dtype):
    import numpy as np

    if dtype_name == "float32" or np.dtype(ref_dtype).kind == "f":
        return f.astype(np.float32 if dtype_name == "float32" else ref_dtype)
    if np.dtype(ref_dtype) == bool:
        return f >= 0.5
    info = np.iinfo(ref_dtype)
    return np.clip(np.rint(f * info.max), 0, info.max).astype(ref_dtype)


def write_output(path, data, axes: str, meta: dict, provenance: dict) -> None:
    """Write ``data`` as TIFF (ImageJ / OME / plain as the input was) with resolution and provenance."""
    import numpy as np
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kw: dict[str, Any] = {}
    if "resolution" in meta:
        kw["resolution"] = tuple(meta["resolution"])
        if "resolutionunit" in meta:
            kw["resolutionunit"] = meta["resolutionunit"]
    from .._files import atomic_writer

    prov = json.dumps(provenance, default=str)
    kind = meta.get("kind")
    ij_axes = axes.replace("C", "S")
    ij_ok = (kind == "imagej" and data.dtype in (np.uint8, np.uint16, np.float32)
             and _imagej_order(ij_axes) is not None)
    if ij_ok:
        order = _imagej_order(ij_axes)
        data = np.transpose(data, [ij_axes.index(c) for c in order])
        md = dict(meta.get("imagej") or {})
        md.update({"axes": order, "Info": prov})
        args = dict(imagej=True, metadata=md, **kw)
    elif kind == "ome":
        ome = {k: v for k, v in (meta.get("ome") or {}).items() if k in _OME_KEYS}
        if (meta.get("ome") or {}).get("ChannelNames"):
            ome["Channel"] = {"Name": list(meta["ome"]["ChannelNames"])}
        args = dict(ome=True, photometric="rgb" if axes.endswith("C") else "minisblack",
                    metadata={"axes": ij_axes, "Description": prov, **ome}, **kw)
    else:
        args = dict(photometric="rgb" if axes.endswith("C") else "minisblack",
                    metadata={"axes": ij_axes, "napari_derun": provenance}, **kw)
    # a fresh temporary file (never a fixed ``.part`` name that a symlink could redirect), then rename
    with atomic_writer(path) as fh:
        tifffile.imwrite(fh, data, **args)


def _imagej_order(axes: str) -> str | None:
    if not set(axes) <= set("TZCYXS"):
        return None
    return "".join(c for c in "TZCYXS" if c in axes)


def read_provenance(path) -> dict | None:
    """The provenance JSON written by :func:`write_output` (any of the three flavours)."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        if tif.is_imagej and tif.imagej_metadata and "Info" in tif.imagej_metadata:
            return json.loads(tif.imagej_metadata["Info"])
        if tif.is_ome and tif.ome_metadata:
            try:
                image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            except (KeyError, TypeError, ValueError):
                image = {}
            desc = (image[0] if isinstance(image, list) else image).get("Description")
            if isinstance(desc, str):
                return json.loads(desc)
        if tif.shaped_metadata:
            return tif.shaped_metadata[0].get("napari_derun")
    return None


# ----------------------------------------------------------------------------- one pair
def fuse_files(a_path, b_path, out_path, model, opts: dict, callback=None, client=None) -> dict:
    """Read, fuse and write one pair; ``model`` is a Fuser or a ModelSpec. Returns a summary dict."""
    import numpy as np

    from .. import api
    from ..engine import stacks
    from ..engine.distributed import resolve_fuser

    out_path = Path(out_path)
    if out_path.exists() and not opts.get("overwrite"):
        raise FileExistsError(f"{out_path} exists; pass --overwrite to replace it")
    a, ax_a, meta = read_input(a_path, opts.get("axes"))
    b, ax_b, _ = read_input(b_path, opts.get("axes"))
    fuser = resolve_fuser(model)
    if ax_a or ax_b:
        ax_a, ax_b = ax_a or stacks.infer_axes(a.shape), ax_b or stacks.infer_axes(b.shape)
        if "C" in ax_b and "C" not in ax_a and ax_a != ax_b.replace("C", "") and a.ndim == len(ax_b) - 1:
            ax_a = ax_b.replace("C", "")  # e.g. a PNG/plain grey A with an RGB B
        if "C" in ax_a and "C" not in ax_b and ax_b != ax_a.replace("C", "") and b.ndim == len(ax_a) - 1:
            ax_b = ax_a.replace("C", "")
        axes = (ax_a, ax_b)
    else:
        axes = None
    ax_a, ax_b = stacks._pair_axes(a.shape, b.shape, axes)
    overlap = opts.get("overlap")
    ranges = (stacks.stack_ranges(a), stacks.stack_ranges(b))
    f = api.fuse(a, b, model=fuser, device=fuser.device, axes=(ax_a, ax_b), tile=opts.get("tile", 1024),
                 overlap=overlap, batch_size=opts.get("batch_size"), callback=callback, ranges=ranges,
                 client=client)
    out_ax = ax_a if ("C" in ax_a or "C" not in ax_b) else ax_b
    if f.ndim < len(out_ax):  # colour inputs with grey content give a grey result
        out_ax = out_ax.replace("C", "")
    kind = check_output_format(out_path)
    if kind == "preview":
        arr = np.asarray(f)
        if arr.ndim != 2 and not (arr.ndim == 3 and out_ax.endswith("C")):
            raise ValueError(f"{Path(out_path).name}: a PNG/JPEG preview holds one plane, the result has axes "
                             f"{out_ax} {arr.shape}; write a .tif for stacks")
        data = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    else:
        data = _to_dtype(np.asarray(f), opts.get("dtype", "float32"), a.dtype)
    prov = fuser.provenance()
    prov.update({
        "inputs": {"a": str(a_path), "b": str(b_path)},
        "parameters": {"tile": opts.get("tile", 1024), "overlap": overlap if overlap is not None else stacks.DEFAULT_OVERLAP,
                       "axes": out_ax, "dtype": str(data.dtype), "ranges": [list(r) for r in ranges],
                       "percentiles": list(api.preprocess.DEFAULT_PERCENTILES)},
    })
    if kind == "preview":
        from PIL import Image

        from .._files import atomic_writer

        with atomic_writer(out_path) as fh:
            Image.fromarray(data).save(fh, format="PNG" if Path(out_path).suffix.lower() == ".png" else "JPEG")
    else:
        write_output(out_path, data, out_ax, meta, prov)
    return {"output": str(out_path), "shape": list(data.shape), "axes": out_ax, "dtype": str(data.dtype)}


def _process_remote(a_path, b_path, out_path, spec, opts):  # runs on a dask worker
    return fuse_files(a_path, b_path, out_path, spec, opts)


# ----------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    from .. import api

    opts = {"tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size, "axes": args.axes,
            "dtype": args.dtype, "overwrite": args.overwrite}
    api._check_tiling(args.tile, args.overlap)  # before loading anything
    if len(args.inputs) == 2:  # the output must be writable before any work is done
        from .._files import check_writable

        out = Path(args.output)
        if not out.is_dir():
            check_output_format(out)
            check_writable(out, overwrite=bool(args.overwrite))
        for p in args.inputs:
            if not Path(p).is_file():
                raise FileNotFoundError(f"no such image file: {p}")
    fuser = api.load_model(args.model, args.device, args.precision)
    client = None
    if args.scheduler:
        from dask.distributed import Client

        try:
            client = Client(args.scheduler, timeout=10)
        except (OSError, TimeoutError) as e:
            raise OSError(f"cannot reach the dask scheduler at {args.scheduler} within 10 s ({e}); "
                          "start it (dask scheduler) or check the address") from None
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
    bar = None if args.quiet or client is not None else tqdm(total=1, desc=Path(a).name, unit="step", leave=False)

    def cb(done, total):
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        res = fuse_files(a, b, out, fuser, opts, callback=cb, client=client)
    finally:
        if bar is not None:
            bar.close()
    print(f"fused {a} + {b} -> {res['output']} ({res['axes']} {tuple(res['shape'])} {res['dtype']})")
    return 0


def _run_folder(args, fuser, opts, client) -> int:
    from tqdm import tqdm

    from ..data.io import find_pairs

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

        spec = client.scatter(model_spec(fuser), broadcast=True)
        futs = {client.submit(_process_remote, str(pa), str(pb), str(outdir / f"{name}.tif"), spec, opts,
                              pure=False): name for name, pa, pb in pairs}
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
                fuse_files(pa, pb, outdir / f"{name}.tif", fuser, opts)
                n_ok += 1
            except Exception as e:  # noqa: BLE001 - reported, the batch goes on
                failed.append((name, f"{type(e).__name__}: {e}"))
                bar.write(f"FAILED {name}: {type(e).__name__}: {e}", file=sys.stderr)
            bar.update(1)
    bar.close()
    print(f"fused {n_ok} of {len(pairs)} pairs into {outdir}" + (f"; {len(failed)} failed:" if failed else ""))
    for name, msg in failed:
        print(f"  {name}: {msg}", file=sys.stderr)
    return 1 if failed else 0
