"""Classical restoration before fusion: the *restore-then-fuse* baseline a careful user would build.

:func:`restore` undoes one degradation of :mod:`napari_derun.data.degrade` with a well-kept,
training-free method, given the degradation's *name* (the user sees that the image is hazy or noisy)
but not its level, which each method estimates from the image:

* noise of every kind (Gaussian, shot, Poisson counts, Rician, low-dose CT): scikit-image's non-local
  means (``denoise_nl_means``) with the noise level estimated by Immerkær's method;
* haze: the dark channel prior (He, Sun & Tang, CVPR 2009) with a guided-filter refinement;
* low light: gamma correction towards a mid-grey mean, then non-local means;
* blur and defocus: unsharp masking; rain: a thin-line grey opening across the streaks;
* infrared stripes: column offsets removed, then non-local means; low contrast: a 1–99 % stretch;
* fluorescence background: the smooth background of a grey opening subtracted;
* ``"auto"``, told nothing: destriping where the image shows column fixed-pattern noise
  (:func:`stripe_score` above :data:`STRIPE_THRESHOLD`), else non-local means where it looks noisy
  (:func:`noise_score`, Immerkær's estimate away from edges, above :data:`NOISE_THRESHOLD`), else the image
  unchanged: what to choose when it is not known which planes of a batch are degraded. Haze, blur, low
  light and low contrast are not guessed: their statistics overlap those of clean images of other
  modalities (a phase-contrast image has the dark channel of a hazy photograph), so they are restored only
  when named.

numpy, scipy and scikit-image only. Every function takes and returns a float32 ``(H, W)`` image in [0, 1].
:func:`restore_planes` applies one to every plane (and colour channel) of an nD image: the ``restore=``
option of :func:`napari_derun.fuse`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage as ndi

__all__ = ["RESTORERS", "NOISE_THRESHOLD", "STRIPE_THRESHOLD", "restore", "restore_planes", "denoise",
           "denoise_if_noisy", "auto_restore", "dehaze", "estimate_noise", "noise_score", "stripe_score",
           "haze_score", "restore_then_fuse"]

#: :func:`noise_score` (on [0, 1]) above which an image counts as noisy (``"auto"``, and the Fuse widget's
#: suggestion). Set on training and validation images only (``tools/auto_detect_study.py`` and whole images):
#: clean images of every task stay at or below 0.032 (the GFP image of validation pair 05-B03; the next 0.016),
#: while Gaussian noise at level 2 gives a median of 0.039 on every modality it applies to, GFP shot noise at
#: level 2 0.039, Rician noise at level 2 0.037 (Immerkær's estimate over all pixels needed 0.04 to clear the
#: clean images, which reach 0.035 on it, and missed most of level 2)
NOISE_THRESHOLD = 0.035

#: :func:`stripe_score` above which an image counts as striped (``"auto"``). On 12 training and the validation
#: pairs of every task (192² crops, ``tools/auto_detect_study.py``) clean images of every modality (at most
#: 0.022, a visible facade) and every other degradation at levels 1–4 stay at or below 0.025; infrared stripe noise
#: scores 0.020–0.037 at level 2 (14 of 20 above), 0.039–0.056 at level 3 and 0.065–0.085 at level 4
STRIPE_THRESHOLD = 0.03


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _immerkaer(x: np.ndarray) -> np.ndarray:
    """``|I ⋆ N|`` at the interior pixels: the response to Immerkær's difference of two Laplacians."""
    k = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    return np.abs(ndi.correlate(x, k, mode="reflect")[1:-1, 1:-1])


def estimate_noise(img: np.ndarray) -> float:
    """Immerkær's fast noise estimate (1996): the mean absolute response to the difference of two
    Laplacians, which cancels smooth image content; ``sigma = sqrt(pi / 2) / (6 (H−2)(W−2)) Σ|I ⋆ N|``."""
    x = np.asarray(img, dtype=np.float64)
    if min(x.shape) < 3:
        return 0.0
    return float(np.sqrt(np.pi / 2.0) * _immerkaer(x).mean() / 6.0)


def stripe_score(img: np.ndarray) -> float:
    """Column fixed-pattern noise: the spread over columns of each column's median horizontal high-pass
    (image minus its 9-pixel running mean along the row), less the same spread over rows of the vertical
    high-pass, so that content that is striped both ways (texture) cancels. About the std of the column
    offsets for a striped image; near zero or negative for a clean one."""
    x = np.asarray(img, dtype=np.float64)
    if min(x.shape) < 12:
        return 0.0
    cols = np.median(x - ndi.uniform_filter1d(x, size=9, axis=1, mode="reflect"), axis=0)
    rows = np.median(x - ndi.uniform_filter1d(x, size=9, axis=0, mode="reflect"), axis=1)
    return float(cols.std() - rows.std())


def haze_score(img: np.ndarray, patch: int = 15) -> float:
    """The dark channel prior's statistic (He et al. 2009) for a grey image: the median of the 15 × 15 local
    minimum. Haze-free outdoor scenes have dark pixels in most patches; haze lifts them towards the airlight."""
    x = np.asarray(img, dtype=np.float64)
    return float(np.median(ndi.minimum_filter(x, size=patch, mode="reflect")))


def noise_score(img: np.ndarray, edge_fraction: float = 0.1) -> float:
    """Immerkær's estimate (:func:`estimate_noise`) over the pixels away from edges: the ``edge_fraction``
    with the strongest Sobel gradient are left out (the adaptive edge masking of Tai & Yang 2008), so that
    the edges and texture of a clean image count for less and real noise for as much. What ``"auto"``
    compares with :data:`NOISE_THRESHOLD`; :func:`denoise` still sets its strength from
    :func:`estimate_noise`."""
    x = np.asarray(img, dtype=np.float64)
    if min(x.shape) < 3:
        return 0.0
    r = _immerkaer(x)
    g = np.hypot(ndi.sobel(x, axis=1, mode="reflect"), ndi.sobel(x, axis=0, mode="reflect"))[1:-1, 1:-1]
    keep = g <= np.quantile(g, 1.0 - edge_fraction)
    return float(np.sqrt(np.pi / 2.0) * r[keep].mean() / 6.0)


def denoise(img: np.ndarray) -> np.ndarray:
    """Non-local means with the noise level estimated from the image (:func:`estimate_noise`)."""
    from skimage.restoration import denoise_nl_means

    x = np.asarray(img, dtype=np.float64)
    sigma = estimate_noise(x)
    if sigma < 1e-4:
        return _clip(x)
    return _clip(denoise_nl_means(x, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True))


def denoise_if_noisy(img: np.ndarray) -> np.ndarray:
    """``"auto"``: :func:`denoise` when :func:`noise_score` is above :data:`NOISE_THRESHOLD`, else the
    image unchanged (float32, clipped to [0, 1])."""
    x = np.asarray(img, dtype=np.float32)
    return denoise(x) if noise_score(x) > NOISE_THRESHOLD else _clip(x)


def auto_restore(img: np.ndarray) -> np.ndarray:
    """``"auto"``: :func:`destripe` when :func:`stripe_score` is above :data:`STRIPE_THRESHOLD`, else
    :func:`denoise_if_noisy` (float32, clipped to [0, 1])."""
    x = np.asarray(img, dtype=np.float32)
    return destripe(x) if stripe_score(x) > STRIPE_THRESHOLD else denoise_if_noisy(x)


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return ndi.uniform_filter(x, size=2 * r + 1, mode="reflect")


def _guided_filter(guide: np.ndarray, src: np.ndarray, r: int = 20, eps: float = 1e-3) -> np.ndarray:
    """He et al.'s guided filter (grey guide)."""
    mg, ms = _box(guide, r), _box(src, r)
    cov = _box(guide * src, r) - mg * ms
    var = _box(guide * guide, r) - mg * mg
    a = cov / (var + eps)
    b = ms - a * mg
    return _box(a, r) * guide + _box(b, r)


def dehaze(img: np.ndarray, patch: int = 15, omega: float = 0.95, t0: float = 0.1) -> np.ndarray:
    """Dark channel prior dehazing of a grey image: airlight from the brightest 0.1 % of the dark
    channel, transmission ``1 − ω · dark(I / A)`` refined by a guided filter, ``J = (I − A) / max(t, t0) + A``."""
    x = np.asarray(img, dtype=np.float64)
    dark = ndi.minimum_filter(x, size=patch, mode="reflect")
    n = max(1, int(dark.size * 0.001))
    A = float(np.mean(x.ravel()[np.argsort(dark.ravel())[-n:]]))
    A = max(A, 1e-3)
    t = 1.0 - omega * ndi.minimum_filter(x / A, size=patch, mode="reflect")
    t = np.clip(_guided_filter(x, t, r=max(4, min(x.shape) // 16)), t0, 1.0)
    return _clip((x - A) / t + A)


def brighten(img: np.ndarray, target: float = 0.45) -> np.ndarray:
    """Gamma correction that brings the mean to ``target`` (no change for an already bright image)."""
    x = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
    m = float(x.mean())
    if m <= 1e-4 or m >= target:
        return _clip(x)
    return _clip(x ** (np.log(target) / np.log(m)))


def sharpen(img: np.ndarray) -> np.ndarray:
    """Unsharp masking (radius 2, amount 1.5)."""
    from skimage.filters import unsharp_mask

    return _clip(unsharp_mask(np.asarray(img, dtype=np.float64), radius=2.0, amount=1.5))


def derain(img: np.ndarray) -> np.ndarray:
    """Grey opening with a 1 × 5 horizontal line: removes thin, near-vertical bright streaks."""
    return _clip(ndi.grey_opening(np.asarray(img, dtype=np.float64), size=(1, 5), mode="reflect"))


def destripe(img: np.ndarray) -> np.ndarray:
    """Column offsets (the median of each column's high-pass) removed, then :func:`denoise`."""
    x = np.asarray(img, dtype=np.float64)
    high = x - ndi.uniform_filter1d(x, size=9, axis=1, mode="reflect")
    return denoise(_clip(x - np.median(high, axis=0, keepdims=True)))


def stretch(img: np.ndarray) -> np.ndarray:
    """Linear stretch of the 1st–99th percentiles to [0, 1]."""
    x = np.asarray(img, dtype=np.float64)
    lo, hi = np.percentile(x, (1.0, 99.0))
    return _clip((x - lo) / (hi - lo)) if hi > lo else _clip(x)


def remove_background(img: np.ndarray) -> np.ndarray:
    """Subtract the smooth background (Gaussian of a 21 × 21 grey opening) above the image's darkest level."""
    x = np.asarray(img, dtype=np.float64)
    bg = ndi.gaussian_filter(ndi.grey_opening(x, size=21, mode="reflect"), 10.0, mode="reflect")
    return _clip(x - (bg - bg.min()))


#: degradation name (:data:`napari_derun.data.degrade.DEGRADATIONS`) -> restoration
RESTORERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "haze": dehaze,
    "rain": derain,
    "low_light": lambda x: denoise(brighten(x)),
    "gaussian_noise": denoise,
    "blur": sharpen,
    "shot_noise": denoise,
    "stripe_noise": destripe,
    "low_contrast": stretch,
    "background": remove_background,
    "defocus": sharpen,
    "poisson_counts": denoise,
    "rician": denoise,
    "ct_low_dose": denoise,
    "noise": denoise,  # any noise: the name a user would give
    "auto": auto_restore,  # stripes or noise, only where the image shows them
}


#: the restorations the Fuse widget offers ("none": the input as it is)
OFFERED: tuple[str, ...] = ("none", "auto", "noise", "haze", "low_light", "blur", "stripe_noise", "low_contrast",
                            "background", "rain")


def restore(img: np.ndarray, degradation: str) -> np.ndarray:
    """Undo ``degradation`` (a key of :data:`RESTORERS`) on a grey ``(H, W)`` image in [0, 1]."""
    try:
        fn = RESTORERS[degradation]
    except KeyError:
        raise ValueError(f"no restoration for {degradation!r}; choose one of {sorted(RESTORERS)}") from None
    x = np.asarray(img)
    if x.ndim != 2:
        raise ValueError(f"restore takes a grey (H, W) image, got shape {x.shape}")
    return fn(x)


def restore_planes(x: np.ndarray, degradation: str, plane_axes: tuple[int, int]) -> np.ndarray:
    """:func:`restore` of every ``(Y, X)`` plane of a float image in [0, 1] (``plane_axes`` = the Y and X
    axes; every other axis, colour included, is walked plane by plane); float32, same shape."""
    if degradation not in RESTORERS:
        raise ValueError(f"no restoration for {degradation!r}; choose one of {sorted(RESTORERS)}")
    x = np.asarray(x, dtype=np.float32)
    y_ax, x_ax = plane_axes
    rest = [i for i in range(x.ndim) if i not in (y_ax, x_ax)]
    moved = np.moveaxis(x, (y_ax, x_ax), (-2, -1))  # rest..., Y, X (a view)
    out = np.empty_like(moved)
    for idx in np.ndindex(*moved.shape[:-2]):
        out[idx] = RESTORERS[degradation](moved[idx])
    return np.ascontiguousarray(np.moveaxis(out, (-2, -1), (y_ax, x_ax)))


def restore_then_fuse(a: np.ndarray, b: np.ndarray, fuse: Callable[[np.ndarray, np.ndarray], np.ndarray],
                      degraded: dict[str, str]) -> np.ndarray:
    """Restore the degraded inputs, then fuse them.

    Args:
        a, b: grey ``(H, W)`` images in [0, 1].
        fuse: ``fuse(a, b) -> fused``, e.g. a clean-trained model.
        degraded: ``{"a": degradation, "b": degradation}`` for the inputs that are degraded.
    """
    if "a" in degraded:
        a = restore(a, degraded["a"])
    if "b" in degraded:
        b = restore(b, degraded["b"])
    return fuse(a, b)
