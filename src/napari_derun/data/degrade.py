"""Simulated degradations of the source images, per imaging modality (:data:`MODALITIES`): haze, rain,
low light, noise and blur of visible light; stripe noise and low contrast of infrared; shot noise,
background and defocus of fluorescence; Poisson counts of PET / SPECT; Rician noise of MRI; low-dose CT.

Every degradation has the signature ``fn(img, level, seed=None)``:

* ``img`` - float image in ``[0, 1]``, grey ``(H, W)`` or colour ``(H, W, 3)``
  (integer images are accepted and divided by their dtype maximum);
* ``level`` - integer severity 0..5, 0 = identity (the image is returned as a
  float32 copy, clipped to ``[0, 1]``);
* ``seed`` - ``None`` (fresh randomness), an int or a ``numpy.random.Generator``;
  the same int seed gives the same result.

The result is float32 with the input's shape, clipped to ``[0, 1]``.  For colour
images the random fields (depth map, rain layer, noise pattern of low light) are
shared by the three channels where that is physical (haze, rain), independent per
channel for sensor noise.  The per-level parameters are module constants
(``HAZE_BETA``, ...) listed in ``docs/metrics.md``.

numpy / scipy only (no torch, Qt or napari).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from .preprocess import dtype_to_unit

__all__ = [
    "DEGRADATIONS",
    "LEVELS",
    "apply",
    "haze",
    "rain",
    "low_light",
    "gaussian_noise",
    "blur",
    "shot_noise",
    "stripe_noise",
    "low_contrast",
    "background",
    "defocus",
    "poisson_counts",
    "rician",
    "ct_low_dose",
    "composite",
    "MODALITIES",
    "TASK_MODALITIES",
]

#: Valid severity levels.
LEVELS = range(0, 6)

# per-level parameters, index = level (0 is never used: identity)
HAZE_BETA = (0.0, 0.5, 1.0, 1.5, 2.0, 2.6)  # extinction coefficient on a [0, 1] depth map
HAZE_AIRLIGHT = 0.9  # atmospheric light A (grey)
RAIN_DENSITY = (0.0, 0.002, 0.004, 0.007, 0.011, 0.016)  # fraction of pixels that seed a drop
RAIN_LENGTH = (0, 9, 13, 17, 21, 25)  # streak length in pixels
RAIN_STRENGTH = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)  # opacity of the streak layer
RAIN_ANGLE = 75.0  # streak direction in degrees from the horizontal
LOW_LIGHT_GAIN = (1.0, 0.6, 0.45, 0.3, 0.2, 0.12)  # exposure factor
LOW_LIGHT_GAMMA = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)
LOW_LIGHT_PHOTONS = (np.inf, 400.0, 200.0, 100.0, 50.0, 25.0)  # photons at full scale
LOW_LIGHT_READ = (0.0, 0.002, 0.004, 0.006, 0.008, 0.012)  # Gaussian read-noise std
NOISE_SIGMA = tuple(s / 255.0 for s in (0, 5, 10, 15, 25, 40))
BLUR_SIGMA = (0.0, 0.8, 1.5, 2.5, 3.5, 5.0)


def _check(img, level) -> np.ndarray:
    arr = np.asarray(img)
    valid = (
        isinstance(level, (int, np.integer))
        and not isinstance(level, (bool, np.bool_))
        and 0 <= level <= 5
    )
    if not valid:
        raise ValueError(f"level must be an integer in 0..5, got {level!r}")
    x = dtype_to_unit(arr)
    if x is None:
        raise ValueError(f"unsupported image dtype {arr.dtype}")
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 3)):
        raise ValueError(f"expected a (H, W) or (H, W, 3) image, got shape {arr.shape}")
    if x.size == 0:
        raise ValueError("empty image")
    if not np.all(np.isfinite(x)):
        raise ValueError("image contains NaN or Inf values")
    return np.clip(x, 0.0, 1.0)


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _out(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _per_channel(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    if x.ndim == 2:
        return fn(x)
    return np.stack([fn(x[..., c]) for c in range(x.shape[-1])], axis=-1)


def _depth_proxy(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Depth proxy in [0, 1]: far at the top, near at the bottom, plus smooth variation."""
    rows = np.linspace(1.0, 0.0, h)[:, None] * np.ones((1, w))
    field = ndi.gaussian_filter(rng.standard_normal((h, w)), max(h, w) / 8.0, mode="reflect")
    span = field.max() - field.min()
    field = (field - field.min()) / span if span > 0 else np.zeros_like(field)
    return 0.7 * rows + 0.3 * field


def haze(img, level: int, seed=None) -> np.ndarray:
    """Haze / fog with the atmospheric scattering model I = J t + A (1 - t).

    Transmission t = exp(-beta d) with d a depth proxy in [0, 1] (0.7 x a vertical
    ramp, far at the top, + 0.3 x a smooth random field drawn from ``seed``),
    beta = ``HAZE_BETA[level]`` (0.5 .. 2.6) and grey airlight A = 0.9.  For a fixed
    seed t decreases with the level at every pixel, so |I - A| = t |J - A| (the
    contrast against the airlight) decreases monotonically.
    """
    x = _check(img, level)
    if level == 0:
        return _out(x)
    h, w = x.shape[:2]
    t = np.exp(-HAZE_BETA[level] * _depth_proxy(h, w, _rng(seed)))
    if x.ndim == 3:
        t = t[..., None]
    return _out(x * t + HAZE_AIRLIGHT * (1.0 - t))


def _line_kernel(length: int, angle_deg: float) -> np.ndarray:
    """Normalised anti-aliased line of ``length`` pixels at ``angle_deg`` from the horizontal."""
    size = length if length % 2 else length + 1
    c = size // 2
    k = np.zeros((size, size))
    th = np.deg2rad(angle_deg)
    for s in np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length):
        xf = c + s * np.cos(th)
        yf = c - s * np.sin(th)
        x0, y0 = int(np.floor(xf)), int(np.floor(yf))
        fx, fy = xf - x0, yf - y0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                yy, xx = y0 + dy, x0 + dx
                if 0 <= yy < size and 0 <= xx < size:
                    k[yy, xx] += wy * wx
    return k / k.sum()


def rain(img, level: int, seed=None, angle: float = RAIN_ANGLE) -> np.ndarray:
    """Rain streaks: sparse random drops motion-blurred along a slanted line.

    Drops are the pixels where a uniform field u < ``RAIN_DENSITY[level]`` (the
    drops of a lower level are a subset of those of a higher level for the same
    seed) with random brightness in [0.5, 1]; they are smeared with a line kernel
    of ``RAIN_LENGTH[level]`` pixels at ``angle`` degrees from the horizontal (75 = nearly vertical), normalised to peak 1 and
    composited by a screen blend I = 1 - (1 - J)(1 - s R), s =
    ``RAIN_STRENGTH[level]``, which only brightens and stays in [0, 1].  The same
    streak layer is used for the three channels of a colour image.
    """
    x = _check(img, level)
    if level == 0:
        return _out(x)
    h, w = x.shape[:2]
    rng = _rng(seed)
    u = rng.random((h, w))
    bright = rng.uniform(0.5, 1.0, size=(h, w))
    drops = np.where(u < RAIN_DENSITY[level], bright, 0.0)
    k = _line_kernel(RAIN_LENGTH[level], angle)
    streaks = ndi.convolve(drops, k, mode="wrap")
    streaks = np.clip(streaks / k.max(), 0.0, 1.0)
    layer = RAIN_STRENGTH[level] * streaks
    if x.ndim == 3:
        layer = layer[..., None]
    return _out(1.0 - (1.0 - x) * (1.0 - layer))


def low_light(img, level: int, seed=None) -> np.ndarray:
    """Low light: under-exposure, gamma darkening and sensor noise.

    I = clip(Poisson(N J'(x)) / N + n_read), J' = g J^gamma with exposure gain
    g = ``LOW_LIGHT_GAIN[level]`` (0.6 .. 0.12), gamma = ``LOW_LIGHT_GAMMA[level]``
    (1.2 .. 2.0), N = ``LOW_LIGHT_PHOTONS[level]`` photons at full scale (shot noise
    grows as the level rises) and Gaussian read noise of std
    ``LOW_LIGHT_READ[level]``.  Noise is independent per channel.
    """
    x = _check(img, level)
    if level == 0:
        return _out(x)
    rng = _rng(seed)
    dark = LOW_LIGHT_GAIN[level] * np.power(x, LOW_LIGHT_GAMMA[level])
    n = LOW_LIGHT_PHOTONS[level]
    shot = rng.poisson(dark * n) / n
    read = rng.normal(0.0, LOW_LIGHT_READ[level], size=x.shape)
    return _out(shot + read)


def gaussian_noise(img, level: int, seed=None) -> np.ndarray:
    """Additive white Gaussian noise of std ``NOISE_SIGMA[level]`` = (5, 10, 15, 25, 40) / 255.

    Independent per pixel and channel; the result is clipped to [0, 1].
    """
    x = _check(img, level)
    if level == 0:
        return _out(x)
    rng = _rng(seed)
    return _out(x + rng.normal(0.0, NOISE_SIGMA[level], size=x.shape))


def blur(img, level: int, seed=None) -> np.ndarray:
    """Gaussian blur of std ``BLUR_SIGMA[level]`` = (0.8, 1.5, 2.5, 3.5, 5) pixels.

    Each channel separately, reflected borders.  Deterministic (``seed`` is
    accepted for a uniform signature and ignored).
    """
    x = _check(img, level)
    if level == 0:
        return _out(x)
    s = BLUR_SIGMA[level]
    return _out(_per_channel(x, lambda c: ndi.gaussian_filter(c, s, mode="reflect")))


# --------------------------------------------------------------------------- modality-specific models
# Parameter ranges from the sensors' physics (docs/metrics.md): photon / count regimes of low-light
# fluorescence (a few photons per pixel at the cells at level 4), low-dose PET / MRI / CT, infrared
# fixed-pattern noise and thermal contrast.
SHOT_PHOTONS = (np.inf, 100.0, 40.0, 15.0, 5.0, 2.0)  # fluorescence: photons at full scale
SHOT_READ = (0.0, 0.004, 0.008, 0.012, 0.02, 0.03)  # camera read noise (std, full scale = 1)
STRIPE_SIGMA = (0.0, 0.02, 0.04, 0.06, 0.09, 0.13)  # infrared column fixed-pattern noise (std)
STRIPE_WHITE = (0.0, 0.01, 0.015, 0.02, 0.03, 0.04)  # with some white noise on top
LOW_CONTRAST = (1.0, 0.7, 0.5, 0.35, 0.25, 0.15)  # contrast kept around the mean
BACKGROUND = (0.0, 0.05, 0.1, 0.18, 0.28, 0.4)  # fluorescence: smooth out-of-focus background offset
DEFOCUS_RADIUS = (0.0, 1.0, 2.0, 3.0, 4.5, 6.0)  # disk (pillbox) point spread function radius, pixels
PET_COUNTS = (np.inf, 800.0, 250.0, 80.0, 30.0, 12.0)  # PET / SPECT counts at full scale
RICIAN_SIGMA = (0.0, 0.02, 0.04, 0.06, 0.09, 0.13)  # MRI: std of each quadrature channel
CT_PHOTONS = (np.inf, 2e5, 6e4, 2e4, 7e3, 2.5e3)  # CT: incident photons per detector bin (low dose)
CT_MU = 4.0  # attenuation of a full-scale pixel times the pixel size (line integrals ~ CT_MU * sum)


def shot_noise(img, level: int, seed=None) -> np.ndarray:
    """Fluorescence at low photon counts: Poisson–Gaussian noise.

    I = Poisson(N J) / N + n_read, N = ``SHOT_PHOTONS[level]`` photons at full scale (100 .. 2: a
    GFP cell at half scale collects 1 photon at level 5) and Gaussian read noise of std
    ``SHOT_READ[level]``. Independent per pixel and channel.
    """
    x = _check(img, level)
    if level == 0:
        return _out(x)
    rng = _rng(seed)
    n = SHOT_PHOTONS[level]
    return _out(rng.poisson(x * n) / n + rng.normal(0.0, SHOT_READ[level], size=x.shape))


def stripe_noise(img, level: int, seed=None) -> np.ndarray:
    """Infrared fixed-pattern noise: a random offset per column (std ``STRIPE_SIGMA[level]``)
    plus white noise (std ``STRIPE_WHITE[level]``), as uncooled microbolometers show."""
    x = _check(img, level)
    if level == 0:
        return _out(x)
    rng = _rng(seed)
    cols = rng.normal(0.0, STRIPE_SIGMA[level], size=(1, x.shape[1]) + ((1,) if x.ndim == 3 else ()))
    return _out(x + cols + rng.normal(0.0, STRIPE_WHITE[level], size=x.shape))


def low_contrast(img, level: int, seed=None) -> np.ndarray:
    """Low thermal contrast: the image squeezed around its mean, I = m + c (J − m), c =
    ``LOW_CONTRAST[level]`` (0.7 .. 0.15). Deterministic."""
    x = _check(img, level)
    if level == 0:
        return _out(x)
    m = float(x.mean())
    return _out(m + LOW_CONTRAST[level] * (x - m))


def background(img, level: int, seed=None) -> np.ndarray:
    """Fluorescence background: a smooth out-of-focus / autofluorescence offset,
    I = J + o (0.5 + 0.5 s) with o = ``BACKGROUND[level]`` and s a smooth random field in [0, 1]."""
    x = _check(img, level)
    if level == 0:
        return _out(x)
    h, w = x.shape[:2]
    f = ndi.gaussian_filter(_rng(seed).standard_normal((h, w)), max(h, w) / 6.0, mode="reflect")
    span = f.max() - f.min()
    f = (f - f.min()) / span if span > 0 else np.zeros_like(f)
    off = BACKGROUND[level] * (0.5 + 0.5 * f)
    return _out(x + (off[..., None] if x.ndim == 3 else off))


def _disk(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    # anti-aliased pillbox: coverage of each pixel by the disk, from 4 x 4 sub-samples
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    k = np.zeros(yy.shape)
    for dy in sub:
        for dx in sub:
            k += (yy + dy) ** 2 + (xx + dx) ** 2 <= radius**2
    return k / k.sum()


def defocus(img, level: int, seed=None) -> np.ndarray:
    """Defocus blur: convolution with an anti-aliased disk of radius ``DEFOCUS_RADIUS[level]``
    (1 .. 6 pixels), reflected borders. Deterministic."""
    x = _check(img, level)
    if level == 0:
        return _out(x)
    k = _disk(DEFOCUS_RADIUS[level])
    return _out(_per_channel(x, lambda c: ndi.convolve(c, k, mode="reflect")))


def poisson_counts(img, level: int, seed=None) -> np.ndarray:
    """PET / SPECT at low counts: I = Poisson(N J) / N with N = ``PET_COUNTS[level]`` counts at
    full scale (800 .. 12). A colour (pseudo-colour) image gets the noise of its luminance,
    scaled into each channel, so the colour map is kept."""
    x = _check(img, level)
    if level == 0:
        return _out(x)
    rng = _rng(seed)
    n = PET_COUNTS[level]
    if x.ndim == 2:
        return _out(rng.poisson(x * n) / n)
    lum = x.mean(-1)
    noisy = rng.poisson(lum * n) / n
    ratio = np.where(lum > 1e-6, noisy / np.maximum(lum, 1e-6), 0.0)
    return _out(x * ratio[..., None] + np.where(lum > 1e-6, 0.0, noisy)[..., None])


def rician(img, level: int, seed=None) -> np.ndarray:
    """MRI magnitude noise: I = |J + n_1 + i n_2| with n_1, n_2 Gaussian of std
    ``RICIAN_SIGMA[level]`` (Rician: biased upwards in the dark background)."""
    x = _check(img, level)
    if level == 0:
        return _out(x)
    rng = _rng(seed)
    s = RICIAN_SIGMA[level]
    return _out(np.hypot(x + rng.normal(0.0, s, x.shape), rng.normal(0.0, s, x.shape)))


def ct_low_dose(img, level: int, seed=None) -> np.ndarray:
    """Low-dose CT: Poisson noise on the projections, then filtered back-projection.

    The image (attenuation, ``CT_MU`` × intensity per pixel) is projected over up to 180 angles (half the diagonal in pixels, at least 45)
    (scikit-image's Radon transform), each line integral p gets a transmitted count
    Poisson(N₀ e^{−p}) with N₀ = ``CT_PHOTONS[level]`` photons per bin, and the noisy line integrals
    are reconstructed by filtered back-projection (ramp filter): the streaky, correlated noise of
    real low-dose scans. Colour images are treated on their luminance and scaled back.
    """
    from skimage.transform import iradon, radon

    x = _check(img, level)
    if level == 0:
        return _out(x)
    rng = _rng(seed)
    lum = x if x.ndim == 2 else x.mean(-1)
    h, w = lum.shape
    side = int(np.ceil(np.hypot(h, w))) + 2
    py, px = (side - h) // 2, (side - w) // 2
    canvas = np.zeros((side, side))
    canvas[py:py + h, px:px + w] = lum
    theta = np.linspace(0.0, 180.0, int(min(180, max(45, side // 2))), endpoint=False)
    scale = CT_MU / max(h, w)  # line integrals of a full-scale disk of the image's size reach ~CT_MU
    sino = radon(canvas, theta=theta, circle=True) * scale
    n0 = CT_PHOTONS[level]
    counts = np.maximum(rng.poisson(n0 * np.exp(-sino)), 1.0)
    rec = iradon(-np.log(counts / n0) / scale, theta=theta, circle=True, filter_name="ramp")
    noisy = rec[py:py + h, px:px + w]
    if x.ndim == 2:
        return _out(noisy)
    return _out(x + (noisy - lum)[..., None])


#: name -> degradation function ``fn(img, level, seed=None)``.
DEGRADATIONS: dict[str, Callable[..., np.ndarray]] = {
    "haze": haze,
    "rain": rain,
    "low_light": low_light,
    "gaussian_noise": gaussian_noise,
    "blur": blur,
    "shot_noise": shot_noise,
    "stripe_noise": stripe_noise,
    "low_contrast": low_contrast,
    "background": background,
    "defocus": defocus,
    "poisson_counts": poisson_counts,
    "rician": rician,
    "ct_low_dose": ct_low_dose,
}

#: the degradations each imaging modality meets (names of :data:`DEGRADATIONS`)
MODALITIES: dict[str, tuple[str, ...]] = {
    "visible": ("haze", "rain", "low_light", "blur", "gaussian_noise"),
    "infrared": ("gaussian_noise", "stripe_noise", "low_contrast"),
    "phase_contrast": ("gaussian_noise", "blur"),
    "fluorescence": ("shot_noise", "background", "defocus"),
    "mri": ("rician",),
    "pet": ("poisson_counts",),
    "spect": ("poisson_counts",),
    "ct": ("ct_low_dose",),
}

#: task -> (modality of a, modality of b)
TASK_MODALITIES: dict[str, tuple[str, str]] = {
    "ivf": ("visible", "infrared"),
    "gfp_pc": ("phase_contrast", "fluorescence"),
    "pet_mri": ("mri", "pet"),
    "spect_mri": ("mri", "spect"),
    "ct_mri": ("mri", "ct"),
}


def composite(img, steps, seed=None) -> np.ndarray:
    """Several degradations in turn: ``steps`` is a sequence of ``(name, level)`` (e.g. low light
    then noise); each step draws from the same generator."""
    rng = _rng(seed)
    out = _check(img, 0)
    for name, level in steps:
        out = apply(out, name, level, seed=rng)
    return _out(out)


def apply(img, name: str, level: int, seed=None) -> np.ndarray:
    """Apply the degradation ``name`` (a key of :data:`DEGRADATIONS`) at ``level``."""
    try:
        fn = DEGRADATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown degradation {name!r}; choose one of {sorted(DEGRADATIONS)}"
        ) from None
    return fn(img, level, seed=seed)
