"""Fusion on a dask.distributed cluster: the model shipped to the workers.

``napari_derun.fuse(a, b, client=client)`` (or ``napari-derun fuse … --scheduler ADDRESS``)
sends blocks of planes to the workers. The model travels as a :class:`ModelSpec`
(built-in name, checkpoint path, or — for in-memory/session models — its config
and state dict), and each worker process loads it once (:func:`resolve_fuser`
keeps a per-process cache).

Training on several GPUs or machines is not here: it is the ``"ddp"`` strategy of
:func:`napari_derun.training.train` (``torchrun … -m napari_derun.cli train DIR --strategy ddp``,
:mod:`napari_derun.training.ddp`).
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import state_sha256

__all__ = ["ModelSpec", "model_spec", "resolve_fuser", "state_sha256"]

_CACHE: dict[str, Any] = {}
_LOCK = threading.Lock()


@dataclass
class ModelSpec:
    """A picklable description of a fusion model, loaded once per worker process."""

    kind: str  # "admm", "path", "state"
    key: str
    device: str = "auto"
    name: str = ""
    path: str | None = None
    hifm: dict | None = None
    config: dict | None = None
    state: dict[str, np.ndarray] | None = field(default=None, repr=False)
    info: dict = field(default_factory=dict)
    precision: str = "fp32"

    def load(self):
        from . import registry as api
        from ..core.hifm import HIFMParams

        if self.kind == "admm":
            f = api.load_model(HIFMParams.from_dict(self.hifm), self.device, self.precision)
            f.name = self.name or "admm"
            return f
        if self.kind == "path":
            return api.load_model(self.path, self.device, self.precision)
        import torch

        from ..core.model import DeRUN, DeRUNConfig

        net = DeRUN(DeRUNConfig.from_dict(self.config))
        net.load_state_dict({k: torch.from_numpy(v) for k, v in self.state.items()})
        f = api.load_model(net, self.device, self.precision)
        f.name, f.source, f.info = self.name, "in-memory", dict(self.info)
        return f


def model_spec(fuser) -> ModelSpec:
    """The :class:`ModelSpec` of a loaded :class:`~napari_derun.api.Fuser` (device kept as ``"auto"``
    unless it is ``"cpu"``, so GPU workers use their GPU)."""
    spec = _model_spec(fuser)
    spec.precision = fuser.precision
    return spec


def _model_spec(fuser) -> ModelSpec:
    dev = "cpu" if fuser.device == "cpu" else "auto"
    if fuser.kind == "admm":
        d = fuser.module.params.to_dict()
        key = "admm:" + hashlib.sha256(repr(sorted(d.items())).encode()).hexdigest()
        return ModelSpec("admm", key, dev, name=fuser.name, hifm=d)
    src = fuser.source
    if src and src not in ("in-memory", "session", "builtin") and Path(src).is_file() and fuser.sha256:
        return ModelSpec("path", "path:" + fuser.sha256, dev, name=fuser.name, path=str(Path(src).resolve()))
    state = {k: v.detach().cpu().numpy().copy() for k, v in fuser.module.state_dict().items()}
    return ModelSpec("state", "state:" + state_sha256(state), dev, name=fuser.name,
                     config=fuser.module.config.to_dict(), state=state, info=dict(fuser.info))


def resolve_fuser(model):
    """A :class:`~napari_derun.api.Fuser` as is, or the cached load of a :class:`ModelSpec`."""
    if not isinstance(model, ModelSpec):
        return model
    with _LOCK:
        key = f"{model.key}@{model.device}/{model.precision}"
        f = _CACHE.get(key)
        if f is None:
            f = model.load()
            _CACHE[key] = f
        return f


def _loaded_count() -> int:
    """How many models this process has loaded through :func:`resolve_fuser` (for tests)."""
    return len(_CACHE)
