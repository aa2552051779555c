"""Objective image-fusion metrics (the eight of the DeRUN paper's Tables 1-2).

All metrics follow the two-source conventions of the fusion literature: ``a`` is
source A (the structural modality: visible, MRI, phase contrast), ``b`` is source
B (the salient modality: IR, PET, SPECT, CT, GFP) and ``f`` is the fused image F.

Scale
-----
Every metric works on **grey images on the 0-255 scale**, as the published
MATLAB/Python toolboxes do (the constants of SSIM, VIF, PSNR and the 256-bin
histogram of EN depend on it).  Each public function takes 2-D arrays of shape
``(H, W)`` (any real dtype) and a keyword ``data_range`` (default ``255.0``): the
inputs are multiplied by ``255 / data_range`` before anything else, so images in
``[0, 1]`` are scored with ``data_range=1.0``.  Inputs are *not* clipped.

The full list of conventions (formulas, windows, borders, what happens on
constant images) is in ``docs/metrics.md``.  In short:

========  ======================================================================
SSIM      Wang et al. 2004, Gaussian 11x11 window sigma 1.5, K1=.01, K2=.03,
          L=255, mean over the valid region; (SSIM(A,F) + SSIM(B,F)) / 2.
PSNR      10 log10(255^2 / MSE), MSE = (MSE(A,F) + MSE(B,F)) / 2; +inf if 0.
AG        mean of sqrt((gx^2 + gy^2) / 2) of F, ``numpy.gradient`` differences.
FMI       Haghighat & Razian 2014 fast-FMI, 3x3 windows, pixel features by
          default; mean of the A-F and B-F values.
VIF       Sheikh & Bovik pixel-domain VIF (4 scales, sigma_n^2 = 2);
          VIF(A,F) + VIF(B,F).
EN        Shannon entropy (bits) of the 256-bin histogram of round(F).
UIQI      Wang & Bovik 2002 Q in 8x8 sliding windows, averaged;
          (Q(A,F) + Q(B,F)) / 2.
Qp        Zhao, Laganiere & Liu 2007, phase congruency (Kovesi phasecong3,
          4 scales, 6 orientations); P_pc * P_M * P_m.
========  ======================================================================

Only numpy and scipy are used; no torch, Qt or napari import.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as _fft
from scipy import ndimage as ndi

__all__ = [
    "METRIC_NAMES",
    "METRICS",
    "FMI_FEATURES",
    "all_metrics",
    "ssim",
    "psnr",
    "ag",
    "fmi",
    "vif",
    "en",
    "uiqi",
    "qp",
    "ssim_index",
    "uiqi_index",
    "vifp",
    "fmi_pair",
    "average_gradient",
    "entropy",
    "phase_congruency",
]

#: Fixed order of the metrics in tables and in :func:`all_metrics`.
METRIC_NAMES: tuple[str, ...] = ("SSIM", "PSNR", "AG", "FMI", "VIF", "EN", "UIQI", "Qp")

#: Feature extractors accepted by :func:`fmi`.
FMI_FEATURES: tuple[str, ...] = ("pixel", "gradient", "dct", "wavelet")

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

    Parameters
    ----------
    x : (H, W) float64
    k : (n,) float64, n odd

    Returns
    -------
    (H - n + 1, W - n + 1) float64
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


# ----------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------
_SSIM_WIN = _gauss1d(11, 1.5)


def ssim_index(x, y, *, data_range: float = 255.0) -> float:
    """Mean SSIM between two grey images (Wang et al. 2004).

    Gaussian 11x11 window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, population
    (biased) local statistics, mean over the 'valid' positions (the window never
    leaves the image).  Equal to ``skimage.metrics.structural_similarity(x, y,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=255)`` on 0-255 data.  Constant windows are handled by the
    stabilising constants (no NaN): two equal constant images score 1.

    Parameters
    ----------
    x, y : (H, W) array_like, H, W >= 11
    data_range : float
        Scale of the inputs (rescaled to 0-255).

    Returns
    -------
    float in [-1, 1]
    """
    x, y = _prepare((x, "x"), (y, "y"), data_range=data_range, min_size=11)
    return _ssim(x, y)


def _ssim(x: np.ndarray, y: np.ndarray) -> float:
    c1 = (0.01 * _L) ** 2
    c2 = (0.03 * _L) ** 2
    k = _SSIM_WIN
    mx = _filter_valid(x, k)
    my = _filter_valid(y, k)
    sxx = _filter_valid(x * x, k) - mx * mx
    syy = _filter_valid(y * y, k) - my * my
    sxy = _filter_valid(x * y, k) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def ssim(a, b, f, *, data_range: float = 255.0) -> float:
    """Fusion SSIM: (SSIM(A, F) + SSIM(B, F)) / 2, see :func:`ssim_index`.

    Parameters
    ----------
    a, b, f : (H, W) array_like
        Source A, source B, fused F on the scale ``[0, data_range]``; H, W >= 11.
    data_range : float

    Returns
    -------
    float in [-1, 1] (1 when A = B = F)
    """
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=11)
    return 0.5 * (_ssim(a, f) + _ssim(b, f))


# ----------------------------------------------------------------------------
# PSNR
# ----------------------------------------------------------------------------
def psnr(a, b, f, *, data_range: float = 255.0) -> float:
    """Fusion PSNR: 10 log10(255^2 / MSE) with MSE = (MSE(A, F) + MSE(B, F)) / 2.

    Parameters
    ----------
    a, b, f : (H, W) array_like
    data_range : float

    Returns
    -------
    float, in dB; ``inf`` when F equals both A and B (MSE = 0).
    """
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range)
    mse = 0.5 * (np.mean((a - f) ** 2) + np.mean((b - f) ** 2))
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(_L**2 / mse))


# ----------------------------------------------------------------------------
# AG and EN (single-image metrics)
# ----------------------------------------------------------------------------
def average_gradient(img, *, data_range: float = 255.0) -> float:
    """Average gradient of one image: mean of sqrt((gx^2 + gy^2) / 2).

    gx, gy are ``numpy.gradient`` differences (central differences
    (x[i+1] - x[i-1]) / 2 inside, one-sided differences on the first/last row and
    column), on the 0-255 scale.  A constant image scores 0.

    Parameters
    ----------
    img : (H, W) array_like, H, W >= 2
    data_range : float

    Returns
    -------
    float >= 0
    """
    (x,) = _prepare((img, "img"), data_range=data_range, min_size=2)
    return _ag(x)


def _ag(x: np.ndarray) -> float:
    gy, gx = np.gradient(x)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


def ag(a, b, f, *, data_range: float = 255.0) -> float:
    """Average gradient (AG) of the fused image F; ``a`` and ``b`` are only checked.

    The (a, b, f) signature is shared by all eight metrics; see
    :func:`average_gradient` for the single-image form.

    Parameters
    ----------
    a, b, f : (H, W) array_like, H, W >= 2
    data_range : float

    Returns
    -------
    float >= 0
    """
    _, _, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=2)
    return _ag(f)


def entropy(img, *, data_range: float = 255.0) -> float:
    """Shannon entropy (bits) of the 256-bin grey-level histogram of one image.

    The image (0-255 scale) is rounded to the nearest integer and clipped to
    [0, 255] (what saving it as 8-bit would do); bin k counts the pixels of value k.
    A constant image scores 0.

    Parameters
    ----------
    img : (H, W) array_like
    data_range : float

    Returns
    -------
    float in [0, 8]
    """
    (x,) = _prepare((img, "img"), data_range=data_range)
    return _en(x)


def _en(x: np.ndarray) -> float:
    q = np.clip(np.rint(x), 0, 255).astype(np.intp).ravel()
    hist = np.bincount(q, minlength=256).astype(np.float64)
    p = hist[hist > 0] / q.size
    return float(max(0.0, -np.sum(p * np.log2(p))))


def en(a, b, f, *, data_range: float = 255.0) -> float:
    """Entropy (EN) of the fused image F in bits; ``a`` and ``b`` are only checked.

    See :func:`entropy`.

    Parameters
    ----------
    a, b, f : (H, W) array_like
    data_range : float

    Returns
    -------
    float in [0, 8]
    """
    _, _, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range)
    return _en(f)


# ----------------------------------------------------------------------------
# UIQI
# ----------------------------------------------------------------------------
def uiqi_index(x, y, *, window: int = 8, data_range: float = 255.0) -> float:
    """Wang-Bovik universal image quality index Q, averaged over sliding windows.

    Q = 4 s_xy m_x m_y / ((s_x^2 + s_y^2)(m_x^2 + m_y^2)) in every ``window`` x
    ``window`` block at every valid position (stride 1), then averaged (Wang &
    Bovik 2002, ``img_qi.m``).  Q does not depend on the variance normalisation.
    Special cases, as in the reference code: both windows constant -> Q = (2 m_x m_y + c) /
    (m_x^2 + m_y^2 + c) with c = FLAT_TOL^2 (1 if both means are 0 or within round-off); exactly one window constant -> Q = 0
    (the structure term vanishes); zero means with non-zero variance -> Q = 1.
    A window is constant when its values span at most ``FLAT_TOL`` = 1e-3 grey levels
    (0–255 scale), so float round-off in a flat background does not flip the special cases.

    Parameters
    ----------
    x, y : (H, W) array_like, H, W >= window
    window : int
    data_range : float

    Returns
    -------
    float in [-1, 1]
    """
    x, y = _prepare((x, "x"), (y, "y"), data_range=data_range, min_size=window)
    return float(_uiqi_map(x, y, window).mean())


def _uiqi_map(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    npix = float(n * n)
    # centre the data before the moment sums to limit cancellation
    cx, cy = x.mean(), y.mean()
    xc, yc = x - cx, y - cy
    sx = _box_sum_valid(xc, n) / npix
    sy = _box_sum_valid(yc, n) / npix
    vx = _box_sum_valid(xc * xc, n) / npix - sx * sx
    vy = _box_sum_valid(yc * yc, n) / npix - sy * sy
    cxy = _box_sum_valid(xc * yc, n) / npix - sx * sy
    mx = sx + cx
    my = sy + cy
    flat_x = _flat_valid(x, n)
    flat_y = _flat_valid(y, n)
    vx = np.where(flat_x, 0.0, np.maximum(vx, 0.0))
    vy = np.where(flat_y, 0.0, np.maximum(vy, 0.0))
    cxy = np.where(flat_x | flat_y, 0.0, cxy)
    den_v = vx + vy
    den_m = mx * mx + my * my
    q = np.ones_like(mx)
    both_flat = flat_x & flat_y
    lum = both_flat & (den_m > 0)
    # luminance term with a FLAT_TOL² stabiliser: 1 for means within round-off of each other
    # (0 vs 1e-6 grey levels), ~2m_x m_y/(m_x²+m_y²) for real differences
    c = FLAT_TOL * FLAT_TOL
    q[lum] = (2.0 * mx[lum] * my[lum] + c) / (den_m[lum] + c)
    ok = (~both_flat) & (den_m > 0) & (den_v > 0)
    q[ok] = 4.0 * cxy[ok] * mx[ok] * my[ok] / (den_v[ok] * den_m[ok])
    return q


def uiqi(a, b, f, *, data_range: float = 255.0) -> float:
    """Fusion UIQI: (Q(A, F) + Q(B, F)) / 2 with 8x8 sliding windows.

    See :func:`uiqi_index`.  (Not sewar's ``uqi``, which mixes window sums and
    means and scores two independent noise images about 0.75 instead of 0.)

    Parameters
    ----------
    a, b, f : (H, W) array_like, H, W >= 8
    data_range : float

    Returns
    -------
    float in [-1, 1] (1 when A = B = F)
    """
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=8)
    return 0.5 * (float(_uiqi_map(a, f, 8).mean()) + float(_uiqi_map(b, f, 8).mean()))


# ----------------------------------------------------------------------------
# VIF (pixel domain)
# ----------------------------------------------------------------------------
_VIF_MIN_SIZE = 41  # smallest side that leaves >= 1 valid window at the 4th scale


def vifp(ref, dist, *, sigma_nsq: float = 2.0, data_range: float = 255.0) -> float:
    """Pixel-domain visual information fidelity VIF(ref -> dist) (Sheikh & Bovik 2006).

    Multi-scale pixel VIF of ``vifp_mscale.m``: 4 scales, Gaussian windows of size
    N = 2^(5-s) + 1 (17, 9, 5, 3) with sigma N/5, 'valid' filtering, dyadic
    down-sampling after a low-pass with the scale's window, HVS noise variance
    ``sigma_nsq`` = 2 and the same clamping rules and EPS = 1e-10 as the reference
    (and ``sewar.full_ref.vifp``).  If the reference has no variance at any scale
    (a constant image) both sums are 0 whatever ``dist`` is; the ratio 0/0 is
    then defined as 1 (nothing to preserve, so nothing lost).

    Parameters
    ----------
    ref, dist : (H, W) array_like, H, W >= 41
    sigma_nsq : float
    data_range : float

    Returns
    -------
    float >= 0 (1 when dist = ref; can exceed 1 for contrast-enhanced images)
    """
    r, d = _prepare((ref, "ref"), (dist, "dist"), data_range=data_range, min_size=_VIF_MIN_SIZE)
    return _vifp(r, d, sigma_nsq)


def _vifp(ref: np.ndarray, dist: np.ndarray, sigma_nsq: float = 2.0) -> float:
    eps = 1e-10
    num = 0.0
    den = 0.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        k = _gauss1d(n, n / 5.0)
        if scale > 1:
            ref = _filter_valid(ref, k)[::2, ::2]
            dist = _filter_valid(dist, k)[::2, ::2]
        mu1 = _filter_valid(ref, k)
        mu2 = _filter_valid(dist, k)
        s1 = _filter_valid(ref * ref, k) - mu1 * mu1
        s2 = _filter_valid(dist * dist, k) - mu2 * mu2
        s12 = _filter_valid(ref * dist, k) - mu1 * mu2
        s1 = np.maximum(s1, 0.0)
        s2 = np.maximum(s2, 0.0)

        g = s12 / (s1 + eps)
        sv = s2 - g * s12

        low1 = s1 < eps
        g[low1] = 0.0
        sv[low1] = s2[low1]
        s1[low1] = 0.0

        low2 = s2 < eps
        g[low2] = 0.0
        sv[low2] = 0.0

        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0.0
        sv[sv <= eps] = eps

        num += float(np.sum(np.log10(1.0 + g * g * s1 / (sv + sigma_nsq))))
        den += float(np.sum(np.log10(1.0 + s1 / sigma_nsq)))
    if den == 0.0:
        return 1.0
    return num / den


def vif(a, b, f, *, data_range: float = 255.0) -> float:
    """Fusion VIF: VIF(A, F) + VIF(B, F), pixel domain, see :func:`vifp`.

    Parameters
    ----------
    a, b, f : (H, W) array_like, H, W >= 41
    data_range : float

    Returns
    -------
    float >= 0 (2 when A = B = F)
    """
    a, b, f = _prepare(
        (a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=_VIF_MIN_SIZE
    )
    return _vifp(a, f) + _vifp(b, f)


# ----------------------------------------------------------------------------
# FMI (fast feature mutual information)
# ----------------------------------------------------------------------------
def _rerange(x: np.ndarray) -> np.ndarray:
    mn, mx = x.min(), x.max()
    if mx == mn:
        return np.ones_like(x)
    return (x - mn) / (mx - mn)


def _haar_mosaic(x: np.ndarray) -> np.ndarray:
    """One-level orthonormal 2-D Haar DWT arranged as [[cA, cH], [cV, cD]].

    Odd sides are extended by one reflected row/column.  Output shape
    (2 ceil(H/2), 2 ceil(W/2)).
    """
    h, w = x.shape
    if h % 2:
        x = np.concatenate([x, x[-1:, :]], axis=0)
    if w % 2:
        x = np.concatenate([x, x[:, -1:]], axis=1)
    p = x[0::2, 0::2]
    q = x[0::2, 1::2]
    r = x[1::2, 0::2]
    s = x[1::2, 1::2]
    ca = (p + q + r + s) / 2.0
    ch = (p + q - r - s) / 2.0  # horizontal detail (row difference)
    cv = (p - q + r - s) / 2.0  # vertical detail (column difference)
    cd = (p - q - r + s) / 2.0
    return np.block([[ca, ch], [cv, cd]])


def _fmi_feature(x: np.ndarray, feature: str) -> np.ndarray:
    if feature == "pixel":
        return x
    if feature == "gradient":
        # MATLAB ``gradient(im)`` with one output: the horizontal derivative
        return np.gradient(x, axis=1)
    if feature == "dct":
        return _fft.dctn(x, type=2, norm="ortho")
    if feature == "wavelet":
        return _rerange(_haar_mosaic(x))
    raise ValueError(f"unknown FMI feature {feature!r}; choose one of {FMI_FEATURES}")


def _fmi_windows(feat: np.ndarray, w: int) -> np.ndarray:
    """(H, W) -> (P, w*w) windows, column-major inside each window (as MATLAB ``(:)``)."""
    v = sliding_window_view(feat, (w, w))  # (H-w+1, W-w+1, w, w)
    return np.ascontiguousarray(v.swapaxes(-1, -2)).reshape(-1, w * w)


class _WinStats:
    """Per-window marginal quantities of fast-FMI for a block of windows (P, l)."""

    __slots__ = ("raw", "pdf", "cdf", "ent", "sd", "centred", "norm2", "flat")

    def __init__(self, win: np.ndarray):
        l = win.shape[1]
        mn = win.min(axis=1, keepdims=True)
        mx = win.max(axis=1, keepdims=True)
        rng = mx - mn
        flat = rng[:, 0] == 0
        ws = (win - mn) / np.where(rng == 0, 1.0, rng)
        ws[flat] = 1.0
        pdf = ws / ws.sum(axis=1, keepdims=True)
        self.raw = win
        self.flat = flat
        self.pdf = pdf
        self.cdf = np.cumsum(pdf, axis=1)
        safe = np.where(pdf > 0, pdf, 1.0)
        self.ent = -np.sum(pdf * np.log2(safe), axis=1)
        idx = np.arange(1, l + 1, dtype=np.float64)
        e1 = pdf @ idx
        e2 = pdf @ (idx * idx)
        var = np.maximum(e2 - e1 * e1, 0.0)
        var[np.count_nonzero(ws, axis=1) == 1] = 0.0  # a single-mass pdf
        self.sd = np.sqrt(var)
        self.centred = pdf - pdf.mean(axis=1, keepdims=True)
        self.norm2 = np.sum(self.centred * self.centred, axis=1)


def _fmi_block(sx: _WinStats, sf: _WinStats) -> np.ndarray:
    """Fast-FMI of each window pair (P,) following Haghighat's reference code."""
    equal = np.all(sx.raw == sf.raw, axis=1)

    # Pearson correlation between the two marginal pdfs
    num = np.sum(sx.centred * sf.centred, axis=1)
    den = np.sqrt(sx.norm2 * sf.norm2)
    c = np.zeros_like(num)
    ok = (num != 0) & (den > 0) & ~sx.flat & ~sf.flat
    c[ok] = num[ok] / den[ok]
    pos = c >= 0

    fc = sf.cdf[:, :, None]  # i index: fused
    xc = sx.cdf[:, None, :]  # j index: source
    bound = np.minimum(fc, xc)  # Frechet upper bound H+(i, j) = min(F_i, X_j)
    neg = ~pos
    if neg.any():  # Frechet lower bound H-(i, j) = max(F_i + X_j - 1, 0)
        bound[neg] = np.maximum(fc[neg] + xc[neg] - 1.0, 0.0)
    # covariance of the bound: sum_ij (H(i, j) - F_i X_j)
    cov_b = bound.sum(axis=(1, 2)) - sf.cdf.sum(axis=1) * sx.cdf.sum(axis=1)
    sdsd = sx.sd * sf.sd
    # mixing weight: phi = c / corr_up (c >= 0) or theta = c / corr_lo (c < 0)
    wgt = np.zeros_like(c)
    good = (sdsd > 0) & (c != 0) & (cov_b != 0)
    wgt[good] = c[good] * sdsd[good] / cov_b[good]

    # joint pdf: rectangle differences of the bound with H(0, .) = H(., 0) = 0
    jpdf = bound
    jpdf[:, 1:, :] -= bound[:, :-1, :].copy()
    jpdf[:, :, 1:] -= jpdf[:, :, :-1].copy()
    w3 = wgt[:, None, None]
    jpdf *= w3
    jpdf += (1.0 - w3) * (sf.pdf[:, :, None] * sx.pdf[:, None, :])
    aj = np.abs(jpdf)
    aj[aj == 0] = 1.0
    np.log2(aj, out=aj)
    hj = -np.einsum("pij,pij->p", jpdf, aj)

    hsum = sx.ent + sf.ent
    mi = hsum - hj
    out = np.zeros_like(mi)
    # |I| below 1e-12 bits is round-off of an exact 0 (e.g. two flat windows)
    nz = (np.abs(mi) > 1e-12) & (hsum > 0)
    out[nz] = 2.0 * mi[nz] / hsum[nz]
    out[equal] = 1.0
    return out


def _fmi_maps(feats: list[np.ndarray], ff: np.ndarray, w: int, chunk: int = 2048) -> list[np.ndarray]:
    """Per-window fast-FMI of each source feature map against ``ff``."""
    wf = _fmi_windows(ff, w)
    wins = [_fmi_windows(x, w) for x in feats]
    outs = [np.empty(wf.shape[0]) for _ in feats]
    for s in range(0, wf.shape[0], chunk):
        sf = _WinStats(wf[s : s + chunk])
        for wx, o in zip(wins, outs):
            o[s : s + chunk] = _fmi_block(_WinStats(wx[s : s + chunk]), sf)
    return outs


def _check_feature(feature: str) -> str:
    if feature == "none":  # the reference code's name for raw pixels
        feature = "pixel"
    if feature not in FMI_FEATURES:
        raise ValueError(f"unknown FMI feature {feature!r}; choose one of {FMI_FEATURES}")
    return feature


def _check_window(window: int) -> None:
    if int(window) != window or window < 3 or window % 2 == 0:
        raise ValueError(f"FMI window must be an odd integer >= 3, got {window!r}")


def fmi_pair(x, f, *, feature: str = "pixel", window: int = 3, data_range: float = 255.0) -> float:
    """Fast feature mutual information FMI(X, F) of one source and the fused image.

    Haghighat & Razian 2014 (fast-FMI): in every ``window`` x ``window`` window
    (valid positions) the min-max-normalised features are treated as marginal
    pdfs (column-major order), the joint pdf is a mix of the product pdf and the
    Frechet upper (correlation >= 0) or lower (< 0) bound with the weight
    c / corr_bound, and the window score is the normalised MI
    2 I / (H_X + H_F) (1 for identical windows, 0 when |I| < 1e-12).  The result is the
    mean over the windows.  Features: ``"pixel"`` (raw grey levels, default),
    ``"gradient"`` (horizontal central-difference derivative, MATLAB
    ``gradient``), ``"dct"`` (orthonormal 2-D DCT-II of the whole image) and
    ``"wavelet"`` (one-level 2-D Haar DWT mosaic [[cA, cH], [cV, cD]] rescaled to
    [0, 1]; the reference uses the discrete Meyer wavelet, not available in
    numpy/scipy).

    Parameters
    ----------
    x, f : (H, W) array_like, H, W >= window
    feature : {"pixel", "gradient", "dct", "wavelet"}
    window : int (odd)
    data_range : float

    Returns
    -------
    float, 1 when X = F
    """
    feature = _check_feature(feature)
    _check_window(window)
    x, f = _prepare((x, "x"), (f, "f"), data_range=data_range, min_size=window)
    (m,) = _fmi_maps([_fmi_feature(x, feature)], _fmi_feature(f, feature), window)
    return float(m.mean())


def fmi(a, b, f, *, feature: str = "pixel", window: int = 3, data_range: float = 255.0) -> float:
    """Fusion FMI: (FMI(A, F) + FMI(B, F)) / 2, fast-FMI with 3x3 windows.

    Equal to the mean of the reference code's per-window map
    (fmi_af + fmi_bf) / 2.  See :func:`fmi_pair` for the method and features.

    Parameters
    ----------
    a, b, f : (H, W) array_like, H, W >= window
    feature : {"pixel", "gradient", "dct", "wavelet"}
    window : int (odd)
    data_range : float

    Returns
    -------
    float, 1 when A = B = F
    """
    feature = _check_feature(feature)
    _check_window(window)
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=window)
    ma, mb = _fmi_maps(
        [_fmi_feature(a, feature), _fmi_feature(b, feature)], _fmi_feature(f, feature), window
    )
    return 0.5 * (float(ma.mean()) + float(mb.mean()))


# ----------------------------------------------------------------------------
# Phase congruency (Kovesi phasecong3, as modified by Z. Liu for Qp) and Qp
# ----------------------------------------------------------------------------
_PC_EPS = 1e-4


@lru_cache(maxsize=8)
def _pc_filters(rows: int, cols: int, nscale: int, norient: int, min_wavelength: float,
                mult: float, sigma_onf: float, dtheta_on_sigma: float):
    """Log-Gabor filter bank (frequency domain, DC at [0, 0]) and noise constants.

    Returns
    -------
    filters : (norient, nscale, rows, cols) float64
    em_n : (norient,) float64, sum of the squared smallest-scale filter
    noise_an2, noise_aiaj : (norient,) float64
        sum over pixels of sum_s f_s^2 and of sum_{s<t} f_s f_t, where f_s is the
        real part of the inverse FFT of filter s times sqrt(rows * cols)
        (computed by Parseval, without FFTs).
    """
    if cols % 2:
        xr = np.arange(-(cols - 1) / 2, (cols - 1) / 2 + 1) / (cols - 1)
    else:
        xr = np.arange(-cols / 2, cols / 2) / cols
    if rows % 2:
        yr = np.arange(-(rows - 1) / 2, (rows - 1) / 2 + 1) / (rows - 1)
    else:
        yr = np.arange(-rows / 2, rows / 2) / rows
    x, y = np.meshgrid(xr, yr)
    radius = np.sqrt(x * x + y * y)
    radius[rows // 2, cols // 2] = 1.0
    theta = np.arctan2(-y, x)
    radius = np.fft.ifftshift(radius)
    theta = np.fft.ifftshift(theta)
    sintheta, costheta = np.sin(theta), np.cos(theta)

    # Butterworth low-pass (cut-off 0.45, order 15) on Kovesi's lowpassfilter grid
    lx = (np.arange(1, cols + 1) - (cols // 2 + 1)) / cols
    ly = (np.arange(1, rows + 1) - (rows // 2 + 1)) / rows
    lr = np.sqrt(lx[None, :] ** 2 + ly[:, None] ** 2)
    lp = np.fft.ifftshift(1.0 / (1.0 + (lr / 0.45) ** 30))

    log_gabor = np.empty((nscale, rows, cols))
    for s in range(nscale):
        fo = 1.0 / (min_wavelength * mult**s)
        lg = np.exp(-(np.log(radius / fo) ** 2) / (2 * np.log(sigma_onf) ** 2)) * lp
        lg[0, 0] = 0.0
        log_gabor[s] = lg

    theta_sigma = np.pi / norient / dtheta_on_sigma
    filters = np.empty((norient, nscale, rows, cols))
    em_n = np.empty(norient)
    an2 = np.empty(norient)
    aiaj = np.empty(norient)
    for o in range(norient):
        angl = o * np.pi / norient
        ds = sintheta * np.cos(angl) - costheta * np.sin(angl)
        dc = costheta * np.cos(angl) + sintheta * np.sin(angl)
        dtheta = np.abs(np.arctan2(ds, dc))
        spread = np.exp(-(dtheta**2) / (2 * theta_sigma**2))
        sym = []
        for s in range(nscale):
            flt = log_gabor[s] * spread
            filters[o, s] = flt
            # even (Hermitian) part: real(ifft2(flt)) = ifft2(sym_part)
            flipped = np.roll(flt[::-1, ::-1], 1, axis=(0, 1))
            sym.append(0.5 * (flt + flipped))
        em_n[o] = np.sum(filters[o, 0] ** 2)
        an2[o] = sum(np.sum(h * h) for h in sym)
        aiaj[o] = sum(
            np.sum(sym[i] * sym[j]) for i in range(nscale - 1) for j in range(i + 1, nscale)
        )
    filters.setflags(write=False)
    return filters, em_n, an2, aiaj


def phase_congruency(img, *, nscale: int = 4, norient: int = 6, min_wavelength: float = 3.0,
                     mult: float = 2.1, sigma_onf: float = 0.55, dtheta_on_sigma: float = 1.2,
                     k: float = 2.0, cutoff: float = 0.5, g: float = 10.0,
                     data_range: float = 255.0):
    """Phase congruency and its covariance moments (Kovesi ``phasecong3``).

    The PC_2 measure with log-Gabor filters built in the frequency domain
    (periodic borders), noise compensation from the median of the smallest-scale
    energy (threshold divided by 1.7) and the frequency-spread sigmoid weight, as in
    the ``myphasecong3`` variant used by the Qp metric.  An epsilon of 1e-4 is
    added to every denominator (the reference leaves the per-orientation one
    without it, which gives NaN on constant images); a constant image gives
    PC = 0 and M = -m = 5e-5 (half that epsilon, from the moment formula).

    Parameters
    ----------
    img : (H, W) array_like
    nscale, norient : int
        Number of wavelet scales (4) and orientations (6).
    min_wavelength, mult, sigma_onf, dtheta_on_sigma, k, cutoff, g : float
        Kovesi's defaults.
    data_range : float

    Returns
    -------
    pc : (H, W) float64 in [0, 1]
        Overall phase congruency sum_o W_o E_o / (sum_o sum_s A_so + eps).
    M : (H, W) float64
        Maximum moment of the PC covariance (edge strength).
    m : (H, W) float64
        Minimum moment (corner strength).
    """
    (x,) = _prepare((img, "img"), data_range=data_range, min_size=2)
    return _phasecong(x, nscale, norient, min_wavelength, mult, sigma_onf, dtheta_on_sigma, k, cutoff, g)


def _phasecong(im, nscale=4, norient=6, min_wavelength=3.0, mult=2.1, sigma_onf=0.55,
               dtheta_on_sigma=1.2, k=2.0, cutoff=0.5, g=10.0):
    eps = _PC_EPS
    rows, cols = im.shape
    filters, em_n, an2, aiaj = _pc_filters(
        rows, cols, nscale, norient, float(min_wavelength), float(mult), float(sigma_onf),
        float(dtheta_on_sigma),
    )
    imfft = _fft.fft2(im)
    total_energy = np.zeros((rows, cols))
    total_sum_an = np.zeros((rows, cols))
    covx2 = np.zeros((rows, cols))
    covy2 = np.zeros((rows, cols))
    covxy = np.zeros((rows, cols))
    for o in range(norient):
        angl = o * np.pi / norient
        sum_e = np.zeros((rows, cols))
        sum_o = np.zeros((rows, cols))
        sum_an = np.zeros((rows, cols))
        eo = []
        max_an = None
        for s in range(nscale):
            r = _fft.ifft2(imfft * filters[o, s])
            eo.append(r)
            an = np.abs(r)
            sum_an += an
            sum_e += r.real
            sum_o += r.imag
            max_an = an if max_an is None else np.maximum(max_an, an)
        xenergy = np.sqrt(sum_e * sum_e + sum_o * sum_o) + eps
        mean_e = sum_e / xenergy
        mean_o = sum_o / xenergy
        energy = np.zeros((rows, cols))
        for r in eo:
            e, od = r.real, r.imag
            energy += e * mean_e + od * mean_o - np.abs(e * mean_o - od * mean_e)

        # noise compensation
        a0 = eo[0]
        median_e2n = np.median(a0.real * a0.real + a0.imag * a0.imag)
        mean_e2n = -median_e2n / np.log(0.5)
        noise_power = mean_e2n / em_n[o]
        est_noise_energy2 = 2 * noise_power * an2[o] + 4 * noise_power * aiaj[o]
        tau = np.sqrt(max(est_noise_energy2, 0.0) / 2)
        est_noise_energy = tau * np.sqrt(np.pi / 2)
        est_noise_sigma = np.sqrt((2 - np.pi / 2) * tau**2)
        t = (est_noise_energy + k * est_noise_sigma) / 1.7
        energy = np.maximum(energy - t, 0.0)

        width = sum_an / (max_an + eps) / nscale
        weight = 1.0 / (1.0 + np.exp((cutoff - width) * g))
        energy_o = weight * energy
        total_sum_an += sum_an
        total_energy += energy_o

        pc_o = energy_o / (sum_an + eps)
        covx = pc_o * np.cos(angl)
        covy = pc_o * np.sin(angl)
        covx2 += covx * covx
        covy2 += covy * covy
        covxy += covx * covy

    pc = total_energy / (total_sum_an + eps)
    covx2 /= norient / 2
    covy2 /= norient / 2
    covxy /= norient  # = 2 covxy / (norient / 2)
    denom = np.sqrt(covxy * covxy + (covx2 - covy2) ** 2) + eps
    big_m = (covy2 + covx2 + denom) / 2
    small_m = (covy2 + covx2 - denom) / 2
    return pc, big_m, small_m


_QP_WIN = _gauss1d(11, 1.5)


def _qp_component(f1, f2, fmax, ff, mask1, mask2, mask3) -> float:
    c = 1e-4
    k = _QP_WIN
    i1 = f1 * mask1
    i2 = f2 * mask2
    im = fmax * mask3
    mu1, mu2, muf, mum = (_filter_same(v, k) for v in (i1, i2, ff, im))
    s1 = _filter_same(i1 * i1, k) - mu1 * mu1
    s2 = _filter_same(i2 * i2, k) - mu2 * mu2
    sm = _filter_same(im * im, k) - mum * mum
    sf = _filter_same(ff * ff, k) - muf * muf
    s1f = _filter_same(i1 * ff, k) - mu1 * muf
    s2f = _filter_same(i2 * ff, k) - mu2 * muf
    smf = _filter_same(im * ff, k) - mum * muf
    r1 = np.where(mask1, (s1f + c) / (np.sqrt(np.abs(s1 * sf)) + c), 0.0)
    r2 = np.where(mask2, (s2f + c) / (np.sqrt(np.abs(s2 * sf)) + c), 0.0)
    r3 = np.where(mask3, (smf + c) / (np.sqrt(np.abs(sm * sf)) + c), 0.0)
    n3 = int(mask3.sum())
    if n3 == 0:
        return 1.0
    return float(np.maximum(np.maximum(r1, r2), r3).sum() / n3)


def qp(a, b, f, *, threshold: float = 0.1, data_range: float = 255.0, return_components: bool = False):
    """Phase-congruency fusion metric Qp (Zhao, Laganiere & Liu 2007).

    Phase congruency PC and its maximum / minimum moments M, m are computed for A,
    B and F (:func:`phase_congruency`: 4 scales, 6 orientations).  For each feature
    k in (PC, M, m), with source masks mask_A = PC_A > 0.1, mask_B = PC_B > 0.1,
    mask_max = max(PC_A, PC_B) > 0.1 and k_max taken from the source of larger PC:
    local correlation maps C_XF = (s_XF + C) / (sqrt(|s_X^2 s_F^2|) + C), C = 1e-4,
    with Gaussian 11x11 (sigma 1.5) windows, zero padding, source maps multiplied
    by their masks (the fused map is not masked), each map set to 0 outside its
    mask; P_k = sum over pixels of max(C_AF, C_BF, C_maxF) / |mask_max|.
    Qp = P_pc * P_M * P_m.  This is Z. Liu's reference implementation
    (``metricZhao`` / ``pc_assessFusion``).

    Limits: if no source pixel has PC > ``threshold`` (e.g. constant sources) each
    P_k is defined as 1 (no feature to lose).  Because the fused map is not masked,
    Qp(A, A, A) is slightly below 1; because of the constant C, a fused image
    without structure (s_F = 0) scores C / C = 1 in each window, so Qp must be
    read together with the other metrics.

    Parameters
    ----------
    a, b, f : (H, W) array_like, H, W >= 2
    threshold : float
        Phase-congruency threshold of the feature masks (0.1).
    data_range : float
    return_components : bool
        Also return (P_pc, P_M, P_m).

    Returns
    -------
    float, or (float, (float, float, float)) with ``return_components``.
    """
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=2)
    pc1, m1_big, m1 = _phasecong(a)
    pc2, m2_big, m2 = _phasecong(b)
    pcf, mf_big, mf = _phasecong(f)
    sel = pc1 > pc2
    pc_max = np.where(sel, pc1, pc2)
    big_max = np.where(sel, m1_big, m2_big)
    small_max = np.where(sel, m1, m2)
    mask1 = pc1 > threshold
    mask2 = pc2 > threshold
    mask3 = pc_max > threshold
    p_pc = _qp_component(pc1, pc2, pc_max, pcf, mask1, mask2, mask3)
    p_big = _qp_component(m1_big, m2_big, big_max, mf_big, mask1, mask2, mask3)
    p_small = _qp_component(m1, m2, small_max, mf, mask1, mask2, mask3)
    val = p_pc * p_big * p_small
    if return_components:
        return val, (p_pc, p_big, p_small)
    return val


# ----------------------------------------------------------------------------
# all eight
# ----------------------------------------------------------------------------
#: name -> function(a, b, f, *, data_range) for the eight metrics, in table order.
METRICS: dict[str, Callable[..., float]] = {
    "SSIM": ssim,
    "PSNR": psnr,
    "AG": ag,
    "FMI": fmi,
    "VIF": vif,
    "EN": en,
    "UIQI": uiqi,
    "Qp": qp,
}


def all_metrics(a, b, f, *, data_range: float = 255.0, fmi_feature: str = "pixel") -> dict[str, float]:
    """All eight fusion metrics of one (A, B, F) triple, in :data:`METRIC_NAMES` order.

    Parameters
    ----------
    a, b, f : (H, W) array_like
        Source A (structural), source B (salient) and the fused image, grey, on the
        scale [0, data_range]; H, W >= 41 (VIF needs four scales).
    data_range : float
        255 for 0-255 data (default), 1.0 for images in [0, 1] (they are then
        multiplied by 255), 65535 for 16-bit data, ...
    fmi_feature : {"pixel", "gradient", "dct", "wavelet"}

    Returns
    -------
    dict
        ``{"SSIM": .., "PSNR": .., "AG": .., "FMI": .., "VIF": .., "EN": ..,
        "UIQI": .., "Qp": ..}`` (Python floats).
    """
    a, b, f = _prepare(
        (a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=_VIF_MIN_SIZE
    )
    out: dict[str, float] = {}
    for name in METRIC_NAMES:
        fn = METRICS[name]
        if name == "FMI":
            out[name] = float(fn(a, b, f, feature=fmi_feature))
        else:
            out[name] = float(fn(a, b, f))
    return out
