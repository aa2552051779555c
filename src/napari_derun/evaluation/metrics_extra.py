"""More fusion metrics: SD, SF, MI, Qabf, SCD, and the salient contrast retention SR.

Same conventions as :mod:`napari_derun.evaluation.metrics`: ``a`` = source A (structural),
``b`` = source B (salient), ``f`` = fused; 2-D grey images on the 0-255 scale
(``data_range`` rescales), no clipping.

======  =========================================================================
SD      standard deviation of F (population, ``ddof=0``).
SF      spatial frequency sqrt(RF² + CF²), RF² = mean of squared horizontal
        first differences, CF² = the same vertically (Eskicioglu & Fisher 1995).
MI      MI(A, F) + MI(B, F) in bits, 256-bin joint histograms of round(·) (Qu et al. 2002).
Qabf    Xydeas & Petrović 2000 edge preservation: Sobel strength and orientation,
        sigmoids Γg=0.9994, κg=−15, σg=0.5 and Γα=0.9879, κα=−22, σα=0.8,
        weights w = g (L = 1), as in the VIFB / MEF toolboxes.
SCD     Aslantas & Bendes 2015: corr(F − B, A) + corr(F − A, B) (Pearson).
SR      salient contrast retention: (mean F over B's brightest 5 % − mean F over
        B's darker half) / (the same for B). 1 keeps all of B's contrast; ≤ 0 means
        the salient structures are no brighter than the background in F.
======  =========================================================================
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .metrics import METRICS, _prepare

__all__ = ["RANK_METRICS", "REFERENCE_METRICS", "sd", "sf", "mi", "qabf", "scd", "sr", "mutual_information", "spatial_frequency",
           "rank_metrics", "mean_ranks"]


def _sd(x: np.ndarray) -> float:
    return float(np.std(x))


def sd(a, b, f, *, data_range: float = 255.0) -> float:
    """Standard deviation of the fused image (contrast)."""
    (f,) = _prepare((f, "f"), data_range=data_range)
    return _sd(f)


def spatial_frequency(img, *, data_range: float = 255.0) -> float:
    """Spatial frequency of one image."""
    (x,) = _prepare((img, "img"), data_range=data_range)
    return _sf(x)


def _sf(x: np.ndarray) -> float:
    rf2 = np.mean(np.diff(x, axis=1) ** 2) if x.shape[1] > 1 else 0.0
    cf2 = np.mean(np.diff(x, axis=0) ** 2) if x.shape[0] > 1 else 0.0
    return float(np.sqrt(rf2 + cf2))


def sf(a, b, f, *, data_range: float = 255.0) -> float:
    """Spatial frequency of the fused image."""
    (f,) = _prepare((f, "f"), data_range=data_range)
    return _sf(f)


def _hist_index(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.int64)


def _mi(x: np.ndarray, y: np.ndarray) -> float:
    joint = np.bincount((_hist_index(x) * 256 + _hist_index(y)).ravel(), minlength=256 * 256)
    p = joint.reshape(256, 256).astype(np.float64) / x.size
    px, py = p.sum(1), p.sum(0)
    nz = p > 0
    return float(np.sum(p[nz] * np.log2(p[nz] / (px[:, None] * py[None, :])[nz])))


def mutual_information(x, y, *, data_range: float = 255.0) -> float:
    """MI (bits) of two images from their 256-bin joint histogram."""
    x, y = _prepare((x, "x"), (y, "y"), data_range=data_range)
    return _mi(x, y)


def mi(a, b, f, *, data_range: float = 255.0) -> float:
    """MI(A, F) + MI(B, F)."""
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range)
    return _mi(a, f) + _mi(b, f)


_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def _sobel_strength_angle(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # MATLAB conv2(x, h, 'same') with zero borders: true convolution (kernel flipped)
    gx = ndi.convolve(x, _SOBEL_X, mode="constant")
    gy = ndi.convolve(x, _SOBEL_Y, mode="constant")
    g = np.sqrt(gx**2 + gy**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ang = np.where(gx == 0, np.pi / 2, np.arctan(gy / np.where(gx == 0, 1.0, gx)))
    return g, ang


def _q_edge(gs: np.ndarray, as_: np.ndarray, gf: np.ndarray, af: np.ndarray) -> np.ndarray:
    hi = np.maximum(gs, gf)
    lo = np.minimum(gs, gf)
    with np.errstate(divide="ignore", invalid="ignore"):
        G = np.where((gs == 0) | (gf == 0), 0.0, lo / np.where(hi == 0, 1.0, hi))
    A = np.abs(np.abs(as_ - af) - np.pi / 2) * 2 / np.pi
    qg = 0.9994 / (1 + np.exp(-15.0 * (G - 0.5)))
    qa = 0.9879 / (1 + np.exp(-22.0 * (A - 0.8)))
    return qg * qa


def qabf(a, b, f, *, data_range: float = 255.0) -> float:
    """Xydeas–Petrović Q^{AB/F} in [0, 1]; 0 when neither source has an edge."""
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range)
    ga, aa = _sobel_strength_angle(a)
    gb, ab = _sobel_strength_angle(b)
    gf, af = _sobel_strength_angle(f)
    den = float(np.sum(ga + gb))
    if den == 0.0:
        return 0.0
    num = float(np.sum(_q_edge(ga, aa, gf, af) * ga + _q_edge(gb, ab, gf, af) * gb))
    return num / den


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / den) if den > 0 else 0.0


def scd(a, b, f, *, data_range: float = 255.0) -> float:
    """Sum of the correlations of differences, in [−2, 2]; 0 terms for constant images."""
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range)
    return _corr(f - b, a) + _corr(f - a, b)


def sr(a, b, f, *, data_range: float = 255.0, top: float = 0.05) -> float:
    """Salient contrast retention of B in F (see the module docstring); NaN when B is flat."""
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range)
    hi_t = np.quantile(b, 1.0 - top)
    lo_t = np.quantile(b, 0.5)
    hi = b >= hi_t
    lo = b <= lo_t
    cb = b[hi].mean() - b[lo].mean()
    if not np.isfinite(cb) or cb <= 1e-6 * 255.0:
        return float("nan")
    return float((f[hi].mean() - f[lo].mean()) / cb)


#: name -> function(a, b, f, *, data_range) of every metric: the eight of
#: :data:`napari_derun.evaluation.metrics.METRICS` and the six of this module (the one metric table)
METRIC_FUNCTIONS: dict = {**METRICS, "SD": sd, "SF": sf, "MI": mi, "Qabf": qabf, "SCD": scd, "SR": sr}


#: Metrics of the mean rank used to compare methods and to select checkpoints (all: higher is better).
RANK_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "AG", "SSIM", "PSNR", "UIQI", "VIF", "Qabf")
#: The rank metrics that compare the fused image with the sources. On degraded inputs scored against the
#: clean sources these are the ones that measure fidelity: EN, SD, SF and AG look at the fused image alone
#: and *rise* with noise (a method that passes the noise through scores better on them).
REFERENCE_METRICS: tuple[str, ...] = ("SSIM", "PSNR", "UIQI", "VIF", "Qabf")


def rank_metrics(a, b, f, *, data_range: float = 255.0) -> dict[str, float]:
    """The :data:`RANK_METRICS` plus ``SCD`` and ``SR`` of one (A, B, F) triple (images ≥ 41 × 41)."""
    from . import metrics as m

    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=m.MIN_METRIC_SIDE)
    return {"EN": m.en(a, b, f), "SD": _sd(f), "SF": _sf(f), "AG": m.ag(a, b, f), "SSIM": m.ssim(a, b, f),
            "PSNR": m.psnr(a, b, f), "UIQI": m.uiqi(a, b, f), "VIF": m.vif(a, b, f), "Qabf": qabf(a, b, f),
            "SCD": scd(a, b, f), "SR": sr(a, b, f)}


def mean_ranks(scores: dict[str, list[dict[str, float]]], metrics=RANK_METRICS) -> dict[str, float]:
    """Mean rank of each method (1 = best) over images and ``metrics``.

    ``scores[method][i]`` is the metric dict of image ``i`` (every method scored on the same
    images). Ties share the mean of their ranks; NaN scores rank last.
    """
    from scipy.stats import rankdata

    names = list(scores)
    n = len(scores[names[0]])
    if any(len(scores[k]) != n for k in names):
        raise ValueError("every method must be scored on the same images")
    total = {k: 0.0 for k in names}
    count = 0
    for i in range(n):
        for key in metrics:
            vals = np.array([scores[k][i][key] for k in names], dtype=np.float64)
            vals = np.where(np.isfinite(vals), vals, -np.inf)
            r = rankdata(-vals, method="average")
            for k, rk in zip(names, r):
                total[k] += float(rk)
            count += 1
    return {k: total[k] / count for k in names} if count else {k: float("nan") for k in names}
