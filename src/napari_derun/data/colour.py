"""Colour of a fused result, the way the two layers look in napari (numpy only).

DeRUN fuses luminance. What colour the result gets is decided here, by :func:`compose`:

* ``"overlay"`` (what napari's additive overlay of the two layers shows, but fused): the fused
  brightness ``F`` is split by the salient image's normalised brightness ``w`` into a structural part
  ``F (1 - w)``, shown in grey (or in the structural image's own colours when it is a colour image), and a
  salient part ``F w``, shown in the salient image's colour (its colour map when it is a grey image shown
  with one, e.g. GFP in ``green``; its own hue when it is RGB, e.g. PET in pseudo-colour). ``w`` is the
  salient image's brightness above its background (its median), so a dim fluorescence background stays
  grey. The brightest
  channel of a pixel is never above ``F``, so nothing is clipped; for a green colour map the green channel
  is exactly ``F`` and the green excess ``G - (R + B) / 2`` is ``F w``: it sits where the salient image is bright.
* ``"chroma"``: the fused luminance with the chroma (YCbCr) of the colour input put back (the library's
  default for RGB inputs, :func:`napari_derun.data.preprocess.recolor`).
* ``"luminance"``: the fused luminance alone, one grey channel.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import preprocess

__all__ = ["COLOUR_MODES", "PURE_COLOURS", "colormap_lut", "split", "salient_colour", "overlay", "compose"]

#: the values of ``colour=`` that :func:`compose` takes
COLOUR_MODES = ("overlay", "chroma", "luminance")
#: napari's one-colour ramps, by name (black to the colour)
PURE_COLOURS = {"green": (0, 1, 0), "red": (1, 0, 0), "blue": (0, 0, 1), "magenta": (1, 0, 1),
                "cyan": (0, 1, 1), "yellow": (1, 1, 0), "gray": (1, 1, 1), "grey": (1, 1, 1)}


def colormap_lut(cmap: Any, n: int = 256) -> np.ndarray | None:
    """A colour map as an ``(n, 3)`` look-up table over [0, 1], or None for grey.

    Args:
        cmap: None, a name (napari's one-colour ramps such as ``"green"``, or a matplotlib colour map
            such as ``"magma"``), a callable mapping values in [0, 1] to RGB(A), or an ``(N, 3|4)`` array of
            colours evenly spaced over [0, 1].
        n: entries of the table.

    Returns:
        float32 ``(n, 3)`` in [0, 1], or None when ``cmap`` is None or grey.
    """
    if cmap is None:
        return None
    v = np.linspace(0.0, 1.0, n)
    if isinstance(cmap, str):
        key = cmap.lower()
        if key in ("gray", "grey", "gray_r", "i forest"):
            return None
        if key in PURE_COLOURS:
            return (v[:, None] * np.asarray(PURE_COLOURS[key], np.float64)[None]).astype(np.float32)
        from matplotlib import colormaps

        try:
            cmap = colormaps[cmap]
        except KeyError:
            raise ValueError(f"unknown colour map {cmap!r}: use a napari colour ({', '.join(PURE_COLOURS)}) or a "
                             "matplotlib colour map name") from None
    if callable(cmap):
        lut = np.asarray(cmap(v), np.float64)[..., :3]
    else:
        arr = np.asarray(cmap, np.float64)
        if arr.ndim != 2 or arr.shape[1] not in (3, 4):
            raise ValueError(f"a colour map table must have shape (N, 3) or (N, 4), got {arr.shape}")
        x = np.linspace(0.0, 1.0, len(arr))
        lut = np.stack([np.interp(v, x, arr[:, c]) for c in range(3)], -1)
    lut = np.clip(lut, 0.0, 1.0).astype(np.float32)
    if np.allclose(lut[:, 0], lut[:, 1], atol=1e-3) and np.allclose(lut[:, 0], lut[:, 2], atol=1e-3):
        return None  # a grey ramp
    return lut


def split(x01: np.ndarray, rgb: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Luminance ``(..., Y, X)`` and YCbCr chroma ``(..., Y, X, 2)`` (None when grey, or R = G = B) of an
    image in [0, 1] whose last axis is colour when ``rgb``."""
    if not rgb:
        return np.asarray(x01, np.float32), None
    c = x01[..., :3]
    if np.array_equal(c[..., 0], c[..., 1]) and np.array_equal(c[..., 0], c[..., 2]):
        return c[..., 0].astype(np.float32), None
    ycc = preprocess.rgb_to_ycbcr(c)
    return ycc[..., 0].astype(np.float32), ycc[..., 1:].astype(np.float32)


def salient_colour(b01: np.ndarray, rgb: bool, lut: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Weight ``w`` (how salient each pixel is, in [0, 1]) and hue (RGB with a brightest channel of 1,
    ``(..., Y, X, 3)``) of the salient image; the hue is None when it has no colour.

    Args:
        b01: the salient image in [0, 1].
        rgb: whether its last axis is colour.
        lut: its colour map (:func:`colormap_lut`), for a grey image.

    Returns:
        ``(w, hue)``.
    """
    if rgb:
        c = np.asarray(b01[..., :3], np.float32)
        w = c.max(-1)
        if np.array_equal(c[..., 0], c[..., 1]) and np.array_equal(c[..., 0], c[..., 2]):
            c, rgb = c[..., 0], False  # grey content: the colour map decides
        else:
            hue = np.where(w[..., None] > 1e-3, c / np.maximum(w, 1e-3)[..., None], 1.0)
            return _above_background(w), hue.astype(np.float32)
    else:
        c = np.asarray(b01, np.float32)
        w = c
    w = _above_background(w)
    if lut is None:
        return w, None
    idx = np.clip(np.rint(c * (len(lut) - 1)).astype(np.intp), 0, len(lut) - 1)
    col = lut[idx]
    peak = col.max(-1, keepdims=True)
    top = lut[-1] / max(float(lut[-1].max()), 1e-3)  # the colour of the darkest pixels: the map's own
    hue = np.where(peak > 1e-3, col / np.maximum(peak, 1e-3), top)
    return w, hue.astype(np.float32)


def _above_background(w: np.ndarray) -> np.ndarray:
    """The salient weight above the image's background (its median: for fluorescence the dark background,
    for PET or SPECT the black surround), stretched back to [0, 1]."""
    m = float(np.median(w))
    if m >= 0.95:
        return np.zeros_like(w)
    return np.clip((w - m) / (1.0 - m), 0.0, 1.0).astype(np.float32)


def overlay(fused: np.ndarray, w: np.ndarray, hue: np.ndarray, a_chroma: np.ndarray | None = None) -> np.ndarray:
    """``F (1 - w)`` in grey (or in ``a``'s chroma) plus ``F w`` in ``hue`` (see the module docstring).

    Args:
        fused: the fused luminance ``(..., Y, X)``.
        w: the salient weight, same shape, in [0, 1].
        hue: ``(..., Y, X, 3)`` with a brightest channel of 1.
        a_chroma: the structural image's YCbCr chroma ``(..., Y, X, 2)``, or None for grey.

    Returns:
        float32 RGB ``(..., Y, X, 3)`` in [0, 1].
    """
    f = np.clip(np.asarray(fused, np.float32), 0.0, 1.0)
    w = np.clip(np.asarray(w, np.float32), 0.0, 1.0)
    base = f * (1.0 - w)
    if a_chroma is not None:
        base_rgb = preprocess.ycbcr_to_rgb(np.concatenate([base[..., None], a_chroma], axis=-1))
    else:
        base_rgb = np.repeat(base[..., None], 3, axis=-1)
    return np.clip(base_rgb + (f * w)[..., None] * hue, 0.0, 1.0).astype(np.float32)


def compose(fused: np.ndarray, a01: np.ndarray, b01: np.ndarray, a_rgb: bool, b_rgb: bool, mode: str = "overlay",
            b_colormap: Any = None) -> np.ndarray:
    """The coloured result of a fusion (see the module docstring).

    Args:
        fused: the fused luminance ``(..., Y, X)`` in [0, 1].
        a01: the structural image in [0, 1] (colour axis last when ``a_rgb``).
        b01: the salient image in [0, 1] (colour axis last when ``b_rgb``).
        a_rgb: whether ``a01`` is colour.
        b_rgb: whether ``b01`` is colour.
        mode: ``"overlay"``, ``"chroma"`` or ``"luminance"``.
        b_colormap: the colour map the salient image is shown with (:func:`colormap_lut`), for a grey ``b``.

    Returns:
        float32 ``(..., Y, X)`` (grey) or ``(..., Y, X, 3)`` in [0, 1].
    """
    if mode not in COLOUR_MODES:
        raise ValueError(f"colour must be one of {COLOUR_MODES} (or 'auto'), got {mode!r}")
    fused = np.clip(np.asarray(fused, np.float32), 0.0, 1.0)
    if mode == "luminance":
        return fused
    _, ca = split(a01, a_rgb)
    if mode == "chroma":
        _, cb = split(b01, b_rgb)
        chroma = cb if cb is not None else ca
        return fused if chroma is None else preprocess.recolor(fused, chroma)
    w, hue = salient_colour(b01, b_rgb, colormap_lut(b_colormap))
    if hue is None:
        return fused if ca is None else preprocess.recolor(fused, ca)
    return overlay(fused, w, hue, ca)

