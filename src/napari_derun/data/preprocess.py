"""Input checks, intensity normalisation and colour handling (numpy only, no torch).

* uint8 images are scaled by 1/255; uint16 and other integer images, and float
  images outside [0, 1], are stretched between robust percentiles (0.1 % and
  99.9 % by default) and clipped; float images already inside [0, 1] are kept.
* Colour (RGB/RGBA) inputs are fused on luminance: the Y channel of YCbCr (BT.601,
  full range) is fused and the Cb/Cr of the colour input are put back. An RGB
  image whose three channels are equal is treated as grey.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "validate_pair",
    "to_float01",
    "normalization_range",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
    "split_luma",
    "PreparedPair",
    "prepare_pair",
    "recolor",
]

DEFAULT_PERCENTILES = (0.1, 99.9)
_SUPPORTED = "bool, uint8, uint16, other integer types, float16/32/64"


def _is_colour(x: np.ndarray) -> bool:
    return x.ndim == 3 and x.shape[-1] in (3, 4)


def validate_pair(a, b, allow_colour: bool = True, names: tuple[str, str] = ("a", "b")
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Check a 2-D pair (grey ``(H, W)`` or colour ``(H, W, 3|4)``) and return numpy arrays; ``names``: what
    the messages call the two images.

    Raises:
        ValueError: with a message naming the problem and what to do.
    """
    out = []
    for name, x in zip(names, (a, b)):
        if x is None:
            raise ValueError(f"image {name} is missing: pass two registered images")
        x = np.asarray(x)
        if x.size == 0:
            raise ValueError(f"image {name} is empty (shape {x.shape}): pass a non-empty image")
        if x.dtype.kind not in "biuf":
            raise ValueError(f"image {name} has unsupported dtype {x.dtype}; supported: {_SUPPORTED}")
        if x.ndim == 3 and _is_colour(x) and not allow_colour:
            raise ValueError(f"image {name} is colour {x.shape}; convert it to grey first")
        if not (x.ndim == 2 or _is_colour(x)):
            raise ValueError(
                f"image {name} has shape {x.shape}: expected a 2-D plane (Y, X) or a colour plane (Y, X, 3); "
                "for stacks use napari_derun.fuse with an nD array and axes="
            )
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).sum())
            raise ValueError(f"image {name} contains {bad} NaN/Inf values; replace them (e.g. np.nan_to_num) first")
        if min(x.shape[:2]) < 3:
            raise ValueError(f"image {name} is too small ({x.shape[:2]}); DeRUN needs at least 3 x 3 pixels")
        out.append(x)
    a, b = out
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(
            f"the images differ in size: {names[0]} is {a.shape[:2]} and {names[1]} is {b.shape[:2]}; "
            "fusion needs two registered images of the same size (resample or crop one of them first)"
        )
    return a, b


def normalization_range(x: np.ndarray, percentiles=DEFAULT_PERCENTILES) -> tuple[float, float]:
    """Intensity range ``(lo, hi)`` that maps ``x`` to [0, 1] (see module docstring)."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return 0.0, 255.0
    if x.dtype == bool:
        return 0.0, 1.0
    if x.dtype.kind == "f":
        mn, mx = float(np.min(x)), float(np.max(x))
        if mn >= 0.0 and mx <= 1.0:
            return 0.0, 1.0
    lo, hi = np.percentile(x, percentiles)
    return float(lo), float(hi)


def check_percentiles(percentiles) -> tuple[float, float]:
    """``(low, high)`` percentiles with 0 <= low < high <= 100, or ValueError."""
    try:
        lo, hi = (float(v) for v in percentiles)
    except (TypeError, ValueError):
        raise ValueError(f"percentiles must be two numbers (low, high), got {percentiles!r}") from None
    if not (0.0 <= lo < hi <= 100.0):
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    return lo, hi


def check_range(rng, name: str = "range") -> tuple[float, float]:
    """A finite intensity range ``(lo, hi)`` with lo <= hi (equal: a constant image), or ValueError."""
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two numbers (lo, hi), got {rng!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be finite with lo <= hi, got {rng!r}")
    return lo, hi


def to_float01(x: np.ndarray, rng: tuple[float, float] | None = None, percentiles=DEFAULT_PERCENTILES) -> np.ndarray:
    """Scale ``x`` to float32 in [0, 1] with :func:`normalization_range` (or a given range).

    The scaling is done in float64 and only the result is float32, so float64 data beyond the
    float32 range (up to ~1.8e308) is scaled correctly instead of overflowing to inf/NaN."""
    lo, hi = rng if rng is not None else normalization_range(x, percentiles)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        # constant image (outside [0, 1]): no contrast to stretch, map it to 0
        return np.zeros(np.shape(x), dtype=np.float32)
    arr = np.asarray(x)
    work = np.float64 if arr.dtype in (np.float64, np.longdouble) or max(abs(lo), abs(hi)) > 1e30 else np.float32
    xf = arr.astype(work, copy=False)
    return np.clip((xf - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def dtype_to_unit(arr: np.ndarray, what: str = "image") -> np.ndarray | None:
    """float64 copy of ``arr`` scaled by its dtype: bool as 0/1, integers divided by their dtype's maximum,
    floats as they are; ``None`` for any other dtype (the caller says what is wrong). No range check."""
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float64)
    return None


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """BT.601 full-range YCbCr of an ``(…, 3)`` float image in [0, 1] (Cb, Cr centred at 0.5)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 + (b - y) * 0.564
    cr = 0.5 + (r - y) * 0.713
    return np.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`, clipped to [0, 1]."""
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 0.5, ycc[..., 2] - 0.5
    r = y + cr / 0.713
    b = y + cb / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return np.clip(np.stack([r, g, b], axis=-1), 0.0, 1.0).astype(np.float32)


def split_luma(x01: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Luminance and chroma of a [0, 1] image; chroma is ``None`` for grey (or R = G = B) input."""
    if x01.ndim == 2:
        return x01.astype(np.float32), None
    rgb = x01[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].astype(np.float32), None
    ycc = rgb_to_ycbcr(rgb)
    return ycc[..., 0].astype(np.float32), ycc[..., 1:].astype(np.float32)


@dataclass
class PreparedPair:
    """A validated pair as float32 luminance planes in [0, 1] plus the chroma to put back."""

    a: np.ndarray
    b: np.ndarray
    chroma: np.ndarray | None
    chroma_from: str | None
    range_a: tuple[float, float]
    range_b: tuple[float, float]


def prepare_pair(a, b, percentiles=DEFAULT_PERCENTILES, color_from: str = "auto", ranges=None) -> PreparedPair:
    """Validate and normalise a 2-D pair for fusion.

    Args:
        a: structural image, ``(H, W)`` or ``(H, W, 3|4)``.
        b: salient image, same size.
        color_from: which colour input's chroma the result takes when both are
            colour: ``"auto"`` (``b`` if colour, else ``a``), ``"a"`` or ``"b"``.
        ranges: optional fixed ``((lo_a, hi_a), (lo_b, hi_b))`` intensity ranges
            (e.g. computed once for a whole stack).
    """
    a, b = validate_pair(a, b)
    if ranges is not None:
        if len(ranges) != 2:
            raise ValueError(f"ranges must be ((lo_a, hi_a), (lo_b, hi_b)), got {ranges!r}")
        ra, rb = check_range(ranges[0], "ranges[0] (a)"), check_range(ranges[1], "ranges[1] (b)")
    else:
        check_percentiles(percentiles)
        ra, rb = normalization_range(a, percentiles), normalization_range(b, percentiles)
    ya, ca = split_luma(to_float01(a, ra))
    yb, cb = split_luma(to_float01(b, rb))
    if color_from not in ("auto", "a", "b"):
        raise ValueError(f"color_from must be 'auto', 'a' or 'b'; got {color_from!r}")
    if color_from == "a":
        order = (("a", ca), ("b", cb))
    else:
        order = (("b", cb), ("a", ca))
    chroma, src = None, None
    for name, c in order:
        if c is not None:
            chroma, src = c, name
            break
    return PreparedPair(ya, yb, chroma, src, ra, rb)


def recolor(fused_luma: np.ndarray, chroma: np.ndarray | None) -> np.ndarray:
    """Put chroma back on a fused luminance plane (grey output when ``chroma`` is None)."""
    y = np.clip(fused_luma, 0.0, 1.0).astype(np.float32)
    if chroma is None:
        return y
    return ycbcr_to_rgb(np.concatenate([y[..., None], chroma], axis=-1))
