"""nD stacks, tiling of large planes, dask arrays: the engine behind :func:`napari_derun.fuse`.

* **Axes.** Inputs may be ``YX``, ``YXC`` (RGB/RGBA, C = 3 or 4), ``ZYX``, ``TYX``,
  ``TZYX`` (and ``…C``) or any string of axis letters passed as ``axes=``. Every
  axis other than Y, X and C is a *plane axis*: the planes are fused one by one
  (batched on the device) and the result keeps the input layout (colour when an
  input is colour).
* **Normalisation** is computed once per whole stack
  (:func:`stack_ranges`), never per plane, so that all planes of a stack share
  one intensity scale.
* **Tiling.** Planes larger than ``tile`` are cut into ``tile × tile`` tiles that
  overlap by ``overlap`` pixels. Each tile is fused on its own (the model's
  Fourier solve is global, so a tile differs from the whole-plane result near its
  borders); tiles are blended with separable raised-cosine ramps that give zero
  weight to the outer quarter of the overlap on each side (the least accurate
  pixels) and cross-fade over its middle half. Peak memory is then bounded by
  the tile size, not by the plane size.
* **Out of memory.** ``torch.cuda.OutOfMemoryError`` (or an MPS "out of memory")
  halves the batch, then the tile, and retries, down to ``OOM_MIN_TILE``.
* **Progress / cancel.** ``callback(done, total)`` counts tile-stages (one unit
  per tile per model stage; for a single untiled plane it is ``(stage, n_stages)``,
  as in the 2-D API). ``cancel`` (a :class:`threading.Event`) is checked between
  stages and tiles and raises :class:`FuseCancelled`.
* **dask.** A dask input returns a lazy dask array built with ``map_blocks``
  over blocks of whole planes.

numpy only at import time; torch is imported lazily.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..data import preprocess
from .tiling import (  # noqa: F401  (part of this module's interface)
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    MIN_TILE,
    FuseCancelled,
    _Progress,
    blend_weights,
    fuse_luma_planes,
    tile_starts,
)

__all__ = [
    "DEFAULT_TILE",
    "DEFAULT_OVERLAP",
    "MIN_TILE",
    "FuseCancelled",
    "infer_axes",
    "stack_ranges",
    "tile_starts",
    "blend_weights",
    "fuse_luma_planes",
    "fuse_stack",
    "Fusion",
]

#: dask inputs with at most this many elements get exact percentiles, larger ones a sampled estimate
EXACT_PERCENTILE_MAX = 1 << 24
SAMPLE_SIZE = 1 << 22


# ----------------------------------------------------------------------------- axes
def infer_axes(shape: tuple[int, ...], axes: str | None = None) -> str:
    """Axis letters of an array: given ``axes`` (checked) or the default for its shape.

    Defaults: 2-D ``YX``; 3-D ``YXC`` when the last size is 3 or 4, else ``ZYX``.
    Arrays with more dimensions are ambiguous (``TZYX``, ``ZYXC``, ``CZYX``…) and
    need ``axes=``; so does a ``(Z, Y, 3)`` stack (``axes="ZYX"``). All axes other
    than Y, X and C are treated alike (planes), so ``ZYX`` and ``TYX`` fuse the same.
    """
    nd = len(shape)
    if axes is None:
        if nd == 2:
            return "YX"
        if nd == 3:
            return "YXC" if shape[-1] in (3, 4) else "ZYX"
        raise ValueError(
            f"cannot guess the axes of an array of shape {shape}: "
            + ("expected a 2-D plane (Y, X), a colour plane (Y, X, 3) or a 3-D stack (Z, Y, X)"
               if nd < 2 else "pass axes= for arrays with more than 3 dimensions (e.g. axes='TZYX' or 'ZYXC')")
        )
    axes = axes.upper()
    if len(axes) != nd:
        raise ValueError(f"axes={axes!r} has {len(axes)} letters but the array has {nd} dimensions (shape {shape})")
    if len(set(axes)) != len(axes):
        raise ValueError(f"axes={axes!r} repeats a letter")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"axes={axes!r} must contain Y and X")
    if "C" in axes and shape[axes.index("C")] not in (3, 4):
        raise ValueError(
            f"axis C has size {shape[axes.index('C')]}: only RGB/RGBA (3 or 4) colour axes are fused on luminance; "
            "for other channel axes fuse each channel separately or give that axis another letter (e.g. 'S')"
        )
    return axes


def _pair_axes(sa, sb, axes) -> tuple[str, str]:
    if isinstance(axes, (tuple, list)):
        return infer_axes(sa, axes[0]), infer_axes(sb, axes[1])
    if axes is not None:
        axes = axes.upper()
        ax_a = axes if len(axes) == len(sa) else (axes + "C" if len(sa) == len(axes) + 1 else axes)
        ax_b = axes if len(axes) == len(sb) else (axes + "C" if len(sb) == len(axes) + 1 else axes)
        return infer_axes(sa, ax_a), infer_axes(sb, ax_b)
    # a grey stack and a colour stack of one more dimension (e.g. ZYX + ZYXC): share the axes
    if len(sb) == len(sa) + 1 and sb[-1] in (3, 4) and len(sa) >= 2:
        ax_a = infer_axes(sa)
        return ax_a, infer_axes(sb, ax_a + "C")
    if len(sa) == len(sb) + 1 and sa[-1] in (3, 4) and len(sb) >= 2:
        ax_b = infer_axes(sb)
        return infer_axes(sa, ax_b + "C"), ax_b
    ax_a, ax_b = infer_axes(sa), infer_axes(sb)
    return ax_a, ax_b


def _canonical_perm(ax: str) -> tuple[list[int], str]:
    lead = [i for i, c in enumerate(ax) if c not in "YXC"]
    perm = lead + [ax.index("Y"), ax.index("X")] + ([ax.index("C")] if "C" in ax else [])
    return perm, "".join(ax[i] for i in perm)


# ----------------------------------------------------------------------------- ranges
def _is_dask(x) -> bool:
    return type(x).__module__.startswith("dask.")


def stack_ranges(x, percentiles=preprocess.DEFAULT_PERCENTILES, seed: int = 0,
                 name: str = "") -> tuple[float, float]:
    """Intensity range of a whole stack, as :func:`preprocess.normalization_range` of the whole array.

    numpy arrays: exact. dask arrays: uint8/bool fixed ranges; float data inside
    [0, 1] (exact ``min``/``max``) keeps [0, 1]; otherwise exact percentiles when
    the array has at most ``EXACT_PERCENTILE_MAX`` (16 M) elements, else percentiles
    of a sample: up to 64 evenly spaced planes, strided in Y and X to about
    ``SAMPLE_SIZE`` (4 M) values (deterministic).
    """
    if not _is_dask(x):
        lo, hi = preprocess.normalization_range(np.asarray(x), percentiles)
        if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN pixels: the same message as for a 2-D image
            bad = int(np.count_nonzero(~np.isfinite(np.asarray(x)))) if np.asarray(x).dtype.kind == "f" else 0
            raise ValueError(f"image {name or '(input)'} contains {bad} NaN/Inf values; replace them "
                             "(e.g. np.nan_to_num) first")
        return lo, hi
    if x.dtype == np.uint8:
        return 0.0, 255.0
    if x.dtype == bool:
        return 0.0, 1.0
    import dask

    if x.dtype.kind == "f":
        mn, mx = dask.compute(x.min(), x.max())
        if float(mn) >= 0.0 and float(mx) <= 1.0:
            return 0.0, 1.0
    if x.size <= EXACT_PERCENTILE_MAX:
        lo, hi = np.percentile(np.asarray(x.compute()), percentiles)
        return float(lo), float(hi)
    sample = x
    if x.ndim > 2:  # evenly spaced planes along the first axis
        idx = np.unique(np.linspace(0, x.shape[0] - 1, min(x.shape[0], 64)).round().astype(int))
        sample = x[idx]
    stride = max(1, int(np.ceil(np.sqrt(sample.size / SAMPLE_SIZE))))
    sub = [slice(None)] * sample.ndim
    for i in sorted(range(sample.ndim), key=lambda i: -sample.shape[i])[:2]:  # the two largest axes
        sub[i] = slice(None, None, stride)
    sample = sample[tuple(sub)]
    lo, hi = np.percentile(np.asarray(sample.compute()), percentiles)
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- stacks
@dataclass(frozen=True, eq=False)
class Fusion:
    """What one run of the fusion pipeline produced.

    Attributes:
        fused: float32 in [0, 1] with the layout ``axes`` (numpy, or a lazy dask array for dask inputs).
        axes: the axis letters of ``fused`` (``C`` = 3 when it is colour).
        ranges: the intensity ranges ``((lo_a, hi_a), (lo_b, hi_b))`` a and b were mapped to [0, 1] with.
        stages: every stage's intermediates when asked for (``return_stages``), else None.
        tile: the tile side when planes were fused in tiles, else None.
        provenance: model, weights, device and parameters (filled in by :func:`napari_derun.fuse`).
    """

    fused: Any
    axes: str
    ranges: tuple[tuple[float, float], tuple[float, float]]
    stages: dict[str, np.ndarray] | None = None
    tile: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def fuse_stack(
    a,
    b,
    fuser,
    axes: str | tuple[str, str] | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int | None = None,
    percentiles=preprocess.DEFAULT_PERCENTILES,
    color_from: str = "auto",
    ranges=None,
    callback: Callable[[int, int], None] | None = None,
    cancel=None,
    client: Any = None,
    return_stages: bool = False,
    names: tuple[str, str] = ("a", "b"),
):
    """Fuse numpy or dask arrays of any supported layout with a loaded ``fuser``: the one fusion pipeline
    behind :func:`napari_derun.fuse`, the Fuse widget and ``napari-derun fuse``.

    See :func:`napari_derun.fuse` for the arguments. Returns a :class:`Fusion`: ``fused`` is float32 in
    [0, 1] with the layout of the inputs (``C`` = 3 when an input is colour): numpy for
    numpy inputs, a lazy dask array when an input is a dask array. With ``return_stages`` (numpy
    inputs; whole planes, not tiled) ``stages`` holds every stage as ``(N, lead…, Y, X)``
    (``E``, ``H``: ``(N, L, lead…, Y, X)``) with the leading axes in the inputs' order.
    """
    if batch_size is None:
        batch_size = 8 if str(fuser.device).startswith("cuda") else 1
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    for name, x in zip(names, (a, b)):
        if x.dtype.kind not in "biuf":
            raise ValueError(f"image {name} has unsupported dtype {x.dtype}; supported: bool, integer and float types")
        if x.size == 0:
            raise ValueError(f"image {name} is empty (shape {x.shape}): pass a non-empty image")
    sa, sb = tuple(a.shape), tuple(b.shape)
    if axes is None and len(sa) <= 3 and len(sb) <= 3 and not (_is_dask(a) or _is_dask(b)):
        if (len(sa) == 2 or sa[-1] in (3, 4)) and (len(sb) == 2 or sb[-1] in (3, 4)):
            preprocess.validate_pair(a, b, names=names)  # a 2-D pair: the detailed 2-D checks and messages
    ax_a, ax_b = _pair_axes(sa, sb, axes)
    if ax_a.replace("C", "") != ax_b.replace("C", ""):
        raise ValueError(f"a has axes {ax_a} and b has axes {ax_b}: both must have the same non-colour axes")
    pa, ca = _canonical_perm(ax_a)
    pb, cb = _canonical_perm(ax_b)
    shp_a = [sa[i] for i in pa][: len(ca.replace("C", ""))]
    shp_b = [sb[i] for i in pb][: len(cb.replace("C", ""))]
    if shp_a != shp_b:
        raise ValueError(
            f"the images differ in size: a is {dict(zip(ca, shp_a))} and b is {dict(zip(cb, shp_b))}; "
            "fusion needs two registered stacks of the same size"
        )
    colour = "C" in ax_a or "C" in ax_b
    out_ax = ax_a if "C" in ax_a or "C" not in ax_b else ax_b  # layout of the (first) colour input
    if ranges is None:
        ranges = (stack_ranges(a, percentiles, name=names[0]), stack_ranges(b, percentiles, name=names[1]))
    plan = _Plan("C" in ax_a, "C" in ax_b, colour, ranges, color_from, tile, overlap, batch_size)
    lazy = _is_dask(a) or _is_dask(b) or client is not None
    if return_stages and lazy:
        raise ValueError("return_stages=True needs numpy inputs (every stage of a lazy stack is kept in memory): "
                         "pass np.asarray(...) of the planes you want to inspect")
    tiled = int(tile) if tile and not return_stages and max(shp_a[-2:]) > int(tile) else None
    if not lazy:
        A = np.transpose(np.asarray(a), pa)
        B = np.transpose(np.asarray(b), pb)
        stages = None
        if return_stages:
            res, stages = _fuse_core_stages(fuser, A, B, plan, callback, cancel)
        else:
            res = _fuse_core(fuser, A, B, plan, callback, cancel)
        if colour and res.ndim == len(out_ax) - 1:  # colour inputs with grey content (R = G = B): grey result
            out_ax = out_ax.replace("C", "")
        _, c_out = _canonical_perm(out_ax)
        res = np.transpose(res, [c_out.index(c) for c in out_ax])
        return Fusion(res, out_ax, ranges, stages, tiled)
    res = _fuse_dask(a, b, fuser, (pa, pb), out_ax, plan, client)
    return Fusion(res, out_ax if res.ndim == len(out_ax) else out_ax.replace("C", ""), ranges, None, tiled)


@dataclass(frozen=True)
class _Plan:
    """How the planes of one fusion are fused: passed down to every plane, tile and dask block."""

    a_col: bool  # a has a colour axis (last)
    b_col: bool
    colour: bool  # the result has a colour axis
    ranges: tuple
    color_from: str
    tile: int
    overlap: int
    batch_size: int


def _fuse_core(fuser, A, B, plan: _Plan, callback=None, cancel=None, keep_c=False):
    """Canonical numpy ``(lead…, Y, X[, C])`` arrays → ``(lead…, Y, X[, 3])`` float32.

    Colour inputs whose planes are all grey (R = G = B) give a grey result unless ``keep_c``.
    """
    colour, ranges, color_from = plan.colour, plan.ranges, plan.color_from
    tile, overlap, batch_size = plan.tile, plan.overlap, plan.batch_size
    any_chroma = False
    lead, A2, B2, out = _as_planes(A, B, plan)
    n, H, W = out.shape[:3]
    t = int(tile) if tile else max(H, W)
    ov = min(int(overlap), t // 2)
    per_plane = len(tile_starts(H, t, ov)[0]) * len(tile_starts(W, t, ov)[0])
    group = max(1, batch_size // per_plane)
    prog = _Progress(callback, cancel, n * per_plane * fuser.n_stages)
    if per_plane > 1:  # large planes: converted to float tile by tile, fused straight into ``out``
        from .tiling import fuse_raw_plane

        for i in range(n):
            prog.check()
            if fuse_raw_plane(fuser, A2[i], B2[i], ranges, color_from, prog.tile or t, overlap,
                              prog.batch or batch_size, prog, out[i]):
                any_chroma = True
        return _from_planes(out, lead, colour and not any_chroma and not keep_c)
    for g0 in range(0, n, group):
        prog.check()
        idx = range(g0, min(n, g0 + group))
        preps = [preprocess.prepare_pair(A2[i], B2[i], color_from=color_from, ranges=ranges) for i in idx]
        # one plane: a view, no copy (keeps the peak memory of large planes down)
        la = preps[0].a[None] if len(preps) == 1 else np.stack([p.a for p in preps])
        lb = preps[0].b[None] if len(preps) == 1 else np.stack([p.b for p in preps])
        fused = fuse_luma_planes(fuser, la, lb, prog.tile or t, overlap, prog.batch or batch_size, _progress=prog)
        for i, p, f in zip(idx, preps, fused):
            r = preprocess.recolor(f, p.chroma)
            any_chroma = any_chroma or p.chroma is not None
            out[i] = r[..., None] if (colour and r.ndim == 2) else r
        del preps, la, lb, fused
    return _from_planes(out, lead, colour and not any_chroma and not keep_c)


def _as_planes(A, B, plan: _Plan):
    """``(lead shape, A and B as (n, Y, X[, C]), the empty float32 output (n, Y, X[, 3]))``."""
    ka = A.ndim - (3 if plan.a_col else 2)
    lead = A.shape[:ka]
    n = int(np.prod(lead)) if lead else 1
    H, W = A.shape[ka], A.shape[ka + 1]
    out = np.empty((n, H, W, 3) if plan.colour else (n, H, W), np.float32)
    return lead, A.reshape((n,) + A.shape[ka:]), B.reshape((n,) + B.shape[ka:]), out


def _from_planes(out: np.ndarray, lead, grey: bool) -> np.ndarray:
    """The ``(n, Y, X[, 3])`` result back to ``(lead…, Y, X[, 3])``; one channel when ``grey``."""
    if grey:
        out = np.ascontiguousarray(out[..., 0])
    return out.reshape(tuple(lead) + out.shape[1:])


def _fuse_core_stages(fuser, A, B, plan: _Plan, callback=None, cancel=None):
    """Canonical numpy ``(lead…, Y, X[, C])`` arrays → ``(fused, stages)``: whole planes one at a time
    (the stages need the whole plane), every stage kept as ``(N[, L], lead…, Y, X)``."""
    from .registry import fuse_planes

    colour, ranges, color_from = plan.colour, plan.ranges, plan.color_from
    lead, A2, B2, out = _as_planes(A, B, plan)
    n, H, W = out.shape[:3]
    prog = _Progress(callback, cancel, n * fuser.n_stages)
    stages: dict[str, np.ndarray] = {}
    any_chroma = False
    for i in range(n):
        prog.check()
        p = preprocess.prepare_pair(A2[i], B2[i], color_from=color_from, ranges=ranges)
        x, st = fuse_planes(fuser, p.a[None], p.b[None], return_stages=True, callback=lambda s, k: prog.step(1))
        r = preprocess.recolor(x[0], p.chroma)
        any_chroma = any_chroma or p.chroma is not None
        out[i] = r[..., None] if (colour and r.ndim == 2) else r
        for k, v in st.items():
            v = v[:, 0]  # (N, H, W) or (N, L, H, W)
            if k not in stages:
                stages[k] = np.empty(v.shape[:-2] + (n, H, W), np.float32)
            stages[k][..., i, :, :] = v
    stages = {k: v.reshape(v.shape[:-3] + tuple(lead) + (H, W)) for k, v in stages.items()}
    return _from_planes(out, lead, colour and not any_chroma), stages


def _block_fuse(a_blk, b_blk, model, plan: _Plan):
    from .distributed import resolve_fuser

    return _fuse_core(resolve_fuser(model), a_blk, b_blk, plan, keep_c=True)


def _fuse_dask(a, b, fuser, perms, out_ax, plan: _Plan, client):
    import dask.array as da

    A = da.asarray(a).transpose(perms[0])
    B = da.asarray(b).transpose(perms[1])
    colour, batch_size = plan.colour, plan.batch_size
    if colour:  # give both inputs the same trailing 3-channel axis so that their blocks align
        A = A[..., :3] if plan.a_col else da.repeat(A[..., None], 3, axis=-1)
        B = B[..., :3] if plan.b_col else da.repeat(B[..., None], 3, axis=-1)
        plan = dataclasses.replace(plan, a_col=True, b_col=True)
    nlead = A.ndim - (3 if colour else 2)
    chunks = tuple([1] * max(0, nlead - 1) + ([min(batch_size, A.shape[nlead - 1])] if nlead else []))
    chunks = chunks + (-1,) * (A.ndim - nlead)
    A = A.rechunk(chunks)
    B = B.rechunk(chunks)
    if client is not None:
        from .distributed import model_spec

        model = model_spec(fuser)
    else:
        model = fuser
    out = da.map_blocks(
        _block_fuse, A, B, model, plan, dtype=np.float32, chunks=A.chunks, meta=np.empty((0,) * A.ndim, np.float32),
    )
    _, c_out = _canonical_perm(out_ax)
    out = out.transpose([c_out.index(c) for c in out_ax])
    if client is not None and not (_is_dask(a) or _is_dask(b)):
        return client.compute(out).result()
    return out
