"""napari sample-data contributions: synthetic pairs made by code (no download).

Each function returns napari LayerDataTuples ``[(data, kwargs, "image"), ...]``:
first the structural image ``a`` (grey), then the salient image ``b`` (RGB).
No napari import is needed here.
"""
from __future__ import annotations

from .data.sample_data import gfp_pc, pet_mri

__all__ = ["make_gfp_pc", "make_pet_mri"]


def make_gfp_pc():
    """Phase contrast (structural) + GFP (salient, RGB) of the same synthetic cells."""
    a, b = gfp_pc()
    return [
        (a, {"name": "phase contrast", "colormap": "gray"}, "image"),
        (b, {"name": "GFP", "rgb": True, "blending": "additive", "opacity": 0.7}, "image"),
    ]


def make_pet_mri():
    """MRI (structural) + PET pseudo-colour (salient, RGB) of a synthetic axial slice."""
    a, b = pet_mri()
    return [
        (a, {"name": "MRI", "colormap": "gray"}, "image"),
        (b, {"name": "PET", "rgb": True, "blending": "additive", "opacity": 0.7}, "image"),
    ]
