"""Objective image-fusion metrics (the eight of the DeRUN paper's Tables 1-2).

All metrics follow the two-source conventions of the fusion literature: ``a`` is
source A (the structural modality: visible, MRI, phase contrast), ``b`` is source
B (the salient modality: IR, PET, SPECT, CT, GFP) and ``f`` is the fused image F.

**Scale.** Every metric works on **grey images on the 0-255 scale**, as the
published MATLAB/Python toolboxes do (the constants of SSIM, VIF, PSNR and the 256-bin
histogram of EN depend on it).  Each public function takes 2-D arrays of shape
``(H, W)`` (any real dtype) and a keyword ``data_range`` (default ``255.0``): the
inputs are multiplied by ``255 / data_range`` before anything else, so images in
``[0, 1]`` are scored with ``data_range=1.0``.  Inputs are *not* clipped.  The
functions' own docstrings list only their other arguments.

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

from typing import Callable

import numpy as np

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



from ._metric_utils import (  # noqa: F401  (re-exported: metrics_extra and tests use them)
    FLAT_TOL,
    _L,
    _as_gray,
    _box_sum_valid,
    _check_range,
    _filter_same,
    _filter_valid,
    _flat_valid,
    _gauss1d,
    _prepare,
)
from ._metrics_fmi import FMI_FEATURES, fmi, fmi_pair  # noqa: F401,E402
from ._metrics_qp import phase_congruency, qp  # noqa: F401,E402

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

    Args:
        x: (H, W) array_like, H, W >= 11.
        y: (H, W) array_like, same shape as ``x``.

    Returns:
        float in [-1, 1].
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

    Args:
        a: (H, W) array_like, source A on the scale ``[0, data_range]``; H, W >= 11.
        b: (H, W) array_like, source B on the scale ``[0, data_range]``, same shape
            as ``a``.
        f: (H, W) array_like, fused F on the scale ``[0, data_range]``, same shape
            as ``a``.

    Returns:
        float in [-1, 1] (1 when A = B = F).
    """
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=11)
    return 0.5 * (_ssim(a, f) + _ssim(b, f))


# ----------------------------------------------------------------------------
# PSNR
# ----------------------------------------------------------------------------
def psnr(a, b, f, *, data_range: float = 255.0) -> float:
    """Fusion PSNR: 10 log10(255^2 / MSE) with MSE = (MSE(A, F) + MSE(B, F)) / 2.

    Returns float, in dB; ``inf`` when F equals both A and B (MSE = 0).
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

    Args:
        img: (H, W) array_like, H, W >= 2.
        data_range: float, scale of the input (rescaled to 0-255).

    Returns:
        float >= 0.
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

    Args:
        a: (H, W) array_like, source A; H, W >= 2.

    Returns:
        float >= 0.
    """
    _, _, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=2)
    return _ag(f)


def entropy(img, *, data_range: float = 255.0) -> float:
    """Shannon entropy (bits) of the 256-bin grey-level histogram of one image.

    The image (0-255 scale) is rounded to the nearest integer and clipped to
    [0, 255] (what saving it as 8-bit would do); bin k counts the pixels of value k.
    A constant image scores 0.

    Args:
        img: (H, W) array_like.
        data_range: float, scale of the input (rescaled to 0-255).

    Returns:
        float in [0, 8].
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

    Returns float in [0, 8].
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

    Args:
        x: (H, W) array_like, H, W >= window.
        y: (H, W) array_like, same shape as ``x``.
        window: int, side of the square sliding window in pixels.

    Returns:
        float in [-1, 1].
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

    Args:
        a: (H, W) array_like, source A; H, W >= 8.

    Returns:
        float in [-1, 1] (1 when A = B = F).
    """
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=8)
    return 0.5 * (float(_uiqi_map(a, f, 8).mean()) + float(_uiqi_map(b, f, 8).mean()))


# ----------------------------------------------------------------------------
# VIF (pixel domain)
# ----------------------------------------------------------------------------
#: smallest image side the metrics accept: VIF needs one valid window at its fourth scale
MIN_METRIC_SIDE = 41


def check_metric_size(img) -> None:
    """Raise ValueError when ``img`` (``(H, W)``) is smaller than :data:`MIN_METRIC_SIDE` on a side."""
    if min(np.shape(img)[:2]) < MIN_METRIC_SIDE:
        h, w = np.shape(img)[:2]
        raise ValueError(f"image is {h}x{w}; the metrics need at least {MIN_METRIC_SIDE}x{MIN_METRIC_SIDE}")


def vifp(ref, dist, *, sigma_nsq: float = 2.0, data_range: float = 255.0) -> float:
    """Pixel-domain visual information fidelity VIF(ref -> dist) (Sheikh & Bovik 2006).

    Multi-scale pixel VIF of ``vifp_mscale.m``: 4 scales, Gaussian windows of size
    N = 2^(5-s) + 1 (17, 9, 5, 3) with sigma N/5, 'valid' filtering, dyadic
    down-sampling after a low-pass with the scale's window, HVS noise variance
    ``sigma_nsq`` = 2 and the same clamping rules and EPS = 1e-10 as the reference
    (and ``sewar.full_ref.vifp``).  If the reference has no variance at any scale
    (a constant image) both sums are 0 whatever ``dist`` is; the ratio 0/0 is
    then defined as 1 (nothing to preserve, so nothing lost).

    Args:
        ref: (H, W) array_like, the reference image; H, W >= 41.
        dist: (H, W) array_like, the distorted image, same shape as ``ref``.
        sigma_nsq: float, HVS noise variance.

    Returns:
        float >= 0 (1 when dist = ref; can exceed 1 for contrast-enhanced images).
    """
    r, d = _prepare((ref, "ref"), (dist, "dist"), data_range=data_range, min_size=MIN_METRIC_SIDE)
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

    Args:
        a: (H, W) array_like, source A; H, W >= 41.

    Returns:
        float >= 0 (2 when A = B = F).
    """
    a, b, f = _prepare(
        (a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=MIN_METRIC_SIDE
    )
    return _vifp(a, f) + _vifp(b, f)


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

    Args:
        a: (H, W) array_like, source A (structural), grey, on the scale
            [0, data_range]; H, W >= 41 (VIF needs four scales).
        b: (H, W) array_like, source B (salient), grey, same shape and scale as ``a``.
        f: (H, W) array_like, the fused image, grey, same shape and scale as ``a``.
        data_range: float, 255 for 0-255 data (default), 1.0 for images in [0, 1]
            (they are then multiplied by 255), 65535 for 16-bit data, ...
        fmi_feature: one of "pixel", "gradient", "dct", "wavelet"; the feature
            extractor of FMI (see :func:`fmi`).

    Returns:
        dict ``{"SSIM": .., "PSNR": .., "AG": .., "FMI": .., "VIF": .., "EN": ..,
            "UIQI": .., "Qp": ..}`` (Python floats).
    """
    a, b, f = _prepare(
        (a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=MIN_METRIC_SIDE
    )
    out: dict[str, float] = {}
    for name in METRIC_NAMES:
        fn = METRICS[name]
        if name == "FMI":
            out[name] = float(fn(a, b, f, feature=fmi_feature))
        else:
            out[name] = float(fn(a, b, f))
    return out
