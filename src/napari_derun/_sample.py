"""napari sample-data contributions: synthetic pairs made by code (no download), one per task.

Each function returns napari LayerDataTuples ``[(data, kwargs, "image"), ...]``:
first the structural image ``a``, then the salient image ``b`` (shown as napari's additive overlay
would show them). No napari import is needed here.
"""
from __future__ import annotations

from .data.sample_data import ct_mri, gfp_pc, ivf, pet_mri, spect_mri

__all__ = ["make_gfp_pc", "make_pet_mri", "make_spect_mri", "make_ct_mri", "make_ivf"]


def _pair(a, b, a_name: str, b_name: str, b_cmap: str = "gray"):
    b_kw = {"name": b_name, "blending": "additive", "opacity": 0.7}
    if b.ndim == 3:
        b_kw["rgb"] = True
    else:
        b_kw["colormap"] = b_cmap
    a_kw = {"name": a_name} if a.ndim == 3 else {"name": a_name, "colormap": "gray"}
    if a.ndim == 3:
        a_kw["rgb"] = True
    return [(a, a_kw, "image"), (b, b_kw, "image")]


def make_gfp_pc():
    """Phase contrast (structural) + GFP (salient, RGB) of the same synthetic cells."""
    return _pair(*gfp_pc(), "phase contrast", "GFP")


def make_pet_mri():
    """MRI (structural) + PET pseudo-colour (salient, RGB) of a synthetic axial slice."""
    return _pair(*pet_mri(), "MRI", "PET")


def make_spect_mri():
    """MRI (structural) + SPECT pseudo-colour (salient, RGB) of a synthetic axial slice."""
    return _pair(*spect_mri(), "MRI", "SPECT")


def make_ct_mri():
    """MRI (structural) + CT (salient, grey) of a synthetic axial slice."""
    return _pair(*ct_mri(), "MRI", "CT", "magma")


def make_ivf():
    """Visible street scene (structural, RGB) + infrared (salient, grey) of the same synthetic scene."""
    return _pair(*ivf(), "visible", "infrared", "inferno")
