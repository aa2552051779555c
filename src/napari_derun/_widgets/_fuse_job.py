"""The compute behind the Fuse widget, as plain functions (numpy in, numpy out; no Qt).

The widget calls :func:`run_fusion` in a napari thread worker; tests call it directly.
Stacks (z, t, any leading axes) are fused slice by slice with the same model: every axis
before ``(Y, X)`` (or ``(Y, X, RGB)``) is a leading axis. Dask-backed arrays are computed
one plane at a time. Intensity ranges are fixed once per stack (for a single 2-D plane
this is exactly what :func:`napari_derun.fuse` does, so the results are identical).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from ..data import preprocess
from ..data.restoration import NOISE_THRESHOLD
from ..engine.tiling import FuseCancelled

__all__ = [
    "FAST_METRICS",
    "FusionResult",
    "FuseOptions",
    "check_pair",
    "estimate_shift",
    "shift_plane",
    "looks_misaligned",
    "run_fusion",
    "fast_metrics",
    "full_metrics",
]

#: metrics shown live after each run (cheap ones); the "All eight metrics" button adds the rest
FAST_METRICS = ("EN", "AG", "SSIM", "PSNR", "SR")
#: a pair whose estimated shift exceeds this many pixels is reported as misaligned
MISALIGN_PX = 3.0


def spatial_shape(data, rgb: bool) -> tuple[int, ...]:
    """Shape without the colour axis."""
    shp = tuple(int(s) for s in data.shape)
    return shp[:-1] if rgb else shp


def check_pair(a_data, b_data, a_rgb: bool = False, b_rgb: bool = False,
               a_name: str = "structural", b_name: str = "salient") -> tuple[int, ...]:
    """Check that two layers' data can be fused plane by plane; return the common spatial shape.

    Raises:
        ValueError: with a message saying what is wrong and what to do.
    """
    sa, sb = spatial_shape(a_data, a_rgb), spatial_shape(b_data, b_rgb)
    for name, s in ((a_name, sa), (b_name, sb)):
        if len(s) < 2:
            raise ValueError(f"layer '{name}' has shape {s}: an image with at least 2 axes (Y, X) is needed")
        if min(s[-2:]) < 3:
            raise ValueError(f"layer '{name}' is too small ({s[-2:]}); DeRUN needs at least 3 x 3 pixels")
    if sa != sb:
        raise ValueError(
            f"the layers differ in shape: '{a_name}' is {sa} and '{b_name}' is {sb}. "
            "Fusion needs two registered images with the same size and the same number of planes: "
            "resample or crop one of them first (e.g. with Layers > Transform or scikit-image)."
        )
    for name, d in ((a_name, a_data), (b_name, b_data)):
        kind = np.dtype(d.dtype).kind
        if kind not in "biuf":
            raise ValueError(f"layer '{name}' has unsupported data type {d.dtype}; convert it to numbers first")
    return sa


#: dask inputs smaller than this are read into memory so that fusion reports progress plane by plane
INMEMORY_BYTES = 2 * 1024**3


def _plane(data, idx: tuple[int, ...]) -> np.ndarray:
    """One (Y, X[, C]) plane as numpy (computes dask/zarr lazily, plane by plane)."""
    return np.asarray(data[idx] if idx else data)


def _luma(x: np.ndarray, rng) -> np.ndarray:
    return preprocess.split_luma(preprocess.to_float01(x, rng))[0]


def _middle_index(lead: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s // 2 for s in lead)


def estimate_shift(a_data, b_data, a_rgb: bool = False, b_rgb: bool = False, max_size: int = 256,
                   sigma: float = 1.0) -> tuple[float, float]:
    """Estimated (dy, dx) shift (full-resolution pixels) to apply to ``b`` to align it with ``a``.

    Cross-correlation (``skimage.registration.phase_cross_correlation``, zero-padded) of the
    locally normalised gradient magnitudes of the middle plane, downsampled to ``max_size``.
    A heuristic: between very different modalities (PET, SPECT, GFP) it can report a few pixels
    on a registered pair; see :func:`looks_misaligned` and :func:`shift_is_consistent`. ``sigma``: the
    smoothing (pixels of the reduced image) before the gradients.
    """
    from scipy import ndimage as ndi
    from skimage.registration import phase_cross_correlation

    sa = spatial_shape(a_data, a_rgb)
    mid = _middle_index(sa[:-2])
    pa, pb = _plane(a_data, mid), _plane(b_data, mid)
    la = _luma(pa, preprocess.normalization_range(pa))
    lb = _luma(pb, preprocess.normalization_range(pb))
    f = max(1, int(np.ceil(max(la.shape) / max_size)))
    if f > 1:
        la = ndi.uniform_filter(la, f)[::f, ::f]
        lb = ndi.uniform_filter(lb, f)[::f, ::f]

    def features(x):
        # locally normalised gradient magnitude: edges of both modalities at comparable strength
        x = ndi.gaussian_filter(x.astype(np.float64), sigma)
        g = np.hypot(ndi.sobel(x, 0), ndi.sobel(x, 1))
        g = g / (ndi.gaussian_filter(g, 8.0) + 1e-3 * g.max() + 1e-12)
        return g - g.mean()

    ga, gb = features(la), features(lb)
    if ga.std() < 1e-9 or gb.std() < 1e-9:
        return 0.0, 0.0
    pad = max(la.shape) // 4  # zero padding: no wrap-around matches
    shift, _, _ = phase_cross_correlation(np.pad(ga, pad), np.pad(gb, pad), upsample_factor=4, normalization=None)
    return float(shift[0]) * f, float(shift[1]) * f


def shift_is_consistent(a_data, b_data, a_rgb: bool, b_rgb: bool, shift: tuple[float, float],
                        tol: float = 1.5) -> bool:
    """Whether two more estimates (coarser image, smoother gradients) agree with ``shift`` within ``tol``
    pixels. A real shift is found at every scale; the spurious matches between different modalities
    move with the scale. On 25 real registered pairs per task this check removed the warnings on
    GFP/phase contrast (10 → 0), CT/MRI (11 → 0) and PET/MRI (18 → 1), SPECT/MRI 24 → 6, IR/visible 9 → 3."""
    for kw in ({"max_size": 128, "sigma": 1.5}, {"max_size": 256, "sigma": 2.5}):
        other = estimate_shift(a_data, b_data, a_rgb, b_rgb, **kw)
        if float(np.hypot(other[0] - shift[0], other[1] - shift[1])) > tol:
            return False
    return True


#: noise level above which the widget suggests restoring an input first (the level of the "auto" restoration)
NOISE_HINT = NOISE_THRESHOLD


def noise_hint(a_data, b_data, a_rgb: bool, b_rgb: bool, names: tuple[str, str], restore: tuple[str, str]
               ) -> str | None:
    """A suggestion to restore an input first when its middle plane shows column stripes (an infrared camera's
    fixed pattern: :func:`~napari_derun.data.restoration.stripe_score` above ``STRIPE_THRESHOLD``) or looks
    noisy (and no restoration is chosen for it), else None."""
    from ..data.restoration import STRIPE_THRESHOLD, noise_score, stripe_score

    noisy, striped = [], []
    for data, rgb, name, chosen in zip((a_data, b_data), (a_rgb, b_rgb), names, restore):
        if chosen != "none":
            continue
        p = _plane(data, _middle_index(spatial_shape(data, rgb)[:-2]))
        x = _luma(p, preprocess.normalization_range(p))[:512, :512]
        score = stripe_score(x)
        if score > STRIPE_THRESHOLD:
            striped.append(f"'{name}' ({score:.3f})")
            continue
        sigma = noise_score(x)
        if sigma > NOISE_HINT:
            noisy.append(f"'{name}' ({sigma:.3f})")
    parts = []
    if striped:
        parts.append(f"{' and '.join(striped)} show{'s' if len(striped) == 1 else ''} column stripes (stripe "
                     "score): choose 'auto' or 'stripe_noise' in 'Restore a / b first' to destripe before fusing")
    if noisy:
        parts.append(f"{' and '.join(noisy)} look{'s' if len(noisy) == 1 else ''} noisy (estimated noise std on "
                     "[0, 1]): choose 'auto' or 'noise' in 'Restore a / b first' to denoise before fusing")
    return "; ".join(parts) + " (docs/robustness.md)." if parts else None


def looks_misaligned(shift: tuple[float, float], shape: tuple[int, ...], px: float = MISALIGN_PX) -> bool:
    """True when ``shift`` exceeds ``px`` pixels but stays plausible (under 10 % of the image side).

    Larger estimates between different modalities are usually spurious matches, not real shifts.
    """
    mag = float(np.hypot(*shift))
    return px < mag <= 0.1 * min(shape[-2:])


def shift_plane(x: np.ndarray, shift: tuple[float, float], rgb: bool) -> np.ndarray:
    """Shift a (Y, X[, C]) plane by (dy, dx) with linear interpolation; keeps the dtype."""
    from scipy import ndimage as ndi

    sh = tuple(shift) + ((0.0,) if rgb else ())
    out = ndi.shift(x.astype(np.float32), sh, order=1, mode="nearest")
    if x.dtype.kind in "iub":
        info = np.iinfo(x.dtype) if x.dtype.kind in "iu" else None
        out = np.rint(out)
        if info is not None:
            out = np.clip(out, info.min, info.max)
        return out.astype(x.dtype)
    return out.astype(x.dtype)


def fast_metrics(a_l: np.ndarray, b_l: np.ndarray, f_l: np.ndarray) -> dict[str, float]:
    """EN, AG, SSIM, PSNR (:mod:`napari_derun.evaluation.metrics`) and SR, the share of the salient image's
    contrast kept (:mod:`napari_derun.evaluation.metrics_extra`), of luminance planes in [0, 1]."""
    from ..evaluation.metrics_extra import METRIC_FUNCTIONS

    return {k: float(METRIC_FUNCTIONS[k](a_l, b_l, f_l, data_range=1.0)) for k in FAST_METRICS}


def full_metrics(a_l: np.ndarray, b_l: np.ndarray, f_l: np.ndarray) -> dict[str, float]:
    """All eight metrics (:func:`napari_derun.evaluation.metrics.all_metrics`) of luminance planes in [0, 1]."""
    from ..evaluation import metrics as m

    return {k: float(v) for k, v in m.all_metrics(a_l, b_l, f_l, data_range=1.0).items()}


@dataclass(frozen=True, eq=False)
class FusionResult:
    """What one run of the Fuse widget's job produced.

    Attributes:
        fused: float32 in [0, 1], ``(..., Y, X)`` or ``(..., Y, X, 3)``.
        rgb: whether ``fused`` is RGB.
        stages: per-stage arrays (``X``; ``E``, ``H``), empty unless asked for.
        provenance: what produced it (model, weights, device, parameters), for ``layer.metadata``.
        metrics: the live metrics of the middle plane (:data:`FAST_METRICS`).
        middle: the middle plane's ``(a, b, fused)`` luminance, or None.
        seconds: wall time of the run.
        n_stages: stages of the model.
    """

    fused: np.ndarray
    rgb: bool
    stages: dict[str, np.ndarray]
    provenance: dict[str, Any]
    metrics: dict[str, float]
    middle: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    seconds: float
    n_stages: int


def _fuse_through_the_pipeline(a_data, b_data, a_rgb, b_rgb, lead, fuser, want, **kw):
    """``napari_derun.fuse`` of two layers' data (``(lead…, Y, X[, C])``), as the console runs it: its
    :class:`~napari_derun.engine.stacks.Fusion` with the result in memory; more than two leading axes are
    folded into one (planes are independent given the ranges)."""
    from .. import api
    from ..engine import stacks

    a_in, b_in = a_data, b_data
    lazy = [x for x in (a_in, b_in) if stacks._is_dask(x)]
    if lazy and (want or sum(x.nbytes for x in lazy) < INMEMORY_BYTES):
        a_in, b_in = np.asarray(a_in), np.asarray(b_in)  # small enough (or stages kept): progress per plane
    fold = len(lead) > 2
    P = int(np.prod(lead)) if lead else 1
    if fold:
        a_in, b_in = (x if stacks._is_dask(x) else np.asarray(x) for x in (a_in, b_in))
        a_in = a_in.reshape((P,) + tuple(a_in.shape[len(lead):]))
        b_in = b_in.reshape((P,) + tuple(b_in.shape[len(lead):]))
    lead_ax = "TZ"[2 - (1 if fold else len(lead)):]
    axes = (lead_ax + "YX" + ("C" if a_rgb else ""), lead_ax + "YX" + ("C" if b_rgb else ""))
    res = api.fuse(a_in, b_in, model=fuser, device=fuser.device, axes=axes, return_stages=want, return_result=True,
                   **kw)
    fused = np.asarray(res.fused, dtype=np.float32)  # computes a lazy (dask) result
    st = res.stages or {}
    if fold:
        fused = fused.reshape(tuple(lead) + fused.shape[1:])
        st = {k: v.reshape(v.shape[:-3] + tuple(lead) + v.shape[-2:]) for k, v in st.items()}
    return dataclasses.replace(res, fused=fused, stages=st)


@dataclass(frozen=True)
class FuseOptions:
    """The Fuse widget's choices for one run, one field per control (see :func:`run_fusion`)."""

    model: Any = "admm"
    device: str = "auto"
    with_stages: bool = False
    with_eh: bool = False
    align_shift: tuple[float, float] | None = None
    percentiles: tuple[float, float] = preprocess.DEFAULT_PERCENTILES
    tile: int | None = None
    colour: str = "overlay"
    b_colormap: Any = None
    auto: dict | None = None
    restore: dict | None = None


def run_fusion(
    a_data,
    b_data,
    options: FuseOptions | None = None,
    *,
    a_rgb: bool = False,
    b_rgb: bool = False,
    names: tuple[str, str] = ("a", "b"),
    callback: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> "FusionResult":
    """Fuse two layers' data through :func:`napari_derun.fuse` (the one pipeline) and describe the result.

    Args:
        a_data, b_data: structural / salient arrays ``(..., Y, X)`` or ``(..., Y, X, 3|4)``
            (numpy, dask or any array-like with the same spatial shape).
        options: the widget's choices (:class:`FuseOptions`; default: admm on the best device).
        a_rgb, b_rgb: whether the last axis of a / b is colour.
        names: the layers' names (messages, provenance).

    Fields of :class:`FuseOptions`:
        model: a name for :func:`napari_derun.api.load_model`, a checkpoint path or a Fuser.
        with_stages: return every stage's X as ``stages["X"]`` ``(N, ..., Y, X)``.
        with_eh: also return ``stages["E"]``/``["H"]`` ``(N, L, ..., Y, X)``.
        align_shift: ``(dy, dx)`` to shift ``b`` by before fusing (see :func:`estimate_shift`).
        callback: ``callback(done, total)`` in stage work (as :func:`napari_derun.fuse` reports it) after each
            stage, and ``(total, total)`` at the end; it may raise
            :class:`~napari_derun.engine.tiling.FuseCancelled`.
        cancel: an Event; when set, the run stops at the next stage with
            :class:`~napari_derun.engine.tiling.FuseCancelled`.
        tile: planes larger than this (default :data:`napari_derun.engine.stacks.DEFAULT_TILE`) are fused in
            overlapping blended tiles (not when stage layers are asked for: those need the whole plane).
        colour: ``"overlay"`` (grey structure, the salient part in b's colour: what napari's additive overlay
            of the two layers shows), ``"luminance"`` (one grey channel) or ``"chroma"``; see
            :mod:`napari_derun.data.colour`.
        b_colormap: the colour map a grey salient layer is shown with (an ``(N, 3)`` table or a name).
        auto: what ``model="auto"`` decided (model, reason), recorded in the provenance.
        restore: restore a degraded input before fusing, e.g. ``{"b": "noise"}`` (see :func:`napari_derun.fuse`).

    Returns:
        A :class:`FusionResult`.
    """
    from .. import api
    from ..engine import stacks

    o = options or FuseOptions()
    t0 = time.perf_counter()
    shape = check_pair(a_data, b_data, a_rgb, b_rgb, *names)
    lead = shape[:-2]
    fuser = o.model if isinstance(o.model, api.Fuser) else api.load_model(o.model, o.device)
    idxs = list(np.ndindex(*lead)) if lead else [()]
    if o.align_shift is not None and any(abs(s) > 0 for s in o.align_shift):
        b_data = np.stack([shift_plane(_plane(b_data, i), o.align_shift, b_rgb) for i in idxs]).reshape(
            tuple(lead) + tuple(np.shape(b_data)[len(lead):]))
    want = o.with_stages or o.with_eh
    total = len(idxs) * fuser.n_stages

    def cb(done, tot):
        if cancel is not None and cancel.is_set():
            raise FuseCancelled("fusion cancelled")
        if callback is not None:
            callback(min(done, tot), tot)

    res = _fuse_through_the_pipeline(a_data, b_data, a_rgb, b_rgb, lead, fuser, want, percentiles=o.percentiles,
                                     tile=int(o.tile or stacks.DEFAULT_TILE), callback=cb, cancel=cancel,
                                     colour=o.colour, b_colormap=o.b_colormap, names=tuple(names),
                                     restore=o.restore)
    fused, st, ranges = res.fused, res.stages or {}, res.ranges
    if callback is not None:
        callback(total, total)
    keys = (["X"] if o.with_stages else []) + (["E", "H"] if o.with_eh else [])
    middle = _middle_planes(a_data, b_data, fused, st, lead, o.percentiles, ranges)
    prov = _provenance(res.provenance, o, names, lead)
    mets = fast_metrics(*middle) if min(shape[-2:]) >= 11 else {}
    secs = time.perf_counter() - t0
    prov["seconds"] = round(secs, 3)
    return FusionResult(fused=fused, rgb=fused.ndim == len(lead) + 3, stages={k: st[k] for k in keys if k in st},
                        provenance=prov, metrics=mets, middle=middle, seconds=secs, n_stages=fuser.n_stages)


def _middle_planes(a_data, b_data, fused, st, lead, percentiles, ranges):
    """The middle plane's ``(a, b, fused)`` luminance in [0, 1] (the live metrics' inputs)."""
    mid = _middle_index(lead)
    prep = preprocess.prepare_pair(_plane(a_data, mid), _plane(b_data, mid), percentiles=percentiles, ranges=ranges)
    if "X" in st:  # the last stage is the fused luminance (before the colours)
        f_l = st["X"][-1][mid] if mid else st["X"][-1]
    else:
        f_mid = fused[mid] if mid else fused
        f_l = preprocess.split_luma(f_mid)[0] if fused.ndim == len(lead) + 3 else f_mid
    return prep.a, prep.b, np.clip(f_l, 0, 1).astype(np.float32)


def _provenance(prov: dict[str, Any], o: FuseOptions, names, lead) -> dict[str, Any]:
    """The pipeline's provenance (model, weights, device, ranges, tile) with what the widget adds, for
    ``layer.metadata``."""
    pars = prov["parameters"]
    prov = dict(prov)
    prov.update(
        {
            "inputs": {"structural": names[0], "salient": names[1]},
            "parameters": {
                "percentiles": list(o.percentiles),
                "range_structural": pars["ranges"][0],
                "range_salient": pars["ranges"][1],
                "align_shift": list(o.align_shift) if o.align_shift is not None else None,
                "planes": int(np.prod(lead)) if lead else 1,
                "leading_shape": list(lead),
                "tile": pars["tile"],
                "overlap": pars["overlap"],
                "colour": o.colour,
                "restore": pars.get("restore"),
            },
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    if o.auto is not None:
        prov["auto"] = dict(o.auto)
    return prov
