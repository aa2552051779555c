"""Shared input checks and filters of the fusion metrics (0-255 working scale)."""
from __future__ import annotations


import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage as ndi

_L = 255.0  # the working scale of every metric

# ----------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------
def _as_gray(x, name: str, data_range: float) -> np.ndarray:
    """Validate one image and return it as a float64 array on the 0-255 scale."""
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
    ):
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name}: complex images are not supported")
    if arr.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D grey image of shape (H, W), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{name}: empty image")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: image contains NaN or Inf values")
    if data_range != _L:
        arr = arr * (_L / data_range)
    return arr


def _check_range(data_range: float) -> float:
    try:
        dr = float(data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a positive number, got {data_range!r}") from None
    if not np.isfinite(dr) or dr <= 0:
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return dr


def _prepare(*images_and_names, data_range: float = 255.0, min_size: int = 1):
    """Validate images (same 2-D shape, finite) and rescale them to 0-255."""
    dr = _check_range(data_range)
    out = []
    shape = None
    for img, name in images_and_names:
        arr = _as_gray(img, name, dr)
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            names = ", ".join(n for _, n in images_and_names)
            raise ValueError(
                f"images {names} must have the same shape; got {shape} and {arr.shape} ({name})"
            )
        out.append(arr)
    if min(shape) < min_size:
        raise ValueError(
            f"images must be at least {min_size}x{min_size} pixels for this metric, got {shape}"
        )
    return out


# ----------------------------------------------------------------------------
# small filtering helpers
# ----------------------------------------------------------------------------
def _gauss1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of odd length ``size`` (MATLAB ``fspecial`` profile)."""
    r = size // 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable correlation with the 2-D kernel ``outer(k, k)``, 'valid' region only.

    Args:
        x: (H, W) float64 array.
        k: (n,) float64 array, n odd.

    Returns:
        (H - n + 1, W - n + 1) float64 array.
    """
    r = len(k) // 2
    y = ndi.correlate1d(x, k, axis=0, mode="constant")
    y = ndi.correlate1d(y, k, axis=1, mode="constant")
    if r:
        y = y[r:-r, r:-r]
    return y


def _filter_same(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable correlation with ``outer(k, k)``, zero padding, same size (MATLAB ``filter2 'same'``)."""
    y = ndi.correlate1d(x, k, axis=0, mode="constant", cval=0.0)
    return ndi.correlate1d(y, k, axis=1, mode="constant", cval=0.0)


def _box_sum_valid(x: np.ndarray, n: int) -> np.ndarray:
    """Sum over every n x n window (valid positions): (H, W) -> (H-n+1, W-n+1)."""
    y = sliding_window_view(x, n, axis=0).sum(axis=-1)
    return sliding_window_view(y, n, axis=1).sum(axis=-1)


# A window whose values span at most this many grey levels (0-255 scale) counts as constant.
# Exact equality made UIQI jump (0.70 -> 0.55 on a PET/MRI pair) when a fused image's black
# background carried 1e-6 of float round-off instead of exact zeros.
FLAT_TOL = 1e-3


def _flat_valid(x: np.ndarray, n: int, tol: float = FLAT_TOL) -> np.ndarray:
    """Boolean map of the n x n windows (valid positions) in which ``x`` is constant (range <= tol)."""
    r0 = n // 2
    r1 = n - 1 - r0
    mx = ndi.maximum_filter(x, size=n, mode="nearest")
    mn = ndi.minimum_filter(x, size=n, mode="nearest")
    h, w = x.shape
    return (mx - mn <= tol)[r0 : h - r1, r0 : w - r1]


