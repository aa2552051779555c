"""Models: the shipped and session registry, devices, loading, and running a model on luminance planes.

Below the nD engine (:mod:`napari_derun.engine.stacks`), the distributed helpers and training, which all
import it; :mod:`napari_derun.api` is the public facade on top. No Qt, no napari; torch lazily.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from psygnal import Signal

__all__ = ["Fuser", "MODELS", "TRAINING_FREE", "WEIGHTS_DIR", "fuse_planes", "list_models", "load_model",
           "register_model", "resolve_device"]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # src/napari_derun/weights
TRAINING_FREE = "admm"
_SESSION: dict[str, tuple[Any, dict]] = {}


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"`` → ``"cuda"`` when available, else ``"mps"``, else ``"cpu"``; others are checked."""
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but PyTorch sees no CUDA GPU; use device='auto' or 'cpu'")
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' was requested but is not available; use device='auto' or 'cpu'")
    elif not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return device


def _shipped() -> dict[str, Path]:
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def list_models() -> list[str]:
    """Names accepted by :func:`load_model`: ``"admm"`` (training-free), shipped weights, session models."""
    return [TRAINING_FREE] + sorted(_shipped()) + sorted(_SESSION)


class _ModelRegistry:
    """``MODELS.changed(name)`` is emitted whenever a session model is registered (from a widget,
    a script or napari's console), so open widgets can list it at once. psygnal, no Qt."""

    changed = Signal(str)


MODELS = _ModelRegistry()


def register_model(name: str, model, info: dict | None = None) -> str:
    """Make an in-memory DeRUN (e.g. just fine-tuned) available by ``name`` for this session.

    Emits ``napari_derun.api.MODELS.changed(name)``: the Fuse widget lists the model at once."""
    if name == TRAINING_FREE or name in _shipped():
        raise ValueError(f"{name!r} is a built-in model name; choose another name")
    _SESSION[name] = (model, dict(info or {}))
    MODELS.changed.emit(name)
    return name


@dataclass
class Fuser:
    """A loaded fusion model: the training-free HIFM/ADMM solver or a DeRUN network.

    ``module`` is a :class:`torch.nn.Module` with one interface, ``module(a, b, return_stages=…,
    callback=…)``: a :class:`~napari_derun.core.hifm.HIFMSolver` (``kind="admm"``, no weights) or a
    :class:`~napari_derun.core.model.DeRUN` (``kind="derun"``), so the engine runs either the same way.
    ``precision`` is chosen when the model is loaded (:func:`load_model`).
    """

    name: str
    kind: str  # "admm" or "derun": what the provenance and the dask model shipping record
    module: Any  # HIFMSolver or DeRUN
    device: str = "cpu"
    source: str = "builtin"
    sha256: str | None = None
    info: dict = field(default_factory=dict)
    precision: str = "fp32"  # "fp32" (reference) or "bf16" (autocast: convolutions in bfloat16)

    @property
    def n_stages(self) -> int:
        return self.module.n_stages

    def provenance(self) -> dict[str, Any]:
        """What produced a result: for ``layer.metadata`` and output files."""
        from .. import __version__

        d: dict[str, Any] = {
            "software": f"napari-derun {__version__}",
            "model": self.name,
            "kind": self.kind,
            "weights": self.source,
            "weights_sha256": self.sha256,
            "device": self.device,
            "precision": self.precision,
            "n_stages": self.n_stages,
        }
        if self.kind == "admm":
            d["hifm_params"] = self.module.params.to_dict()
        else:
            d["num_parameters"] = self.module.num_parameters()
        return d

    def run(self, a, b, return_stages: bool = False, callback: Callable[[int, int], None] | None = None):
        """Fuse torch luminance batches ``(B, 1, H, W)`` in [0, 1] on ``self.device``.

        Returns ``X`` (unclipped) or ``(X, stages)`` with per-stage lists ``Y, X, E, H``.
        ``callback(stage, n_stages)`` is called after each stage; it may raise to cancel.
        With ``precision="bf16"`` the pass runs under ``torch.autocast(bfloat16)`` (convolutions in
        bfloat16, FFT solves in float32); outputs are float32 and within ~1e-2 relative of fp32.
        """
        import torch

        if self.device == "cpu":
            from .._runtime import maybe_tune_cpu_allocator

            maybe_tune_cpu_allocator()  # opt-in (NAPARI_DERUN_MALLOPT=1); the CLI applies it itself

        if self.precision == "bf16":
            dev_type = torch.device(self.device).type
            with torch.autocast(dev_type, dtype=torch.bfloat16):
                out = self._run(a, b, return_stages, callback)
            if return_stages:
                x, st = out
                return x.float(), {k: [t.float() for t in v] for k, v in st.items()}
            return out.float()
        return self._run(a, b, return_stages, callback)

    def _run(self, a, b, return_stages, callback):
        import torch

        with torch.no_grad():
            return self.module(a, b, return_stages=return_stages, callback=callback)


def load_model(model: Any = TRAINING_FREE, device: str = "auto", precision: str | None = None) -> Fuser:
    """Load a fusion model.

    Args:
        model: ``"admm"`` (training-free HIFM solver), a shipped weight name (see
            :func:`list_models`), a session model name, a path to a ``.safetensors``
            checkpoint or to a bioimage.io package exported by napari-derun (``.zip``, folder or
            ``rdf.yaml``, see :mod:`napari_derun.engine.bmz_export`), a :class:`~napari_derun.core.hifm.HIFMParams`
            or :class:`~napari_derun.core.hifm.HIFMSolver`, a
            :class:`~napari_derun.core.model.DeRUN`, or a :class:`Fuser` (moved to ``device``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        precision: ``"fp32"`` (the reference; default) or ``"bf16"`` (faster on CPUs with
            AVX512-BF16 and on GPUs; ~1e-2 relative difference). ``None`` keeps a given
            Fuser's precision.

    Raises:
        ValueError: unknown name; :class:`~napari_derun.io.checkpoint.CheckpointError` for bad files.
    """
    dev = resolve_device(device)
    if precision not in (None, "fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16'; got {precision!r}")
    return _load(model, dev, precision)


def _load(model: Any, dev: str, precision: str | None = None) -> Fuser:
    from ..io.checkpoint import file_sha256, load_checkpoint
    from ..core.hifm import HIFMParams, HIFMSolver
    from ..core.model import DeRUN

    prec = precision or "fp32"
    if isinstance(model, Fuser):
        # a copy: changing the device or precision of this call never changes the caller's Fuser
        # (nor other threads using it); the weights are shared unless they must move device
        import dataclasses

        module = model.module if model.device == dev else copy.deepcopy(model.module).to(dev)
        return dataclasses.replace(model, module=module, device=dev, precision=precision or model.precision)
    if isinstance(model, HIFMParams):
        return Fuser("admm", "admm", HIFMSolver(model), dev, precision=prec)
    if isinstance(model, HIFMSolver):
        return Fuser("admm", "admm", model, dev, precision=prec)
    if isinstance(model, DeRUN):
        return Fuser("derun (in memory)", "derun", model.eval().to(dev), dev, source="in-memory", precision=prec)
    if not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model must be a name, a checkpoint path or a DeRUN; got {type(model).__name__}")
    name = str(model)
    if name == TRAINING_FREE:
        return Fuser(TRAINING_FREE, "admm", HIFMSolver(), dev, precision=prec)
    shipped = _shipped()
    if name in _SESSION:
        net, info = _SESSION[name]
        return Fuser(name, "derun", net.eval().to(dev), dev, source="session", info=info, precision=prec)
    if name in shipped:
        path = shipped[name]
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise ValueError(
                f"unknown model {name!r}: use one of {list_models()} or the path of a .safetensors checkpoint"
            )
        from ..io.bioimage_io import is_bioimageio_package

        if is_bioimageio_package(path):  # a package written by napari-derun export (zip, folder or rdf.yaml)
            from ..io.bioimage_io import load_bioimageio

            net, info = load_bioimageio(path)
            return Fuser(info.get("name") or path.stem, "derun", net.eval().to(dev), dev, source=str(path),
                         sha256=info["bioimageio"]["sha256"], info=info, precision=prec)
        if path.is_dir():
            raise ValueError(f"model {name!r} is a folder without a bioimage.io package (rdf.yaml); give a "
                             f".safetensors checkpoint file, a bioimage.io package or one of {list_models()}")
    net, info, _ = load_checkpoint(path)
    return Fuser(info.get("name") or path.stem, "derun", net.eval().to(dev), dev, source=str(path),
                 sha256=file_sha256(path), info=info, precision=prec)


def fuse_planes(
    fuser: Fuser,
    a,
    b,
    return_stages: bool = False,
    callback: Callable[[int, int], None] | None = None,
):
    """Fuse float32 luminance planes ``(P, H, W)`` in [0, 1] in one batch on ``fuser.device``.

    Returns ``X`` as ``(P, H, W)`` float32 numpy (unclipped) or ``(X, stages)`` where each stage
    entry is a numpy array ``(N, P, H, W)`` (``E``, ``H``: ``(N, P, L, H, W)``).
    """
    import torch

    ta = torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32))[:, None].to(fuser.device)
    tb = torch.as_tensor(np.ascontiguousarray(b, dtype=np.float32))[:, None].to(fuser.device)
    out = fuser.run(ta, tb, return_stages=return_stages, callback=callback)
    if not return_stages:
        return out[:, 0].float().cpu().numpy()
    x, st = out
    stages = {}
    for k, seq in st.items():
        arr = torch.stack(seq).float().cpu().numpy()  # (N, P, C, H, W)
        stages[k] = arr[:, :, 0] if arr.shape[2] == 1 else arr
    return x[:, 0].float().cpu().numpy(), stages
