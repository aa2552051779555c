"""Simple, training-free fusion baselines for side-by-side comparisons.

All functions take two registered grey images ``a`` (structural source) and ``b``
(salient source) as 2-D float arrays of the same shape ``(H, W)`` with values in
``[0, 1]`` and return the fused image as float32 ``(H, W)`` clipped to ``[0, 1]``.

* :func:`average` - pixel mean.
* :func:`max_abs` - per pixel, the source with the larger local activity.
* :func:`laplacian_pyramid` - Burt-Adelson Laplacian pyramid, max-abs selection
  of the detail coefficients, average of the base (low-pass) level.

numpy / scipy only (no torch, Qt or napari).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["BASELINES", "average", "max_abs", "laplacian_pyramid", "activity", "pixel_max", "overlay", "copy_a", "copy_b"]


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(a)
    xb = np.asarray(b)
    for x, name in ((xa, "a"), (xb, "b")):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
            raise ValueError(f"{name}: expected a real numeric array, got dtype {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D grey image (H, W), got shape {x.shape}")
        if x.size == 0:
            raise ValueError(f"{name}: empty image")
    if xa.shape != xb.shape:
        raise ValueError(f"a and b must have the same shape, got {xa.shape} and {xb.shape}")
    xa = xa.astype(np.float64)
    xb = xb.astype(np.float64)
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(xb))):
        raise ValueError("a and b must not contain NaN or Inf values")
    return xa, xb


def _out(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def average(a, b) -> np.ndarray:
    """Average fusion F = (A + B) / 2.

    Args:
        a: (H, W) array_like, values in [0, 1].
        b: (H, W) array_like, values in [0, 1], same shape as ``a``.

    Returns:
        (H, W) float32 in [0, 1].
    """
    xa, xb = _check_pair(a, b)
    return _out(0.5 * (xa + xb))


def activity(x, sigma: float = 2.0) -> np.ndarray:
    """Local activity map: Gaussian-weighted mean of |x - local mean|.

    activity = G_sigma * |x - G_sigma * x|, Gaussian filters with reflected borders.

    Args:
        x: (H, W) array_like.
        sigma: float > 0, Gaussian scale in pixels.

    Returns:
        (H, W) float64 >= 0.
    """
    x = np.asarray(x, dtype=np.float64)
    detail = np.abs(x - ndi.gaussian_filter(x, sigma, mode="reflect"))
    return ndi.gaussian_filter(detail, sigma, mode="reflect")


def max_abs(a, b, sigma: float = 2.0) -> np.ndarray:
    """Choose-max fusion: each pixel comes from the source with the larger activity.

    The activity of a source is its local mean absolute deviation from the local
    mean (:func:`activity`, Gaussian scale ``sigma`` pixels), so the choice follows
    texture / edges / small bright targets rather than single noisy pixels.  Where
    both activities are equal (e.g. both sources flat) the two pixels are averaged.

    Args:
        a: (H, W) array_like, values in [0, 1].
        b: (H, W) array_like, values in [0, 1], same shape as ``a``.
        sigma: float > 0, scale of the local mean and of the activity averaging, in
            pixels.

    Returns:
        (H, W) float32 in [0, 1].
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    xa, xb = _check_pair(a, b)
    act_a = activity(xa, sigma)
    act_b = activity(xb, sigma)
    fused = np.where(act_a > act_b, xa, xb)
    tie = act_a == act_b
    fused[tie] = 0.5 * (xa[tie] + xb[tie])
    return _out(fused)


# 5-tap Burt-Adelson generating kernel (a = 0.375)
_KERNEL = np.array([0.0625, 0.25, 0.375, 0.25, 0.0625])


def _reduce(x: np.ndarray) -> np.ndarray:
    y = ndi.correlate1d(x, _KERNEL, axis=0, mode="reflect")
    y = ndi.correlate1d(y, _KERNEL, axis=1, mode="reflect")
    return y[::2, ::2]


def _expand(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    up = np.zeros((2 * x.shape[0], 2 * x.shape[1]))
    up[::2, ::2] = x
    up = ndi.correlate1d(up, 2 * _KERNEL, axis=0, mode="reflect")
    up = ndi.correlate1d(up, 2 * _KERNEL, axis=1, mode="reflect")
    return up[: shape[0], : shape[1]]


def _laplacian(x: np.ndarray, levels: int) -> list[np.ndarray]:
    pyr = []
    cur = x
    for _ in range(levels):
        low = _reduce(cur)
        pyr.append(cur - _expand(low, cur.shape))
        cur = low
    pyr.append(cur)
    return pyr


def laplacian_pyramid(a, b, levels: int = 4) -> np.ndarray:
    """Laplacian-pyramid fusion (Burt & Adelson).

    Both sources are decomposed into ``levels`` detail (band-pass) levels and one
    base (low-pass) level with the 5-tap binomial kernel [1, 4, 6, 4, 1] / 16,
    reflected borders, down-sampling by 2.  Detail levels are fused by max-abs
    (per coefficient, the one of larger magnitude; ties averaged), the base level
    by averaging; the pyramid is then collapsed.  ``levels`` is reduced so that the
    base level keeps at least 4 pixels per side; ``levels=0`` is the average.
    Decomposition + reconstruction is exact, so fusing an image with itself
    returns it unchanged.

    Args:
        a: (H, W) array_like, values in [0, 1].
        b: (H, W) array_like, values in [0, 1], same shape as ``a``.
        levels: int >= 0, number of detail levels (reduced as described above).

    Returns:
        (H, W) float32 in [0, 1].
    """
    if int(levels) != levels or levels < 0:
        raise ValueError(f"levels must be a non-negative integer, got {levels!r}")
    xa, xb = _check_pair(a, b)
    max_levels = 0
    side = min(xa.shape)
    while (side + 1) // 2 >= 4:
        side = (side + 1) // 2
        max_levels += 1
    n = min(int(levels), max_levels)
    pa = _laplacian(xa, n)
    pb = _laplacian(xb, n)
    fused = []
    for la, lb in zip(pa[:-1], pb[:-1]):
        d = np.where(np.abs(la) > np.abs(lb), la, lb)
        tie = np.abs(la) == np.abs(lb)
        d[tie] = 0.5 * (la[tie] + lb[tie])
        fused.append(d)
    cur = 0.5 * (pa[-1] + pb[-1])
    for d in reversed(fused):
        cur = d + _expand(cur, d.shape)
    return _out(cur)


#: name -> fusion function (a, b) -> F, for comparison tables.
BASELINES = {
    "average": average,
    "max_abs": max_abs,
    "laplacian_pyramid": laplacian_pyramid,
}


def pixel_max(a, b) -> np.ndarray:
    """Pixelwise maximum ``max(A, B)``."""
    xa, xb = _check_pair(a, b)
    return _out(np.maximum(xa, xb))


def overlay(a, b) -> np.ndarray:
    """What napari's additive blending shows: ``A + (B − median(B))``, clipped to [0, 1]."""
    xa, xb = _check_pair(a, b)
    return _out(xa + (xb - np.median(xb)))


def copy_a(a, b) -> np.ndarray:
    """Reference: the structural image itself (several metrics reward it)."""
    xa, _ = _check_pair(a, b)
    return _out(xa)


def copy_b(a, b) -> np.ndarray:
    """Reference: the salient image itself."""
    _, xb = _check_pair(a, b)
    return _out(xb)
