"""The state of one training run (:class:`RunState`): what :func:`napari_derun.training.loop.train` carries
from step to step and epoch to epoch, what a checkpoint stores and what a resumed run restores."""
from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from typing import Any

from .config import TrainConfig
from .validation import REFERENCE_METHODS


@dataclass
class RunState:
    """One training run: settings, model and optimizer, data, and the best epoch so far.

    Attributes:
        cfg: the run's settings.
        source: where the start model came from (for the provenance).
        t_start: ``time.perf_counter()`` at the start of this process's part of the run.
        history: one record per epoch done (also those of the run resumed from).
        start_epoch: epochs done before this process started (0, or the resumed checkpoint's epoch).
        best_state: the best weights so far (CPU tensors), or None.
        best_loss: their selection score (lower is better).
        best_record: their epoch's record.
        resumed_from: the checkpoint resumed from, or None.
        extra: the tensors of that checkpoint (optimizer state, best weights).
        prev_info: that checkpoint's info.
        info_init: the scores of the start model, when validated.
        stopped: whether the run was stopped (stop flag or ``max_seconds``).
        step_global: optimiser steps done over the whole run.
    """

    cfg: TrainConfig
    source: str
    t_start: float
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    best_state: dict | None = None
    best_loss: float = math.inf
    best_record: dict | None = None
    resumed_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    prev_info: dict[str, Any] = field(default_factory=dict)
    info_init: dict | None = None
    stopped: bool = False
    step_global: int = 0
    # set up by the loop: the DDP context, the model (and what the step calls), optimizer, data
    ddp: Any = None
    model: Any = None
    net: Any = None
    params: list = field(default_factory=list)
    opt: Any = None
    scaler: Any = None
    use_amp: bool = False
    tr: Any = None
    va: Any = None
    refs: Any = None
    by_rank: bool = False
    steps: int = 0
    total_steps: int = 0

    @property
    def device(self) -> str:
        """The device this rank trains on."""
        return self.ddp.device


@dataclass
class TrainResult:
    """What :func:`train` returns: last and best models, per-epoch history, provenance."""

    model: Any
    best_model: Any
    history: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False

    def save(self, path, best: bool = True, name: str | None = None):
        """Write the best (or last) model as a checkpoint with the training info."""
        from ..io.checkpoint import save_checkpoint

        info = dict(self.info)
        if name:
            info["name"] = name
        return save_checkpoint(path, self.best_model if best else self.model, info)


def optimizer_tensors(opt, params) -> dict[str, Any]:
    """The Adam state of ``params`` as named tensors (``adam/{i}/exp_avg`` …) for a checkpoint."""
    import torch

    ex: dict[str, Any] = {}
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if not st:
            continue
        ex[f"adam/{i}/exp_avg"] = st["exp_avg"]
        ex[f"adam/{i}/exp_avg_sq"] = st["exp_avg_sq"]
        step = st["step"]
        ex[f"adam/{i}/step"] = step if torch.is_tensor(step) else torch.tensor(float(step))
    return ex


def load_optimizer_tensors(opt, params, extra, device) -> None:
    """Restore the Adam state written by :func:`optimizer_tensors`."""
    for i, p in enumerate(params):
        key = f"adam/{i}/exp_avg"
        if key not in extra:
            continue
        opt.state[p] = {
            "step": extra[f"adam/{i}/step"].to(dtype=p.dtype).cpu().reshape(()),
            "exp_avg": extra[key].to(device=device, dtype=p.dtype),
            "exp_avg_sq": extra[f"adam/{i}/exp_avg_sq"].to(device=device, dtype=p.dtype),
        }


def run_info(run: RunState) -> dict[str, Any]:
    """The provenance of the run so far: settings, data, best and initial scores, history."""
    import torch

    from .. import __version__

    cfg = run.cfg
    prev_secs = float(run.prev_info.get("training", {}).get("seconds", 0.0)) if run.resumed_from else 0.0
    return {
        "training": {
            "config": cfg.to_dict(),
            "init": run.source,
            "epochs_done": run.history[-1]["epoch"] if run.history else 0,
            "seconds": round(prev_secs + time.perf_counter() - run.t_start, 2),
            "device": run.device,
            "torch": torch.__version__,
            "software": f"napari-derun {__version__}",
            "python": platform.python_version(),
            "resumed_from": run.resumed_from,
            "loss": ("MSE(X, b) + gamma * MSE(LGDE(X), LGDE(a))" if cfg.objective == "paper" else
                     "w_intensity * L1(X, target) + w_gradient * L1(|grad X|, max(|grad a|, |grad b|)) + "
                     "w_ssim * (1 - (SSIM(X, a) + SSIM(X, b)) / 2) + w_lgde * MSE(LGDE(X), LGDE(a))"
                     + (" + w_salient * L1(X, target) weighted by relu(b - b_floor)" if cfg.w_salient else ""))
                    + " + adjoint_weight * adjoint_loss",
            "objective": cfg.objective,
            "reference_methods": list(REFERENCE_METHODS) if cfg.select == "rank" else [],
        },
        "data": {"train": run.tr.provenance(), "val": run.va.provenance() if run.va is not None else None},
        "metrics": {"best": run.best_record, "initial": run.info_init},
        "history": run.history,
    }
