"""FMI: Haghighat & Razian's fast feature mutual information (see docs/metrics.md)."""
from __future__ import annotations


import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as _fft

from ._metric_utils import _prepare

#: Feature extractors accepted by :func:`fmi`.
FMI_FEATURES: tuple[str, ...] = ("pixel", "gradient", "dct", "wavelet")

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

    Args:
        x: (H, W) array_like, source X; H, W >= window.
        f: (H, W) array_like, fused F, same shape as ``x``.
        feature: one of "pixel", "gradient", "dct", "wavelet".
        window: int (odd), side of the square windows in pixels.

    Returns:
        float, 1 when X = F.
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

    Args:
        a: (H, W) array_like, source A; H, W >= window.
        feature: one of "pixel", "gradient", "dct", "wavelet".
        window: int (odd), side of the square windows in pixels.

    Returns:
        float, 1 when A = B = F.
    """
    feature = _check_feature(feature)
    _check_window(window)
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=window)
    ma, mb = _fmi_maps(
        [_fmi_feature(a, feature), _fmi_feature(b, feature)], _fmi_feature(f, feature), window
    )
    return 0.5 * (float(ma.mean()) + float(mb.mean()))


