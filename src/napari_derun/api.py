"""Public scripting API: ``fuse``, ``load_model``, ``list_models``.

The napari widgets, the CLI and the tests all go through these functions. Model loading and the
registry live in :mod:`napari_derun.engine.registry` (re-exported here); :func:`fuse` runs the nD engine
of :mod:`napari_derun.engine.stacks`.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

from numpy.typing import ArrayLike

import numpy as np

from .data import preprocess
if TYPE_CHECKING:  # dask is imported only when a dask array comes in
    from dask.array import Array as DaskArray
from .engine.registry import (  # noqa: F401  (the public API, and names the tests and widgets use)
    _SESSION,
    MODELS,
    TRAINING_FREE,
    WEIGHTS_DIR,
    Fuser,
    _load,
    _shipped,
    fuse_planes,
    list_models,
    load_model,
    register_model,
    resolve_device,
)

__all__ = [
    "Fuser",
    "MODELS",
    "fuse",
    "fuse_planes",
    "load_model",
    "list_models",
    "register_model",
    "resolve_device",
    "WEIGHTS_DIR",
]

#: smallest tile side accepted by :func:`fuse` (smaller tiles are all border and take forever)
MIN_TILE = 16


def _check_tiling(tile, overlap) -> None:
    for name, v in (("tile", tile), ("overlap", overlap)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise ValueError(f"{name} must be an integer number of pixels, got {v!r}")
    if tile not in (None, 0) and tile < MIN_TILE:
        raise ValueError(f"tile must be at least {MIN_TILE} pixels (or 0/None for no tiling), got {tile}")
    if overlap is not None:
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0 pixels, got {overlap}")
        if tile and overlap >= tile:
            raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")


def _check_inputs(a, b, axes) -> None:
    """Clear messages for inputs no engine can take (before any model is loaded)."""
    if axes is not None and not isinstance(axes, str) and not (
            isinstance(axes, (tuple, list)) and len(axes) == 2 and all(isinstance(x, str) for x in axes)):
        raise ValueError(f"axes must be a string such as 'ZYX' or a pair of strings, got {axes!r}")
    for name, x in (("a", a), ("b", b)):
        if x is None:
            continue
        if isinstance(x, np.ma.MaskedArray) and np.ma.is_masked(x):
            raise ValueError(f"image {name} is a masked array with masked pixels: fusion would ignore the mask; "
                             "fill them first (x.filled(value)) or pass x.data explicitly")
        nd_ = np.ndim(x)
        if nd_ < 2:
            raise ValueError(f"image {name} has {nd_} dimension(s) (shape {np.shape(x)}): pass a 2-D image (Y, X), "
                             "a colour image (Y, X, 3) or a stack with axes=")
        if axes is None and nd_ == 3 and np.shape(x)[-1] == 2:
            raise ValueError(f"image {name} has shape {np.shape(x)}: 2 channels in the last axis are neither grey "
                             "nor RGB; fuse one channel at a time (x[..., 0]) or give axes= for a stack")


def fuse(
    a: ArrayLike | DaskArray,
    b: ArrayLike | DaskArray,
    model: Any = TRAINING_FREE,
    device: str = "auto",
    return_stages: bool = False,
    percentiles: tuple[float, float] = preprocess.DEFAULT_PERCENTILES,
    color_from: str = "auto",
    callback: Callable[[int, int], None] | None = None,
    *,
    axes: str | tuple[str, str] | None = None,
    tile: int | None = 1024,
    overlap: int | None = None,
    batch_size: int | None = None,
    cancel: threading.Event | None = None,
    ranges: tuple[tuple[float, float], tuple[float, float]] | None = None,
    client: Any = None,
    precision: str | None = None,
) -> np.ndarray | DaskArray | tuple[np.ndarray | DaskArray, dict[str, np.ndarray]]:
    """Fuse two registered images or stacks with DeRUN or the training-free HIFM solver.

    Args:
        a: structural image (phase contrast, MRI, visible): numpy or dask array of layout
            ``YX``, ``YXC`` (RGB/RGBA), ``ZYX``, ``TYX``, ``TZYX`` (``…C``) or as given by ``axes``;
            uint8, uint16 or float (see :mod:`napari_derun.data.preprocess` for the normalisation).
        b: salient image (GFP, PET, SPECT, CT, infrared), same size (may be colour when ``a`` is not).
        model: ``admm`` (the training-free solver), a shipped model (``gfp_pc``, ``medical``,
            ``ivf``), a name registered in this session or a ``.safetensors`` checkpoint; see
            :func:`load_model`.
        device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        return_stages: also return per-stage intermediates (2-D inputs only; not tiled).
        percentiles: robust range for non-uint8 inputs, computed once for the whole stack.
        color_from: chroma source when both inputs are colour (``"auto"``: ``b``).
        callback: ``callback(done, total)`` progress in tile-stages (for one untiled plane:
            ``(stage, n_stages)``); it may raise to cancel.
        axes: axis letters when the default guess is wrong (e.g. ``"ZYX"`` for a 3-plane
            stack of shape ``(Z, Y, 3)``); a pair ``(axes_a, axes_b)`` for different layouts.
        tile: planes larger than ``tile`` pixels (either side) are fused in overlapping tiles
            (``None``/``0``: never tile).
        overlap: tile overlap in pixels (default 128, :data:`napari_derun.engine.stacks.DEFAULT_OVERLAP`).
        batch_size: planes/tiles per device batch (default 8 on CUDA, 1 otherwise); halved
            (then the tile) on GPU out-of-memory.
        cancel: a :class:`threading.Event`; when set, fusion stops with
            :class:`napari_derun.engine.stacks.FuseCancelled` between stages/tiles.
        ranges: fixed ``((lo_a, hi_a), (lo_b, hi_b))`` intensity ranges instead of percentiles.
        client: a ``dask.distributed.Client``: planes are fused on its workers.
        precision: ``"fp32"`` (default, the reference) or ``"bf16"`` (autocast; ~1.7× faster on
            CPUs with AVX512-BF16, within 1e-2 relative of fp32).

    Returns:
        float32 fused image in [0, 1] with the layout of the inputs (``C`` = 3 when an
        input is colour); a lazy dask array when an input is a dask array. With
        ``return_stages``: ``(fused, stages)`` where ``stages["X"]``/``["Y"]`` are
        ``(N, H, W)`` luminance and ``stages["E"]``/``["H"]`` are ``(N, L, H, W)``.
    """
    from .engine import stacks

    _check_tiling(tile, overlap)
    _check_inputs(a, b, axes)
    preprocess.check_percentiles(percentiles)
    if ranges is not None:
        ranges = (preprocess.check_range(ranges[0], "ranges[0] (a)"), preprocess.check_range(ranges[1], "ranges[1] (b)"))
    fuser = load_model(model, device, precision)
    if return_stages:
        if stacks._is_dask(a) or stacks._is_dask(b) or np.ndim(a) > 3 or (np.ndim(a) == 3 and axes not in (None, "YXC")):
            raise ValueError("return_stages=True works on one 2-D plane (YX or YXC numpy); for a stack, call "
                             "napari_derun.fuse(a[i], b[i], return_stages=True) on the plane you want to inspect")
        prep = preprocess.prepare_pair(a, b, percentiles=percentiles, color_from=color_from, ranges=ranges)
        x, stages = fuse_planes(fuser, prep.a[None], prep.b[None], return_stages=True, callback=callback)
        stages = {k: v[:, 0] for k, v in stages.items()}
        return preprocess.recolor(x[0], prep.chroma), stages
    if a is None or b is None:
        preprocess.validate_pair(a, b)  # raises with the standard message
    if not stacks._is_dask(a):
        a = np.asarray(a)
    if not stacks._is_dask(b):
        b = np.asarray(b)
    return stacks.fuse_stack(
        a, b, fuser, axes=axes, tile=tile or 0, overlap=stacks.DEFAULT_OVERLAP if overlap is None else overlap,
        batch_size=batch_size, percentiles=percentiles, color_from=color_from, ranges=ranges,
        callback=callback, cancel=cancel, client=client,
    )
