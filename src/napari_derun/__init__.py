"""napari-derun: DeRUN (Degradation-Resistant Unfolding Network) image fusion.

The public API is imported lazily so that ``import napari_derun`` (and napari's
plugin discovery) does not import torch.

Naming of the inputs follows the paper: ``a`` is the structural / texture
modality (visible, MRI, phase contrast; the paper's V) and ``b`` is the salient /
intensity modality (infrared, PET, SPECT, CT, GFP; the paper's U).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
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
# submodules exposed as attributes (imported on first use)
_SUBMODULES = {"metrics": "napari_derun.evaluation.metrics", "degrade": "napari_derun.data.degrade",
               "baselines": "napari_derun.evaluation.baselines", "sample_data": "napari_derun.data.sample_data"}

#: the package is laid out by role (core/, data/, engine/, training/, evaluation/); these modules were
#: top-level before and stay importable under their old names (the same module objects)
_MOVED = {
    "ops": "core.ops", "hifm": "core.hifm", "model": "core.model", "losses": "core.losses",
    "objectives": "core.objectives", "io": "data.io", "preprocess": "data.preprocess", "datasets": "data.datasets",
    "degrade": "data.degrade", "sample_data": "data.sample_data", "metrics": "evaluation.metrics",
    "metrics_extra": "evaluation.metrics_extra", "baselines": "evaluation.baselines", "robust": "evaluation.robust",
    "profiling": "evaluation.profiling", "registry": "engine.registry", "stacks": "engine.stacks",
    "distributed": "engine.distributed", "checkpoint": "engine.checkpoint", "bioimage_io": "engine.bioimage_io",
    "train_config": "training.config", "events": "training.events", "validation": "training.validation",
}

__all__ = sorted(_LAZY) + sorted(_SUBMODULES) + ["__version__"]


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import napari_derun.metrics`` gives ``napari_derun.evaluation.metrics`` (see ``_MOVED``)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        prefix, _, rest = fullname.partition(".")
        if prefix == __name__ and rest in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{_MOVED[spec.name.partition('.')[2]]}")

    def exec_module(self, module) -> None:  # already executed under its own name
        pass


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_derun' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
