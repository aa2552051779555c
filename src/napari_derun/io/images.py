"""Reading and writing nD images with their metadata: TIFF axes and metadata (ImageJ, OME, plain), PNG/JPEG
previews, the provenance stored in a fused output (:func:`read_provenance`), and the output dtype.

The command line (``napari-derun fuse``) and scripts use the same functions::

    from napari_derun.io.images import read_input, read_provenance, write_output
"""
from __future__ import annotations

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
        pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
    except Exception:  # noqa: BLE001 - malformed OME-XML (ParseError is a SyntaxError): no OME metadata
        return {}
    if not isinstance(pixels, dict):
        return {}
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


# ----------------------------------------------------------------------------- reading / writing
def read_input(path, axes: str | None = None, max_mb: float | None = None) -> tuple[Any, str | None, dict]:
    """Read an image as ``(array, axes, meta)``; ``meta`` holds ``kind`` (imagej/ome/tiff/image),
    ``resolution``, ``resolutionunit`` and ``imagej`` metadata when present. The size the file declares
    is checked against ``max_mb`` / the memory before decoding (:mod:`napari_derun.data.limits`)."""
    import numpy as np

    from .planes import checked_series

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such image file: {p}")
    if p.suffix.lower() not in _TIF:
        from .planes import read_image

        return read_image(p, max_mb=max_mb), axes, {"kind": "image"}
    import logging

    import tifffile

    try:
        with tifffile.TiffFile(str(p)) as tif:
            s, arr = checked_series(tif, p, max_mb)
            ax = s.axes
            page = tif.pages[0]
            rgb_file = getattr(page, "photometric", None) == tifffile.PHOTOMETRIC.RGB
            meta: dict[str, Any] = {"kind": "imagej" if tif.is_imagej else ("ome" if tif.is_ome else "tiff")}
            if tif.is_imagej and tif.imagej_metadata:
                meta["imagej"] = {k: v for k, v in tif.imagej_metadata.items()
                                  if k in ("unit", "spacing", "finterval", "fps", "xorigin", "yorigin", "zorigin")}
            if tif.is_ome and tif.ome_metadata:
                meta["ome"] = _ome_pixels(tif.ome_metadata)
                if not meta["ome"] and getattr(s, "kind", "ome") != "ome":  # malformed OME-XML: read as plain TIFF
                    meta["kind"] = "tiff"
            tags = page.tags
            if "XResolution" in tags and "YResolution" in tags:
                meta["resolution"] = (tags["XResolution"].value, tags["YResolution"].value)
                if "ResolutionUnit" in tags:
                    meta["resolutionunit"] = int(tags["ResolutionUnit"].value)
    except MemoryError:
        raise ValueError(f"{p}: not enough memory to decode this TIFF; fuse a cropped or binned copy") from None
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile and its codecs raise many types for broken files
        logging.getLogger(__name__).debug("reading %s", p, exc_info=True)
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


def to_dtype(f, dtype_name: str, ref_dtype):
    """The fused [0, 1] result as float32, or as ``ref_dtype`` (integers scaled to their full range,
    converted in row blocks: no whole-plane float64 copy, and no wrap-around for 64-bit integers)."""
    import numpy as np

    if dtype_name == "float32" or np.dtype(ref_dtype).kind == "f":
        return f.astype(np.float32 if dtype_name == "float32" else ref_dtype, copy=False)
    if np.dtype(ref_dtype) == bool:
        return f >= 0.5
    info = np.iinfo(ref_dtype)
    top = float(info.max)
    if int(top) > info.max:  # 2**63 - 1 and 2**64 - 1 round up in float64: the largest float below them
        top = float(np.nextafter(top, 0.0))
    work = np.float32 if np.dtype(ref_dtype).itemsize <= 2 else np.float64  # exact for 8/16 bits, as before
    out = np.empty(f.shape, ref_dtype)
    flat_in, flat_out = f.reshape(-1), out.reshape(-1)
    step = 1 << 22
    for i in range(0, flat_in.size, step):
        blk = flat_in[i : i + step].astype(work)
        flat_out[i : i + step] = np.clip(np.rint(blk * work(top)), 0.0, top)
    return out


def write_output(path, data, axes: str, meta: dict, provenance: dict, overwrite: bool = True) -> None:
    """Write ``data`` as TIFF (ImageJ / OME / plain as the input was) with resolution and provenance
    (``overwrite=False``: ``FileExistsError`` if ``path`` appeared meanwhile, never replaced)."""
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
    with atomic_writer(path, overwrite=overwrite) as fh:
        tifffile.imwrite(fh, data, **args)


def write_tiff(path, data) -> None:
    """Write ``data`` as a plain TIFF (no axes metadata), atomically (a new file renamed over ``path``).

    Args:
        path: the ``.tif`` file to write.
        data: the array, written with its own dtype.
    """
    import tifffile

    from .._files import atomic_writer

    with atomic_writer(path) as fh:
        tifffile.imwrite(fh, data)


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
            except Exception:  # noqa: BLE001 - malformed OME-XML
                image = {}
            desc = (image[0] if isinstance(image, list) else image).get("Description")
            if isinstance(desc, str):
                return json.loads(desc)
        if tif.shaped_metadata:
            return tif.shaped_metadata[0].get("napari_derun")
    return None
