"""Training engine: datasets of registered pairs, the DeRUN training loop and fine-tuning.

No Qt / napari here: the napari widget, the CLI (``napari-derun train``) and scripts
all call :func:`train` / :func:`finetune`.

* :class:`~napari_derun.training.datasets.PairDataset` (re-exported here) holds the pairs.
* :class:`TrainConfig` carries the paper's schedule as defaults (Adam (0.9, 0.999),
  lr 1e-4, batch 4, 150 epochs, lr × 0.9 every 10 epochs after epoch 50) plus the
  adjoint loss of :func:`napari_derun.core.model.adjoint_loss` (weight 0.01), and the
  objective (:mod:`napari_derun.core.objectives`: ``"fusion"`` by default, ``"paper"`` = Eq. 14).
* :func:`train` returns a :class:`TrainResult` (last model, best model by validation
  mean rank (:mod:`napari_derun.training.validation`) or loss, per-epoch history, provenance info).

Reproducibility: patch sampling uses ``numpy.random.default_rng([seed, epoch])`` and
the adjoint loss a ``torch.Generator`` seeded from ``(seed, epoch)``, so a CPU run with
one thread (``num_threads=1``) is bit-for-bit reproducible and a run resumed from a
checkpoint continues exactly as the uninterrupted run would have. With several threads,
parallel reductions in convolutions and FFTs make runs differ at the 1e-5 level.
"""
from __future__ import annotations

import copy
import math
import os
import threading
import time
from typing import Any, Callable, Sequence, Union

import numpy as np

from . import ddp as _ddp
from .datasets import PairDataset, _as_dataset, degrade_batch, photometric_batch
from .restore_only import freeze_all_but_restore, restore_loss
from .events import EpochEvent, StepEvent, TrainEvent
from .config import TrainConfig
from .run_state import RunState, TrainResult, load_optimizer_tensors, optimizer_tensors, run_info
from .validation import REFERENCE_METHODS, evaluate_pairs, reference_scores, selected_by, selection_score

#: training or validation pairs: a PairDataset, a folder with a/ and b/, or a list of (a, b) arrays
Pairs = Union[PairDataset, str, os.PathLike, Sequence[tuple[np.ndarray, np.ndarray]]]
#: a stop request: an Event, or a callable that returns True to stop
StopFlag = Union[threading.Event, Callable[[], bool]]

__all__ = ["PairDataset", "TrainConfig", "TrainResult", "train", "finetune", "evaluate_pairs", "reference_scores",
           "REFERENCE_METHODS", "peak_rss_mb"]


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``resource.getrusage``; Linux/macOS)."""
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


# --------------------------------------------------------------------------- helpers


def _resolve_init(init, guided: bool = False, restore: int = 0):
    import torch

    from ..core.model import DeRUN

    if isinstance(init, DeRUN):
        return _with_restore(copy.deepcopy(init).float(), restore)
    if isinstance(init, torch.nn.Module):
        raise ValueError(f"init must be a DeRUN, got {type(init).__name__}")
    if init is None or init == "admm":
        return DeRUN.from_hifm(guided=guided, restore=restore)
    from ..engine.registry import load_model

    fz = load_model(init, device="cpu")
    if fz.kind != "derun":
        return DeRUN.from_hifm(fz.module.params, restore=restore)
    return _with_restore(copy.deepcopy(fz.module).float().train(), restore)


def _with_restore(model, restore: int):
    """``model`` with a zero-initialised input restoration network of ``restore`` channels added
    (same fusion until trained); unchanged when it has one or ``restore`` is 0."""
    from ..core.model import DeRUN, DeRUNConfig

    if not restore or model.config.restore:
        return model
    out = DeRUN(DeRUNConfig.from_dict({**model.config.to_dict(), "restore": int(restore)}))
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("restore.") for k in missing):
        raise ValueError(f"cannot add a restoration network to this model (keys {missing + unexpected})")
    return out.train(model.training)


def _model_source(init) -> str:
    from ..core.model import DeRUN

    if isinstance(init, DeRUN):
        return "DeRUN (in memory)"
    return str(init or "admm")


class _padding:
    """Temporarily set ``model.config.pad`` (``None``: leave it)."""

    def __init__(self, model, pad):
        self.model, self.pad, self.old = model, pad, None

    def __enter__(self):
        if self.pad is not None:
            self.old = self.model.config.pad
            self.model.config.pad = int(self.pad)

    def __exit__(self, *exc):
        if self.pad is not None:
            self.model.config.pad = self.old
        return False


def _stop_requested(stop) -> bool:
    if stop is None:
        return False
    if hasattr(stop, "is_set"):
        return bool(stop.is_set())
    return bool(stop())


# --------------------------------------------------------------------------- training


def train(train_pairs: Pairs, val_pairs: Pairs | None = None, init: Any = "admm", config: TrainConfig | None = None,
          callback: Callable[[TrainEvent], None] | None = None, stop: StopFlag | None = None,
          checkpoint_path: str | os.PathLike | None = None, resume: str | os.PathLike | None = None) -> TrainResult:
    """Train (or fine-tune) DeRUN on registered pairs; see :func:`_train` for the arguments.

    torch's thread count is restored afterwards when ``config.num_threads`` changed it.
    """
    import torch

    n_threads = torch.get_num_threads()
    try:
        return _train(train_pairs, val_pairs, init, config, callback, stop, checkpoint_path, resume)
    finally:
        if torch.get_num_threads() != n_threads:
            torch.set_num_threads(n_threads)


def _train(
    train_pairs: Pairs,
    val_pairs: Pairs | None = None,
    init: Any = "admm",
    config: TrainConfig | None = None,
    callback: Callable[[TrainEvent], None] | None = None,
    stop: StopFlag | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
) -> TrainResult:
    """Train (or fine-tune) DeRUN on registered pairs.

    Args:
        train_pairs: a :class:`PairDataset`, a folder (``a/``, ``b/``) or a list of ``(a, b)`` arrays.
        val_pairs: held-back pairs (same forms) or ``None``; validation fuses the full images.
        init: ``"admm"`` (model-based start, :meth:`DeRUN.from_hifm`), a shipped or session
            model name, a checkpoint path, or a :class:`~napari_derun.core.model.DeRUN` (copied).
        config: :class:`TrainConfig` (paper recipe by default).
        callback: ``callback(event)`` with a :class:`~napari_derun.training.events.StepEvent` after every
            step and an :class:`~napari_derun.training.events.EpochEvent` after every epoch (frozen
            dataclasses: ``ev.kind``, ``ev.loss``, ``ev.parts``).
        stop: ``threading.Event`` or zero-argument callable; when set, training stops at the
            next step and the best model so far is returned.
        checkpoint_path: written (atomically) after every epoch with the optimizer state.
        resume: a checkpoint written via ``checkpoint_path``: training continues at its epoch
            with the same optimizer state and schedule (``init`` is then ignored).
    """
    import torch

    from ..engine.registry import resolve_device

    t_start = time.perf_counter()
    cfg = copy.deepcopy(config) if config is not None else TrainConfig()
    if resume is not None:
        run, model = _resumed_run(resume, config, cfg, t_start)
    else:
        with torch.random.fork_rng(devices=[]):  # seeded init of the (random) PWSM shared convs
            torch.manual_seed(cfg.seed)
            model = _resolve_init(init, cfg.guided, cfg.restore)
        run = RunState(cfg=cfg, source=_model_source(init), t_start=t_start)

    if run.cfg.num_threads:
        torch.set_num_threads(int(run.cfg.num_threads))
    dev = run.cfg.device
    run.ddp = _ddp.setup(dev) if run.cfg.strategy == "ddp" else _ddp.DDPContext(device=resolve_device(dev))
    try:
        return _loop(run, model, train_pairs, val_pairs, callback, stop, checkpoint_path)
    finally:
        run.ddp.close()


def _resumed_run(resume, config: TrainConfig | None, cfg: TrainConfig, t_start: float) -> tuple[RunState, Any]:
    """The run state and model stored in a checkpoint written by ``train(checkpoint_path=...)``."""
    from ..io.checkpoint import load_checkpoint

    model, prev_info, extra = load_checkpoint(resume)
    st = prev_info.get("training_state") or {}
    if "epoch" not in st:
        raise ValueError(f"{resume} holds no training state to resume from (not written by train(checkpoint_path=...))")
    if config is None:
        cfg = TrainConfig.from_dict(prev_info.get("training", {}).get("config", {}))
    best_tensors = {k[len("best/"):]: v for k, v in extra.items() if k.startswith("best/")}
    run = RunState(cfg=cfg, source=prev_info.get("training", {}).get("init", "resume"), t_start=t_start,
                   history=list(prev_info.get("history", [])), start_epoch=int(st["epoch"]),
                   best_state=best_tensors or None, best_loss=float(st.get("best_loss", math.inf)),
                   best_record=st.get("best"), resumed_from=str(resume), extra=extra, prev_info=prev_info)
    return run, model


def _loop(run: RunState, model, train_pairs, val_pairs, callback, stop, checkpoint_path) -> TrainResult:
    """The epochs of :func:`_train` (every rank of a ``ddp`` job runs it; rank 0 validates and writes)."""
    _setup(run, model, train_pairs, val_pairs)
    _validate_initial(run)
    run.step_global = run.start_epoch * run.steps
    for epoch in range(run.start_epoch, run.cfg.epochs):
        if not _run_epoch(run, epoch, callback, stop, checkpoint_path):
            break
    return _finish(run)


def _setup(run: RunState, model, train_pairs, val_pairs) -> None:
    """Data, model, optimizer (with the resumed state) and the validation references of ``run``."""
    import torch

    cfg, ddp = run.cfg, run.ddp
    device = ddp.device
    run.use_amp = bool(cfg.amp) and device.startswith("cuda")
    run.tr = _as_dataset(train_pairs, "train")
    va = _as_dataset(val_pairs, "val")
    if run.tr is None:
        raise ValueError("no training pairs given")
    if cfg.degrade > 0 and cfg.modalities is None and not any(run.tr.modalities):
        raise ValueError(f"degrade={cfg.degrade:g} needs the pairs' modalities to know which degradations apply: "
                         "give modalities=(structural, salient), e.g. ('phase_contrast', 'fluorescence') "
                         "(CLI: --modalities phase_contrast,fluorescence)")
    run.steps = cfg.steps_per_epoch or max(1, math.ceil(len(run.tr) / cfg.batch))
    run.total_steps = run.steps * cfg.epochs

    run.model = model.to(device).float().train()
    if cfg.train_only == "restore":
        freeze_all_but_restore(run.model, cfg, ddp)
    run.net = ddp.wrap(run.model)  # what the step calls: DistributedDataParallel when there are several ranks
    run.params = params = [p for p in run.model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        run.opt = torch.optim.SGD(params, lr=cfg.lr_at(run.start_epoch))
    else:
        run.opt = torch.optim.Adam(params, lr=cfg.lr_at(run.start_epoch), betas=tuple(cfg.betas))
    if run.extra:
        load_optimizer_tensors(run.opt, params, run.extra, device)
    run.scaler = torch.amp.GradScaler("cuda") if run.use_amp else None

    if cfg.objective not in ("paper", "fusion"):
        raise ValueError(f"unknown objective {cfg.objective!r}; choose 'paper' or 'fusion'")
    if cfg.select not in ("rank", "loss"):
        raise ValueError(f"select must be 'rank' or 'loss', got {cfg.select!r}")
    cfg.fusion_weights()  # validates the weights and the target
    if not ddp.is_main:
        va = None  # rank 0 validates and selects; the other ranks only train
    run.va = va
    if va is not None and cfg.val_metrics and cfg.select == "rank":
        run.refs = reference_scores(va, cfg.val_limit)
    run.by_rank = run.refs is not None and any(run.refs.values())


def _validate(run: RunState) -> dict[str, Any]:
    cfg = run.cfg
    return evaluate_pairs(run.model, run.va, run.device, cfg.gamma, metrics=cfg.val_metrics, config=cfg,
                          references=run.refs)


def _snapshot(run: RunState) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}


def _validate_initial(run: RunState) -> None:
    """Score the start model: it is a candidate too, so training never returns something that scores worse."""
    if run.va is None or not run.cfg.val_initial or run.resumed_from is not None:
        return
    ev = _validate(run)
    run.info_init = {"val_loss": ev["loss"], "metrics": ev.get("metrics"), "rank": ev.get("rank")}
    init_score = selection_score(ev.get("metrics"), ev.get("rank"), run.cfg) if run.by_rank else ev["loss"]
    if init_score is not None and math.isfinite(init_score):
        run.best_loss, run.best_state = init_score, _snapshot(run)
        run.best_record = {"epoch": 0, "train_loss": None, "val_loss": ev["loss"], "metrics": ev.get("metrics"),
                           "rank": ev.get("rank"), "selected_by": selected_by(run.by_rank, run.cfg)}


def _run_epoch(run: RunState, epoch: int, callback, stop, checkpoint_path) -> bool:
    """One epoch: its steps, validation, selection, events and checkpoint; False when the run ends here."""
    import torch

    cfg, ddp = run.cfg, run.ddp
    lr = cfg.lr_at(epoch)
    for g in run.opt.param_groups:
        g["lr"] = lr
    rngs = (np.random.default_rng([cfg.seed, epoch]),
            np.random.default_rng([cfg.seed, epoch, 1]),  # degradations: the clean draws stay as they were
            np.random.default_rng([cfg.seed, epoch, 2]))  # exposure changes, likewise
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    run_loss, n_done = 0.0, 0
    for s in range(run.steps):
        if ddp.any(_stop_requested(stop) or bool(cfg.max_seconds and time.perf_counter() - run.t_start > cfg.max_seconds)):
            run.stopped = True
            break
        lv, parts = _step(run, epoch, s, lr, rngs, gen)
        run_loss += lv
        n_done += 1
        run.step_global += 1
        if callback is not None and ddp.is_main:
            callback(StepEvent(step=run.step_global, total_steps=run.total_steps, epoch=epoch + 1, loss=lv, lr=lr,
                               parts=dict(parts)))
    if n_done == 0:
        return False
    _end_epoch(run, epoch, lr, run_loss / n_done, n_done, callback)
    if run.stopped:
        return False
    if checkpoint_path is not None and ddp.is_main:
        _save_state(run, epoch, checkpoint_path)
    ddp.barrier()  # the others wait while rank 0 validates and writes
    return True


def _step(run: RunState, epoch: int, s: int, lr: float, rngs, gen) -> tuple[float, dict]:
    """One optimiser step on a batch of patches; the loss and its parts."""
    import torch

    from ..core.model import adjoint_loss

    cfg, ddp, device = run.cfg, run.ddp, run.device
    rng, drng, prng = rngs
    # the global batch (the same draws on every rank); this rank trains on its slice of it
    na, nb, nf, idx = run.tr.batch(rng, cfg.batch * ddp.world_size, cfg.patch, cfg.augment,
                                   return_floor=True, return_index=True)
    if cfg.photometric > 0:  # new clean pairs (the targets change with them)
        na, nb = photometric_batch(na, nb, cfg.photometric, prng)
    da, db = na, nb
    if cfg.degrade > 0:  # degraded inputs, clean targets
        mods = [run.tr.modalities[i] or cfg.modalities for i in idx]
        da, db = degrade_batch(na, nb, mods, cfg.degrade, drng, tuple(cfg.degrade_levels))
    if ddp.active:
        part = slice(ddp.rank * cfg.batch, (ddp.rank + 1) * cfg.batch)
        na, nb, nf, da, db = na[part], nb[part], nf[part], da[part], db[part]
    ta = torch.from_numpy(na).to(device)
    tb = torch.from_numpy(nb).to(device)
    ia = ta if da is na else torch.from_numpy(da).to(device)
    ib = tb if db is nb else torch.from_numpy(db).to(device)
    run.opt.zero_grad(set_to_none=True)
    if cfg.train_only == "restore":  # the fusion stages are frozen: the restored inputs against the clean ones
        loss, parts = restore_loss(run.model, ia, ib, ta, tb)
        return _finish_step(run, loss, parts, epoch, s, lr)
    with torch.autocast("cuda", enabled=run.use_amp), _padding(run.model, cfg.train_pad):
        try:
            x = run.net(ia, ib, checkpoint=cfg.checkpointing)
        except FloatingPointError as e:
            raise FloatingPointError(f"training diverged at epoch {epoch + 1}, step {s + 1} ({e}); "
                                     f"lower the learning rate (lr {lr:g})") from None
    loss, parts = cfg.loss(x.float(), ta, tb, torch.from_numpy(nf).to(device))
    if cfg.adjoint_weight:
        loss = loss + cfg.adjoint_weight * adjoint_loss(run.model, generator=gen)
    return _finish_step(run, loss, parts, epoch, s, lr)


def _finish_step(run: RunState, loss, parts: dict, epoch: int, s: int, lr: float) -> tuple[float, dict]:
    """Backward, optimiser step and the divergence check of one step."""
    import torch

    _backward_and_step(run, loss)
    lv = float(loss.detach())
    if not math.isfinite(lv) or not all(bool(torch.isfinite(p).all()) for p in run.params):
        raise FloatingPointError(
            f"training diverged ({'loss ' + str(lv) if not math.isfinite(lv) else 'non-finite weights'}) at "
            f"epoch {epoch + 1}, step {s + 1}; lower the learning rate (lr {lr:g})")
    return lv, parts


def _backward_and_step(run: RunState, loss) -> None:
    import torch

    scaler, opt = run.scaler, run.opt
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    if run.cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.params, run.cfg.grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()


def _end_epoch(run: RunState, epoch: int, lr: float, train_loss: float, n_done: int, callback) -> None:
    """Validate (when due), keep the best weights, record the epoch and send its event."""
    cfg = run.cfg
    rec: dict[str, Any] = {"epoch": epoch + 1, "epochs": cfg.epochs, "train_loss": train_loss,
                           "val_loss": None, "metrics": None, "rank": None, "lr": lr, "steps": n_done,
                           "seconds": round(time.perf_counter() - run.t_start, 2)}
    last_epoch = epoch + 1 == cfg.epochs or run.stopped
    if run.va is not None and ((epoch + 1) % max(1, cfg.val_every) == 0 or last_epoch):
        ev = _validate(run)
        rec["val_loss"], rec["metrics"], rec["rank"] = ev["loss"], ev.get("metrics"), ev.get("rank")
    if run.va is None:
        # no held-back pairs: nothing scores the weights as they are after the epoch (the training
        # loss was measured before each step), so the latest weights are kept, not a "best"
        score = -float(epoch + 1)
    else:
        score = selection_score(rec["metrics"], rec["rank"], cfg) if run.by_rank else rec["val_loss"]
    rec["best"] = False
    if score is not None and score < run.best_loss:
        run.best_loss, run.best_state = score, _snapshot(run)
        rec["best"] = True
        run.best_record = {k: rec[k] for k in ("epoch", "train_loss", "val_loss", "metrics", "rank")}
        run.best_record["selected_by"] = (selected_by(run.by_rank, cfg) if run.va is not None
                                          else "latest epoch (no validation pairs)")
    run.history.append(rec)
    if callback is not None and run.ddp.is_main:
        callback(EpochEvent(**{k: rec[k] for k in ("epoch", "epochs", "train_loss", "val_loss", "metrics", "rank",
                                                   "lr", "best")}))


def _save_state(run: RunState, epoch: int, checkpoint_path) -> None:
    """Write the model with the optimizer state and the best weights, to resume from."""
    from ..io.checkpoint import save_checkpoint

    ex = optimizer_tensors(run.opt, run.params)
    if run.best_state is not None:
        ex.update({"best/" + k: v for k, v in run.best_state.items()})
    ck_info = run_info(run)
    ck_info["training_state"] = {"epoch": epoch + 1, "best_loss": run.best_loss, "best": run.best_record}
    save_checkpoint(checkpoint_path, run.model, ck_info, ex)


def _finish(run: RunState) -> TrainResult:
    """The last and the best model, with the run's provenance."""
    model, ddp = run.model, run.ddp
    model.eval()
    best_model = copy.deepcopy(model)
    if run.best_state is not None:
        best_model.load_state_dict(run.best_state)
    best_model.eval()
    info = run_info(run)
    info["training"]["stopped_early"] = run.stopped
    if run.cfg.strategy == "ddp":
        info["ddp"] = {"world_size": ddp.world_size, "rank": ddp.rank, "backend": ddp.backend,
                       "global_batch": run.cfg.batch * ddp.world_size,
                       "rank_state_sha256": ddp.gather_hashes(model.state_dict())}
    return TrainResult(model=model, best_model=best_model, history=run.history, info=info, stopped=run.stopped)


OBJECTIVE_FIELDS: tuple[str, ...] = ("objective", "target", "w_intensity", "w_gradient", "w_ssim", "w_lgde", "w_salient",
                                     "lift_gain", "gamma")


def _stored_objective(model: Any) -> dict[str, Any]:
    """The objective settings a saved / shipped / session model was trained with (``{}`` if unknown)."""
    from ..core.model import DeRUN

    if isinstance(model, DeRUN) or model is None or model == "admm":
        return {}
    try:
        from ..engine.registry import load_model

        info = load_model(model, device="cpu").info
    except (ValueError, OSError):
        return {}
    stored = (info.get("training") or {}).get("config") or {}
    return {k: stored[k] for k in OBJECTIVE_FIELDS if k in stored}


def finetune(
    pairs: Pairs,
    model: Any = "gfp_pc",
    epochs: int = 10,
    lr: float = 1e-4,
    patch: int = 128,
    val_pairs: Pairs | None = None,
    callback: Callable[[TrainEvent], None] | None = None,
    stop: StopFlag | None = None,
    **config: Any,
) -> TrainResult:
    """Short fine-tuning of a shipped model (or any model spec accepted by :func:`train`'s
    ``init``) on a few pairs; constant learning rate unless ``decay_start`` is given.

    The objective (``objective``, ``target``, the ``w_*`` weights) defaults to the one the
    model was trained with, so fine-tuning continues towards the same kind of fusion; pass
    them to override. Extra keyword arguments are :class:`TrainConfig` fields."""
    config.setdefault("decay_start", epochs)
    for k, v in _stored_objective(model).items():
        config.setdefault(k, v)
    cfg = TrainConfig(epochs=epochs, lr=lr, patch=patch, **config)
    return train(pairs, val_pairs=val_pairs, init=model, config=cfg, callback=callback, stop=stop)
