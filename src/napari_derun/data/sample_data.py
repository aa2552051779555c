"""Procedurally generated sample pairs (no download, no research-use data).

* :func:`gfp_pc`: phase-contrast-like cells (grey background, dark cell walls
  with bright halos, granular texture) and a GFP-like image (green fluorescence
  in some nuclei / cytoplasm, camera noise) as an RGB image.
* :func:`pet_mri`: an MRI-like axial slice (skull ring, grey/white matter folds)
  and a PET-like pseudo-colour uptake map (smooth hot spots inside the brain).
* :func:`spect_mri`: the MRI-like slice and a SPECT-like perfusion map in a blue-red look-up table.
* :func:`ct_mri`: the MRI-like slice and a CT-like slice (bright bone, dim soft tissue), both grey.
* :func:`ivf`: a visible street scene in colour (sky, buildings, road) and its infrared image (warm
  people and a car bright, the sky dark).

All return ``(a, b)`` = (structural, salient) as uint8 arrays; :data:`SAMPLES` maps each task to its
function.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["gfp_pc", "pet_mri", "spect_mri", "ct_mri", "ivf", "SAMPLES"]


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


def _head(size: int, rng: np.random.Generator):
    """Coordinates and masks of a synthetic axial head slice, and its MRI-like image in [0, 1]."""
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
    return yy, xx, head, skull, brain, ventricles, mri


def _uptake(yy, xx, brain, rng: np.random.Generator, n: int = 5) -> np.ndarray:
    """Smooth hot spots inside the brain, in [0, 1]."""
    u = np.zeros(yy.shape)
    for _ in range(n):
        cy, cx = rng.uniform(-0.5, 0.5, 2)
        s = rng.uniform(0.08, 0.2)
        u += rng.uniform(0.5, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2))
    u = ndi.gaussian_filter(u * brain, 3.0)
    return u / max(u.max(), 1e-6)


def spect_mri(size: int = 256, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """MRI-like ``(size, size)`` uint8 and SPECT-like pseudo-colour ``(size, size, 3)`` uint8 (blue to red)."""
    rng = np.random.default_rng(seed)
    yy, xx, head, skull, brain, ventricles, mri = _head(size, rng)
    u = ndi.gaussian_filter(0.35 * brain + 0.65 * _uptake(yy, xx, brain, rng, 7), 2.0)
    u = u / max(u.max(), 1e-6)
    rgb = np.stack([np.clip(2 * u - 0.6, 0, 1), 0.0 * u, np.clip(1.6 * u, 0, 1) * (1 - 0.6 * u)], axis=-1)
    return _to_u8(mri), _to_u8(rgb * (u[..., None] > 0.05))


def ct_mri(size: int = 256, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """MRI-like ``(size, size)`` uint8 and CT-like ``(size, size)`` uint8 (bright skull, dim brain)."""
    rng = np.random.default_rng(seed)
    yy, xx, head, skull, brain, ventricles, mri = _head(size, rng)
    ct = 0.12 * head + 0.18 * brain - 0.08 * ventricles + 1.0 * ndi.binary_dilation(skull, iterations=2)
    ct = ndi.gaussian_filter(ct, 0.7) + 0.01 * rng.standard_normal((size, size))
    return _to_u8(mri), _to_u8(ct)


def ivf(height: int = 192, width: int = 256, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Visible street scene ``(height, width, 3)`` uint8 and its infrared ``(height, width)`` uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    horizon = 0.45 * height
    sky = yy < horizon
    vis = np.zeros((height, width, 3))
    vis[sky] = (np.array([0.45, 0.6, 0.85])[None] * (0.8 + 0.2 * (yy[sky] / horizon))[:, None])
    ground = ~sky
    vis[ground] = np.array([0.35, 0.33, 0.3])
    ir = np.where(sky, 0.12, 0.4 + 0.15 * (yy - horizon) / height)
    x0 = 0
    while x0 < width:  # buildings along the horizon
        bw, bh = rng.integers(20, 45), rng.uniform(0.15, 0.35) * height
        house = (xx >= x0) & (xx < x0 + bw) & (yy >= horizon - bh) & (yy < horizon)
        vis[house] = rng.uniform(0.3, 0.7, 3)
        ir[house] = rng.uniform(0.3, 0.45)
        win = house & ((xx - x0) % 8 < 4) & (yy % 10 < 5)
        vis[win] = (0.9, 0.85, 0.5)
        x0 += bw + rng.integers(2, 10)
    for _ in range(3):  # people: warm in infrared, dark clothes in visible
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.65, 0.85) * height
        body = ((xx - cx) / 4.0) ** 2 + ((yy - cy) / 12.0) ** 2 < 1
        head = (xx - cx) ** 2 + (yy - cy + 15) ** 2 < 16
        vis[body | head] = (0.2, 0.18, 0.22)
        ir[body | head] = 0.95
    car = (np.abs(xx - 0.3 * width) < 22) & (np.abs(yy - 0.72 * height) < 8)
    vis[car] = (0.7, 0.1, 0.1)
    ir[car] = 0.7
    ir[car & (xx > 0.3 * width + 14)] = 1.0  # the engine
    vis = ndi.gaussian_filter(vis, (0.7, 0.7, 0)) + 0.02 * rng.standard_normal(vis.shape)
    ir = ndi.gaussian_filter(ir, 1.5) + 0.02 * rng.standard_normal(ir.shape)
    return _to_u8(vis), _to_u8(ir)


def pet_mri(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MRI-like ``(size, size)`` uint8 and PET-like pseudo-colour ``(size, size, 3)`` uint8."""
    from matplotlib import colormaps

    rng = np.random.default_rng(seed)
    yy, xx, _, _, brain, _, mri = _head(size, rng)
    pet = _uptake(yy, xx, brain, rng, 5)
    rgb = colormaps["jet"](pet)[..., :3] * (pet[..., None] > 0.03)
    return _to_u8(mri), _to_u8(rgb)


#: task -> sample pair function (the tasks of :mod:`napari_derun.data.task_guess`)
SAMPLES = {"gfp_pc": gfp_pc, "pet_mri": pet_mri, "spect_mri": spect_mri, "ct_mri": ct_mri, "ivf": ivf}
