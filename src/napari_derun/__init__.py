"""napari-derun: DeRUN (Degradation-Resistant Unfolding Network) image fusion.

The public API is imported lazily so that ``import napari_derun`` (and napari's
plugin discovery) does not import torch.

Naming of the inputs follows the paper: ``a`` is the structural / texture
modality (visible, MRI, phase contrast; the paper's V) and ``b`` is the salient /
intensity modality (infrared, PET, SPECT, CT, GFP; the paper's U).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "fuse": "napari_derun.api",
    "load_model": "napari_derun.api",
    "list_models": "napari_derun.api",
    "register_model": "napari_derun.api",
    "hifm_admm": "napari_derun.core.hifm",
    "HIFMParams": "napari_derun.core.hifm",
    "HIFMSolver": "napari_derun.core.hifm",
    "DeRUN": "napari_derun.core.model",
    "DeRUNConfig": "napari_derun.core.model",
    "finetune": "napari_derun.training.loop",
    "train": "napari_derun.training.loop",
    "TrainConfig": "napari_derun.training.config",
    "evaluate": "napari_derun.evaluation.runner",
    "robustness": "napari_derun.evaluation.robust",
}
__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_derun' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
