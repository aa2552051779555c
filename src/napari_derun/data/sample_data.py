"""Procedurally generated sample pairs (no download, no research-use data).

* :func:`gfp_pc`: phase-contrast-like cells (grey background, dark cell walls
  with bright halos, granular texture) and a GFP-like image (green fluorescence
  in some nuclei / cytoplasm, camera noise) as an RGB image.
* :func:`pet_mri`: an MRI-like axial slice (skull ring, grey/white matter folds)
  and a PET-like pseudo-colour uptake map (smooth hot spots inside the brain).

Both return ``(a, b)`` = (structural, salient) as uint8 arrays.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["gfp_pc", "pet_mri", "SAMPLES"]


def _to_u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def gfp_pc(size: int = 256, n_cells: int = 14, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Phase contrast ``(size, size)`` uint8 and GFP ``(size, size, 3)`` uint8 of the same cells."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    labels = np.zeros((size, size), int)
    inside = np.zeros((size, size))
    gfp = np.zeros((size, size))
    for i in range(1, n_cells + 1):
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        ry, rx = rng.uniform(0.05, 0.11, 2) * size
        ang = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(ang) + dy * np.sin(ang)) / rx
        v = (-dx * np.sin(ang) + dy * np.cos(ang)) / ry
        r = np.sqrt(u**2 + v**2)
        cell = r < 1.0
        labels[cell] = i
        inside = np.maximum(inside, np.clip(1.0 - r, 0, 1))
        if rng.random() < 0.7:  # expressing cell
            level = rng.uniform(0.4, 1.0)
            nucleus = np.exp(-(r / 0.35) ** 2)
            gfp += level * (0.35 * cell + 0.65 * nucleus)
    edges = ndi.morphological_gradient(labels, size=3) > 0
    texture = ndi.gaussian_filter(rng.standard_normal((size, size)), 1.2)
    pc = 0.55 + 0.06 * texture - 0.35 * ndi.gaussian_filter(edges.astype(float), 1.0) * 2.5
    halo = ndi.gaussian_filter(edges.astype(float), 3.0)
    pc += 0.5 * halo - 0.12 * ndi.gaussian_filter((labels > 0).astype(float), 2.0)
    pc += 0.02 * rng.standard_normal((size, size))
    gfp = ndi.gaussian_filter(gfp, 1.5)
    gfp = gfp / max(gfp.max(), 1e-6) * 0.9 + 0.03 + 0.02 * rng.standard_normal((size, size))
    green = np.clip(gfp, 0, 1)
    rgb = np.stack([0.15 * green, green, 0.1 * green], axis=-1)
    return _to_u8(pc), _to_u8(rgb)


def pet_mri(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MRI-like ``(size, size)`` uint8 and PET-like pseudo-colour ``(size, size, 3)`` uint8."""
    from matplotlib import colormaps

    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float64) - size / 2) / (size / 2)
    r = np.sqrt((xx / 0.78) ** 2 + (yy / 0.92) ** 2)
    th = np.arctan2(yy, xx)
    head = r < 1.0
    skull = (r > 0.9) & (r < 0.97)
    brain = r < 0.88
    folds = 0.5 + 0.5 * np.sin(14 * r + 3 * np.sin(5 * th) + rng.uniform(0, 6))
    wm = brain & (folds > 0.55) & (r < 0.8)
    mri = 0.15 * head + 0.55 * brain + 0.2 * wm + 0.5 * skull
    ventricles = (((xx - 0.12) / 0.08) ** 2 + (yy / 0.25) ** 2 < 1) | (((xx + 0.12) / 0.08) ** 2 + (yy / 0.25) ** 2 < 1)
    mri[ventricles] = 0.2
    mri = ndi.gaussian_filter(mri, 0.8) + 0.015 * rng.standard_normal((size, size))
    pet = np.zeros((size, size))
    for _ in range(5):
        cy, cx = rng.uniform(-0.5, 0.5, 2)
        s = rng.uniform(0.08, 0.2)
        pet += rng.uniform(0.5, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2))
    pet = ndi.gaussian_filter(pet * brain, 3.0)
    pet = pet / max(pet.max(), 1e-6)
    rgb = colormaps["jet"](pet)[..., :3] * (pet[..., None] > 0.03)
    return _to_u8(mri), _to_u8(rgb)


SAMPLES = {"gfp_pc": gfp_pc, "pet_mri": pet_mri}
