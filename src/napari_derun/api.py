"""Public scripting API: ``fuse``, ``load_model``, ``list_models``.

The napari widgets, the CLI and the tests all go through these functions. Model loading and the
registry live in :mod:`napari_derun.engine.registry` (re-exported here); :func:`fuse` runs the nD engine
of :mod:`napari_derun.engine.stacks`.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any, Callable

from numpy.typing import ArrayLike

import numpy as np

from .data import preprocess
if TYPE_CHECKING:  # dask is imported only when a dask array comes in
    from dask.array import Array as DaskArray
from .engine.tiling import MIN_TILE
from .engine.registry import (  # noqa: F401  (the public API)
    MODELS,
    TRAINING_FREE,
    WEIGHTS_DIR,
    Fuser,
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

#: ``model="auto"``: the shipped model of the task the images look like (:mod:`napari_derun.data.task_guess`)
AUTO = "auto"
log = logging.getLogger("napari_derun")


def auto_model(a, b, axes=None, names=None, remembered=None) -> tuple[str, Any, str]:
    """What ``model="auto"`` runs on this pair: ``(model, guess, message)``.

    Args:
        a: the structural image or stack (numpy or dask).
        b: the salient image or stack.
        axes: as in :func:`fuse` (tells whether the last axis is colour).
        names: layer or file names, a hint when the content does not decide.
        remembered: a model picked before, a hint when neither content nor names decide.

    Returns:
        The model name, the :class:`~napari_derun.data.task_guess.PairGuess` and a sentence saying which
        model and why.
    """
    from .data.task_guess import choose_model

    from .engine.stacks import _canonical_perm, _pair_axes

    try:
        ax_a, ax_b = _pair_axes(np.shape(a), np.shape(b), axes)
        (pa, ax_a), (pb, ax_b) = _canonical_perm(ax_a), _canonical_perm(ax_b)  # (planes..., Y, X[, C])
        a, b = (x.transpose(p) if hasattr(x, "transpose") else np.transpose(x, p) for x, p in ((a, pa), (b, pb)))
        return choose_model(a, b, list_models(), names=names, remembered=remembered, a_rgb=ax_a.endswith("C"),
                            b_rgb=ax_b.endswith("C"))
    except ValueError:
        raise  # the axes do not fit the arrays: the same message fuse() gives
    except Exception as e:  # noqa: BLE001 - the guess is a convenience; fusion must not fail on it
        from .data.task_guess import PairGuess

        msg = f"auto: admm, because the images could not be analysed ({type(e).__name__}: {e})"
        return TRAINING_FREE, PairGuess("ivf", msg, False), msg


def _napari_console():
    """The napari helpers when this runs on the GUI thread of a napari session, else None."""
    if "napari" not in sys.modules or threading.current_thread() is not threading.main_thread():
        return None
    from ._widgets import _console

    return _console if _console.active() else None


def check_tiling(tile, overlap) -> None:
    """Raise ValueError unless ``tile`` (0/None: no tiling, else at least :data:`MIN_TILE`) and ``overlap`` are
    whole numbers of pixels."""
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


def _check_inputs(a, b, axes, names=("a", "b")) -> None:
    """Clear messages for inputs no engine can take (before any model is loaded)."""
    if axes is not None and not isinstance(axes, str) and not (
            isinstance(axes, (tuple, list)) and len(axes) == 2 and all(isinstance(x, str) for x in axes)):
        raise ValueError(f"axes must be a string such as 'ZYX' or a pair of strings, got {axes!r}")
    for name, x in zip(names, (a, b)):
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
    model: Any = AUTO,
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
    colour: str = "auto",
    b_colormap: Any = None,
    return_result: bool = False,
    names: tuple[str, str] = ("a", "b"),
    restore: dict[str, str] | None = None,
) -> Any:
    """Fuse two registered images or stacks with DeRUN or the training-free HIFM solver.

    Args:
        a: structural image (phase contrast, MRI, visible): numpy or dask array of layout
            ``YX``, ``YXC`` (RGB/RGBA), ``ZYX``, ``TYX``, ``TZYX`` (``…C``) or as given by ``axes``;
            uint8, uint16 or float (see :mod:`napari_derun.data.preprocess` for the normalisation).
        b: salient image (GFP, PET, SPECT, CT, infrared), same size (may be colour when ``a`` is not).
        model: ``auto`` (default: the shipped model of the task the images look like, see
            :func:`auto_model`; the choice and the reason are logged, and shown in napari), ``admm``
            (the training-free solver), a shipped model (``gfp_pc``, ``medical``, ``ivf``), a name
            registered in this session or a ``.safetensors`` checkpoint; see :func:`load_model`.
        device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        return_stages: also return every stage's intermediates (numpy inputs of any layout; whole planes,
            not tiled).
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
        colour: ``"auto"`` (``"overlay"`` when ``b_colormap`` is given, else ``"chroma"``), ``"overlay"``
            (structure in grey or in a's colours, the salient part in b's colour: what napari's additive
            overlay of the two layers shows, fused), ``"chroma"`` (the fused luminance with the colour
            input's chroma) or ``"luminance"`` (one grey channel); see :mod:`napari_derun.data.colour`.
            ``overlay`` and ``luminance`` read dask inputs into memory.
        b_colormap: the colour map a grey ``b`` is shown with (``"green"``, a matplotlib name, an
            ``(N, 3)`` table or a callable), for ``colour="overlay"``.
        return_result: return a :class:`~napari_derun.engine.stacks.Fusion` (the fused array, its axes,
            the intensity ranges used, the stages when asked for, the tile, and the provenance: model,
            weights, device, parameters) instead of the array.
        names: what messages about the inputs call them (layer or file names).
        restore: restore a degraded input before fusing, e.g. ``{"b": "noise"}`` for a low-photon GFP channel
            or ``{"a": "haze"}``: classical, training-free restoration of each plane
            (:mod:`napari_derun.data.restoration`: non-local means for ``noise``, ``shot_noise``, ``rician``…,
            dark-channel dehazing for ``haze``, gamma + denoising for ``low_light``, ``blur``, ``stripe_noise``,
            ``low_contrast``, ``background``, ``rain``). On degraded inputs this restore-then-fuse beats the
            models alone in most cases measured (docs/robustness.md). numpy inputs.

    Returns:
        float32 fused image in [0, 1] with the layout of the inputs (``C`` = 3 when an
        input is colour); a lazy dask array when an input is a dask array. With
        ``return_stages``: ``(fused, stages)`` where ``stages["X"]``/``["Y"]`` are
        ``(N, H, W)`` luminance and ``stages["E"]``/``["H"]`` are ``(N, L, H, W)`` (a stack's leading axes
        come before ``H, W``: ``(N, Z, H, W)``, ``(N, L, T, Z, H, W)``).
    """
    from .engine import stacks

    check_tiling(tile, overlap)
    _check_inputs(a, b, axes, names)
    preprocess.check_percentiles(percentiles)
    if ranges is not None:
        ranges = (preprocess.check_range(ranges[0], "ranges[0] (a)"), preprocess.check_range(ranges[1], "ranges[1] (b)"))
    if colour not in ("auto", "overlay", "chroma", "luminance"):
        raise ValueError(f"colour must be 'auto', 'overlay', 'chroma' or 'luminance', got {colour!r}")
    if colour == "auto":
        colour = "overlay" if b_colormap is not None else "chroma"
    gui = _napari_console()
    if isinstance(model, str) and model == AUTO:
        if a is None or b is None:
            preprocess.validate_pair(a, b, names=names)  # raises with the standard message
        model, guess, msg = auto_model(a, b, axes)
        log.info(msg)
        if gui is not None:
            gui.notify(msg)
        if guess.swapped:
            warnings.warn(f"a and b look the wrong way round: {guess.role_reason}. Pass the structural image as a "
                          "and the salient one as b.", UserWarning, stacklevel=2)
    fuser = load_model(model, device, precision)
    if gui is not None and callback is None:
        with gui.progress("napari-derun: fusing") as callback:
            return fuse(a, b, fuser, fuser.device, return_stages, percentiles, color_from, callback, axes=axes,
                        tile=tile, overlap=overlap, batch_size=batch_size, cancel=cancel, ranges=ranges,
                        client=client, colour=colour, b_colormap=b_colormap, return_result=return_result,
                        names=names, restore=restore)
    if a is None or b is None:
        preprocess.validate_pair(a, b, names=names)  # raises with the standard message
    raw_ranges = None
    if restore:  # restored, in [0, 1]; the result still reports the ranges of the inputs as given
        a, b, raw_ranges = _restored_inputs(a, b, restore, axes, ranges, percentiles, names)
        ranges = ((0.0, 1.0), (0.0, 1.0))
    overlap = stacks.DEFAULT_OVERLAP if overlap is None else overlap
    kw = dict(tile=tile or 0, overlap=overlap, batch_size=batch_size, callback=callback, cancel=cancel,
              client=client, return_stages=return_stages, names=names)
    if colour in ("overlay", "luminance"):
        res = _fuse_coloured(np.asarray(a), np.asarray(b), fuser, colour, b_colormap, axes, percentiles, ranges, kw)
    else:
        a = a if stacks._is_dask(a) else np.asarray(a)
        b = b if stacks._is_dask(b) else np.asarray(b)
        res = stacks.fuse_stack(a, b, fuser, axes=axes, percentiles=percentiles, color_from=color_from,
                                ranges=ranges, **kw)
    if raw_ranges is not None:
        res = dataclasses.replace(res, ranges=raw_ranges)
    if not return_result:
        return (res.fused, res.stages) if return_stages else res.fused
    prov = dict(fuser.provenance())
    prov["parameters"] = {"axes": res.axes, "ranges": [list(r) for r in res.ranges], "percentiles": list(percentiles),
                          "tile": res.tile, "overlap": overlap if res.tile else None, "colour": colour,
                          "restore": dict(restore) if restore else None}
    return dataclasses.replace(res, provenance=prov)


def _restored_inputs(a, b, restore: dict[str, str], axes, ranges, percentiles, names):
    """``(a, b, ranges)``: the inputs named in ``restore`` restored, both mapped to [0, 1] float32 by their
    stack ``ranges`` (given, or computed here)."""
    from .data import restoration
    from .engine import stacks

    if not isinstance(restore, dict) or set(restore) - {"a", "b"}:
        raise ValueError(f"restore must be a dict with the keys 'a' and/or 'b', e.g. {{'b': 'noise'}}; got {restore!r}")
    for key, name in restore.items():
        if name is not None and name not in restoration.RESTORERS:
            raise ValueError(f"restore[{key!r}] = {name!r}: choose one of {', '.join(sorted(restoration.RESTORERS))}")
    if stacks._is_dask(a) or stacks._is_dask(b):
        raise ValueError("restore= needs numpy inputs (each plane is restored in memory): pass np.asarray(...)")
    a, b = np.asarray(a), np.asarray(b)
    ax_a, ax_b = stacks._pair_axes(a.shape, b.shape, axes)
    if ranges is None:
        ranges = (stacks.stack_ranges(a, percentiles, name=names[0]), stacks.stack_ranges(b, percentiles, name=names[1]))
    out = []
    for key, x, ax, r in (("a", a, ax_a, ranges[0]), ("b", b, ax_b, ranges[1])):
        x01 = preprocess.to_float01(x, r)
        if restore.get(key):
            x01 = restoration.restore_planes(x01, restore[key], (ax.index("Y"), ax.index("X")))
        out.append(x01)
    return out[0], out[1], ranges


def _fuse_coloured(a: np.ndarray, b: np.ndarray, fuser, colour: str, b_colormap, axes, percentiles, ranges,
                   kw: dict):
    """Fuse the luminances, then colour the result (:func:`napari_derun.data.colour.compose`): a ``Fusion``."""
    from .data import colour as col
    from .engine import stacks

    ax_a, ax_b = stacks._pair_axes(a.shape, b.shape, axes)
    for name, ax in (("a", ax_a), ("b", ax_b)):
        if "C" in ax and not ax.endswith("C"):
            raise ValueError(f"colour={colour!r} needs the colour axis of {name} last (axes {ax!r})")
    ra, rb = ranges if ranges is not None else (stacks.stack_ranges(a, percentiles, name=kw["names"][0]),
                                                 stacks.stack_ranges(b, percentiles, name=kw["names"][1]))
    a01, b01 = preprocess.to_float01(a, ra), preprocess.to_float01(b, rb)
    la, _ = col.split(a01, ax_a.endswith("C"))
    lb, _ = col.split(b01, ax_b.endswith("C"))
    res = stacks.fuse_stack(la, lb, fuser, axes=(ax_a.replace("C", ""), ax_b.replace("C", "")),
                            ranges=((0.0, 1.0), (0.0, 1.0)), percentiles=percentiles, color_from="auto", **kw)
    out = col.compose(np.asarray(res.fused, np.float32), a01, b01, ax_a.endswith("C"), ax_b.endswith("C"), colour,
                      b_colormap)
    out_ax = res.axes + ("C" if out.ndim > len(res.axes) else "")
    return dataclasses.replace(res, fused=out, axes=out_ax, ranges=(ra, rb))
