"""Public scripting API: ``fuse``, ``load_model``, ``list_models``.

The napari widgets, the CLI and the tests all go through these functions.
"""
from __future__ import annotations

import copy

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from psygnal import Signal

from . import preprocess

__all__ = [
    "Fuser",
    "fuse",
    "fuse_planes",
    "load_model",
    "list_models",
    "register_model",
    "resolve_device",
    "WEIGHTS_DIR",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
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
    """A loaded fusion model: the training-free HIFM/ADMM solver or a DeRUN network."""

    name: str
    kind: str  # "admm" or "derun"
    module: Any  # HIFMParams or DeRUN
    device: str = "cpu"
    source: str = "builtin"
    sha256: str | None = None
    info: dict = field(default_factory=dict)
    precision: str = "fp32"  # "fp32" (reference) or "bf16" (autocast: convolutions in bfloat16)

    @property
    def n_stages(self) -> int:
        return self.module.n_iter if self.kind == "admm" else self.module.config.n_stages

    def provenance(self) -> dict[str, Any]:
        """What produced a result: for ``layer.metadata`` and output files."""
        from . import __version__

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
            d["hifm_params"] = self.module.to_dict()
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
            from ._runtime import maybe_tune_cpu_allocator

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

        from . import ops
        from .hifm import admm_iterations

        with torch.no_grad():
            if self.kind == "derun":
                return self.module(a, b, return_stages=return_stages, callback=callback)
            p = self.module
            Hh, Ww = a.shape[-2:]
            pads = ops.default_pad(Hh, Ww, p.pad)
            m = ops.reflect_pad(b - a, pads)
            stages: dict[str, list] = {"Y": [], "X": [], "E": [], "H": []}
            y = None
            for i, st in enumerate(admm_iterations(m, p)):
                y = ops.crop(st["Y"], pads)
                if return_stages:
                    stages["Y"].append(y)
                    stages["X"].append(y + a)
                    if i < p.n_iter - 1:  # as in DeRUN: the last E/H never reach X
                        stages["E"].append(ops.crop(st["E"], pads))
                        stages["H"].append(ops.crop(st["H"], pads))
                if callback is not None:
                    callback(i + 1, p.n_iter)
            x = y + a
            return (x, stages) if return_stages else x


def load_model(model: Any = TRAINING_FREE, device: str = "auto", precision: str | None = None) -> Fuser:
    """Load a fusion model.

    Args:
        model: ``"admm"`` (training-free HIFM solver), a shipped weight name (see
            :func:`list_models`), a session model name, a path to a ``.safetensors``
            checkpoint, a :class:`~napari_derun.hifm.HIFMParams`, a
            :class:`~napari_derun.model.DeRUN`, or a :class:`Fuser` (moved to ``device``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        precision: ``"fp32"`` (the reference; default) or ``"bf16"`` (faster on CPUs with
            AVX512-BF16 and on GPUs; ~1e-2 relative difference). ``None`` keeps a given
            Fuser's precision.

    Raises:
        ValueError: unknown name; :class:`~napari_derun.checkpoint.CheckpointError` for bad files.
    """
    dev = resolve_device(device)
    if precision not in (None, "fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16'; got {precision!r}")
    fz = _load(model, dev)
    if precision is not None:
        fz.precision = precision
    return fz


def _load(model: Any, dev: str) -> Fuser:
    from .checkpoint import file_sha256, load_checkpoint
    from .hifm import HIFMParams
    from .model import DeRUN

    if isinstance(model, Fuser):
        # a copy: changing the device or precision of this call never changes the caller's Fuser
        # (nor other threads using it); the weights are shared unless they must move device
        import dataclasses

        fz = dataclasses.replace(model)
        if model.kind == "derun" and model.device != dev:
            fz.module = copy.deepcopy(model.module).to(dev)
        fz.device = dev
        return fz
    if isinstance(model, HIFMParams):
        return Fuser("admm", "admm", model, dev)
    if isinstance(model, DeRUN):
        return Fuser("derun (in memory)", "derun", model.eval().to(dev), dev, source="in-memory")
    if not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model must be a name, a checkpoint path or a DeRUN; got {type(model).__name__}")
    name = str(model)
    if name == TRAINING_FREE:
        return Fuser(TRAINING_FREE, "admm", HIFMParams(), dev)
    shipped = _shipped()
    if name in _SESSION:
        net, info = _SESSION[name]
        return Fuser(name, "derun", net.eval().to(dev), dev, source="session", info=info)
    if name in shipped:
        path = shipped[name]
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise ValueError(
                f"unknown model {name!r}: use one of {list_models()} or the path of a .safetensors checkpoint"
            )
        if path.is_dir():
            raise ValueError(f"model {name!r} is a folder; give a .safetensors checkpoint file or one of {list_models()}")
    net, info, _ = load_checkpoint(path)
    return Fuser(info.get("name") or path.stem, "derun", net.eval().to(dev), dev, source=str(path),
                 sha256=file_sha256(path), info=info)


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


#: smallest tile side accepted by :func:`fuse` (smaller tiles are all border and take forever)
MIN_TILE = 16


def _check_tiling(tile, overlap) -> None:
    for name, v in (("tile", tile), ("overlap", overlap)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise ValueError(f"{name} must be an integer number of pixels, got {v!r}")
    if tile not in (None, 0) and tile < MIN_TILE:
        raise ValueError(f"tile must be at least {MIN_TILE} pixels (or 0/None for no tiling), got {tile}")
    if overlap is not None:
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0 pixels, got {overlap}")
        if tile and overlap >= tile:
            raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")


def _check_inputs(a, b, axes) -> None:
    """Clear messages for inputs no engine can take (before any model is loaded)."""
    if axes is not None and not isinstance(axes, str) and not (
            isinstance(axes, (tuple, list)) and len(axes) == 2 and all(isinstance(x, str) for x in axes)):
        raise ValueError(f"axes must be a string such as 'ZYX' or a pair of strings, got {axes!r}")
    for name, x in (("a", a), ("b", b)):
        if x is None:
            continue
        if isinstance(x, np.ma.MaskedArray) and np.ma.is_masked(x):
            raise ValueError(f"image {name} is a masked array with masked pixels: fusion would ignore the mask; "
                             "fill them first (x.filled(value)) or pass x.data explicitly")
        nd_ = np.ndim(x)
        if nd_ < 2:
            raise ValueError(f"image {name} has {nd_} dimension(s) (shape {np.shape(x)}): pass a 2-D image (Y, X), "
                             "a colour image (Y, X, 3) or a stack with axes=")
        if axes is None and nd_ == 3 and np.shape(x)[-1] == 2:
            raise ValueError(f"image {name} has shape {np.shape(x)}: 2 channels in the last axis are neither grey "
                             "nor RGB; fuse one channel at a time (x[..., 0]) or give axes= for a stack")


def fuse(
    a,
    b,
    model: Any = TRAINING_FREE,
    device: str = "auto",
    return_stages: bool = False,
    percentiles: tuple[float, float] = preprocess.DEFAULT_PERCENTILES,
    color_from: str = "auto",
    callback: Callable[[int, int], None] | None = None,
    *,
    axes: str | tuple[str, str] | None = None,
    tile: int | None = 1024,
    overlap: int | None = None,
    batch_size: int | None = None,
    cancel=None,
    ranges: tuple[tuple[float, float], tuple[float, float]] | None = None,
    client: Any = None,
    precision: str | None = None,
):
    """Fuse two registered images or stacks with DeRUN or the training-free HIFM solver.

    Args:
        a: structural image (phase contrast, MRI, visible): numpy or dask array of layout
            ``YX``, ``YXC`` (RGB/RGBA), ``ZYX``, ``TYX``, ``TZYX`` (``…C``) or as given by ``axes``;
            uint8, uint16 or float (see :mod:`napari_derun.preprocess` for the normalisation).
        b: salient image (GFP, PET, SPECT, CT, infrared), same size (may be colour when ``a`` is not).
        model: see :func:`load_model` (default ``"admm"``, training-free).
        device: ``"auto"`` (GPU when there is one), ``"cpu"``, ``"cuda"``, ``"mps"``.
        return_stages: also return per-stage intermediates (2-D inputs only; not tiled).
        percentiles: robust range for non-uint8 inputs, computed once for the whole stack.
        color_from: chroma source when both inputs are colour (``"auto"``: ``b``).
        callback: ``callback(done, total)`` progress in tile-stages (for one untiled plane:
            ``(stage, n_stages)``); it may raise to cancel.
        axes: axis letters when the default guess is wrong (e.g. ``"ZYX"`` for a 3-plane
            stack of shape ``(Z, Y, 3)``); a pair ``(axes_a, axes_b)`` for different layouts.
        tile: planes larger than ``tile`` pixels (either side) are fused in overlapping tiles
            (``None``/``0``: never tile).
        overlap: tile overlap in pixels (default :data:`napari_derun.stacks.DEFAULT_OVERLAP`).
        batch_size: planes/tiles per device batch (default 8 on CUDA, 1 otherwise); halved
            (then the tile) on GPU out-of-memory.
        cancel: a :class:`threading.Event`; when set, fusion stops with
            :class:`napari_derun.stacks.FuseCancelled` between stages/tiles.
        ranges: fixed ``((lo_a, hi_a), (lo_b, hi_b))`` intensity ranges instead of percentiles.
        client: a ``dask.distributed.Client``: planes are fused on its workers.
        precision: ``"fp32"`` (default, the reference) or ``"bf16"`` (autocast; ~1.7× faster on
            CPUs with AVX512-BF16, within 1e-2 relative of fp32).

    Returns:
        float32 fused image in [0, 1] with the layout of the inputs (``C`` = 3 when an
        input is colour); a lazy dask array when an input is a dask array. With
        ``return_stages``: ``(fused, stages)`` where ``stages["X"]``/``["Y"]`` are
        ``(N, H, W)`` luminance and ``stages["E"]``/``["H"]`` are ``(N, L, H, W)``.
    """
    from . import stacks

    _check_tiling(tile, overlap)
    _check_inputs(a, b, axes)
    preprocess.check_percentiles(percentiles)
    if ranges is not None:
        ranges = (preprocess.check_range(ranges[0], "ranges[0] (a)"), preprocess.check_range(ranges[1], "ranges[1] (b)"))
    fuser = load_model(model, device, precision)
    if return_stages:
        if stacks._is_dask(a) or stacks._is_dask(b) or np.ndim(a) > 3 or (np.ndim(a) == 3 and axes not in (None, "YXC")):
            raise ValueError("return_stages=True works on one 2-D plane (YX or YXC numpy); for a stack, call "
                             "napari_derun.fuse(a[i], b[i], return_stages=True) on the plane you want to inspect")
        prep = preprocess.prepare_pair(a, b, percentiles=percentiles, color_from=color_from, ranges=ranges)
        x, stages = fuse_planes(fuser, prep.a[None], prep.b[None], return_stages=True, callback=callback)
        stages = {k: v[:, 0] for k, v in stages.items()}
        return preprocess.recolor(x[0], prep.chroma), stages
    if a is None or b is None:
        preprocess.validate_pair(a, b)  # raises with the standard message
    if not stacks._is_dask(a):
        a = np.asarray(a)
    if not stacks._is_dask(b):
        b = np.asarray(b)
    return stacks.fuse_stack(
        a, b, fuser, axes=axes, tile=tile or 0, overlap=stacks.DEFAULT_OVERLAP if overlap is None else overlap,
        batch_size=batch_size, percentiles=percentiles, color_from=color_from, ranges=ranges,
        callback=callback, cancel=cancel, client=client,
    )
