"""Shared test helpers (importable as ``helpers``: pytest's ``pythonpath`` includes tests/)."""
from __future__ import annotations

import numpy as np


def smooth_pair(h: int = 48, w: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A real-looking synthetic pair: textured structural image, blobby salient image, in [0, 1]."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = 0.5 + 0.25 * np.sin(xx / 3.0) * np.cos(yy / 5.0) + 0.05 * rng.standard_normal((h, w))
    a[h // 4 : h // 2, w // 4 : w // 2] += 0.35  # a sharp-edged structure
    a = ndi.gaussian_filter(a, 0.7)
    b = np.zeros((h, w))
    for _ in range(4):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        b += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(3, 8) ** 2))
    b = b / b.max() * 0.9 + 0.02 * rng.standard_normal((h, w))
    return np.clip(a, 0, 1).astype(np.float32), np.clip(b, 0, 1).astype(np.float32)


def forget_model(name: str, default=None):
    """Drop a session model registered by a test (the registry keeps them for the process)."""
    from napari_derun.engine import registry

    return registry._SESSION.pop(name, default)
