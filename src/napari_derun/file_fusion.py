"""Fusing image files: read a pair with its metadata (:mod:`napari_derun.io.images`), fuse it through
:func:`napari_derun.api.fuse` and write the result with the metadata and the provenance. ``napari-derun fuse``
and the Fuse widget's folder mode both call :func:`fuse_files`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .io.images import check_output_format, read_input, to_dtype, write_output


class AutoModel:
    """``--model auto``: the shipped model of each pair's task (:func:`napari_derun.api.auto_model`),
    loaded once per name."""

    def __init__(self, device: str, precision: str | None):
        self.device, self.precision = device, precision
        self._loaded: dict[str, Any] = {}

    def pick(self, a, b, axes, names) -> tuple[Any, dict]:
        """(Fuser, provenance entry) for one pair."""
        from . import api

        name, guess, msg = api.auto_model(a, b, axes, names=names)
        if name not in self._loaded:
            self._loaded[name] = api.load_model(name, self.device, self.precision)
        return self._loaded[name], {"model": name, "task": guess.task, "reason": msg,
                                    "looks_swapped": guess.swapped, "role_reason": guess.role_reason}


# ----------------------------------------------------------------------------- one pair
def fuse_files(a_path, b_path, out_path, model, opts: dict, callback=None, client=None) -> dict:
    """Read, fuse and write one pair; ``model`` is a Fuser or a ModelSpec. Returns a summary dict."""
    import numpy as np

    from . import api
    from .engine import stacks
    from .engine.distributed import resolve_fuser

    from ._files import check_not_input

    out_path = Path(out_path)
    check_not_input(out_path, (a_path, b_path))  # never, even with --overwrite
    if out_path.exists() and not opts.get("overwrite"):
        raise FileExistsError(f"{out_path} exists and was left as it is; give another output name, or add "
                              "--overwrite if it is an old result you want replaced")
    a, ax_a, meta = read_input(a_path, opts.get("axes"), opts.get("max_mb"))
    b, ax_b, _ = read_input(b_path, opts.get("axes"), opts.get("max_mb"))
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
    auto = None
    if isinstance(model, AutoModel):
        fuser, auto = model.pick(a, b, (ax_a, ax_b), [Path(a_path).stem, Path(b_path).stem])
    else:
        fuser = resolve_fuser(model)
    res = api.fuse(a, b, model=fuser, device=fuser.device, axes=(ax_a, ax_b), tile=opts.get("tile", 1024),
                   overlap=opts.get("overlap"), batch_size=opts.get("batch_size"), callback=callback, client=client,
                   return_result=True, names=(str(a_path), str(b_path)), restore=opts.get("restore"))
    f, out_ax = res.fused, res.axes
    kind = check_output_format(out_path)
    if kind == "preview":
        arr = np.asarray(f)
        if arr.ndim != 2 and not (arr.ndim == 3 and out_ax.endswith("C")):
            raise ValueError(f"{Path(out_path).name}: a PNG/JPEG preview holds one plane, the result has axes "
                             f"{out_ax} {arr.shape}; write a .tif for stacks")
        data = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    else:
        data = to_dtype(np.asarray(f), opts.get("dtype", "float32"), a.dtype)
    prov = dict(res.provenance)
    prov["inputs"] = {"a": str(a_path), "b": str(b_path)}
    prov["parameters"] = {**prov["parameters"], "dtype": str(data.dtype)}
    if auto is not None:
        prov["auto"] = auto
    if kind == "preview":
        from PIL import Image

        from ._files import atomic_writer

        # no --overwrite: put in place only if no other process wrote the same name meanwhile
        with atomic_writer(out_path, overwrite=bool(opts.get("overwrite"))) as fh:
            Image.fromarray(data).save(fh, format="PNG" if Path(out_path).suffix.lower() == ".png" else "JPEG")
    else:
        write_output(out_path, data, out_ax, meta, prov, overwrite=bool(opts.get("overwrite")))
    return {"output": str(out_path), "shape": list(data.shape), "axes": out_ax, "dtype": str(data.dtype),
            "model": fuser.name, "auto": auto}


def fuse_files_remote(a_path, b_path, out_path, spec, opts):
    """:func:`fuse_files` on a dask worker (``spec``: a ModelSpec, loaded once per worker)."""
    return fuse_files(a_path, b_path, out_path, spec, opts)
