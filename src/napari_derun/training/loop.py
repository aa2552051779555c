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
import platform
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import numpy as np

from . import ddp as _ddp
from .datasets import PairDataset, _as_dataset, degrade_batch, photometric_batch
from .events import EpochEvent, StepEvent, TrainEvent
from .config import TrainConfig
from .validation import REFERENCE_METHODS, evaluate_pairs, reference_scores

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


# --------------------------------------------------------------------------- config


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


def _optimizer_tensors(opt, params) -> dict[str, Any]:
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


def _load_optimizer_tensors(opt, params, extra, device) -> None:
    for i, p in enumerate(params):
        key = f"adam/{i}/exp_avg"
        if key not in extra:
            continue
        opt.state[p] = {
            "step": extra[f"adam/{i}/step"].to(dtype=p.dtype).cpu().reshape(()),
            "exp_avg": extra[key].to(device=device, dtype=p.dtype),
            "exp_avg_sq": extra[f"adam/{i}/exp_avg_sq"].to(device=device, dtype=p.dtype),
        }


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

    from ..io.checkpoint import load_checkpoint
    from ..engine.registry import resolve_device

    t_start = time.perf_counter()
    cfg = copy.deepcopy(config) if config is not None else TrainConfig()
    history: list[dict] = []
    start_epoch = 0
    best_state = None
    best_loss = math.inf
    best_record: dict[str, Any] | None = None
    resumed_from = None
    extra: dict[str, Any] = {}
    prev_info: dict[str, Any] = {}
    if resume is not None:
        model, prev_info, extra = load_checkpoint(resume)
        st = prev_info.get("training_state") or {}
        if "epoch" not in st:
            raise ValueError(f"{resume} holds no training state to resume from (not written by train(checkpoint_path=...))")
        if config is None:
            cfg = TrainConfig.from_dict(prev_info.get("training", {}).get("config", {}))
        start_epoch = int(st["epoch"])
        history = list(prev_info.get("history", []))
        best_loss = float(st.get("best_loss", math.inf))
        best_record = st.get("best")
        resumed_from = str(resume)
        best_tensors = {k[len("best/"):]: v for k, v in extra.items() if k.startswith("best/")}
        if best_tensors:
            best_state = best_tensors
        source = prev_info.get("training", {}).get("init", "resume")
    else:
        with torch.random.fork_rng(devices=[]):  # seeded init of the (random) PWSM shared convs
            torch.manual_seed(cfg.seed)
            model = _resolve_init(init, cfg.guided, cfg.restore)
        source = _model_source(init)

    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    ddp = _ddp.setup(cfg.device) if cfg.strategy == "ddp" else _ddp.DDPContext(device=resolve_device(cfg.device))
    try:
        return _loop(model, cfg, ddp, train_pairs, val_pairs, callback, stop, checkpoint_path, t_start, history,
                     start_epoch, best_state, best_loss, best_record, resumed_from, extra, prev_info, source)
    finally:
        ddp.close()


def _loop(model, cfg, ddp, train_pairs, val_pairs, callback, stop, checkpoint_path, t_start, history, start_epoch,
          best_state, best_loss, best_record, resumed_from, extra, prev_info, source) -> TrainResult:
    """The epochs of :func:`_train` (every rank of a ``ddp`` job runs it; rank 0 validates and writes)."""
    import torch

    from ..io.checkpoint import save_checkpoint
    from ..core.model import adjoint_loss

    device = ddp.device
    use_amp = bool(cfg.amp) and device.startswith("cuda")
    tr = _as_dataset(train_pairs, "train")
    va = _as_dataset(val_pairs, "val")
    if tr is None:
        raise ValueError("no training pairs given")
    steps = cfg.steps_per_epoch or max(1, math.ceil(len(tr) / cfg.batch))
    total_steps = steps * cfg.epochs

    model = model.to(device).float().train()
    net = ddp.wrap(model)  # what the step calls: DistributedDataParallel when there are several ranks
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr_at(start_epoch))
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr_at(start_epoch), betas=tuple(cfg.betas))
    if extra:
        _load_optimizer_tensors(opt, params, extra, device)
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    if cfg.objective not in ("paper", "fusion"):
        raise ValueError(f"unknown objective {cfg.objective!r}; choose 'paper' or 'fusion'")
    if cfg.select not in ("rank", "loss"):
        raise ValueError(f"select must be 'rank' or 'loss', got {cfg.select!r}")
    cfg.fusion_weights()  # validates the weights and the target
    refs = None
    if not ddp.is_main:
        va = None  # rank 0 validates and selects; the other ranks only train
    if va is not None and cfg.val_metrics and cfg.select == "rank":
        refs = reference_scores(va, cfg.val_limit)
    by_rank = refs is not None and any(refs.values())

    def validate():
        return evaluate_pairs(model, va, device, cfg.gamma, metrics=cfg.val_metrics, config=cfg, references=refs)

    def snapshot():
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    info_init = None
    if va is not None and cfg.val_initial and resumed_from is None:
        ev = validate()
        info_init = {"val_loss": ev["loss"], "metrics": ev.get("metrics"), "rank": ev.get("rank")}
        # the starting model is a candidate too: training never returns something that scores worse
        init_score = _selection_score(ev.get("metrics"), ev.get("rank"), cfg) if by_rank else ev["loss"]
        if init_score is not None and math.isfinite(init_score):
            best_loss, best_state = init_score, snapshot()
            best_record = {"epoch": 0, "train_loss": None, "val_loss": ev["loss"], "metrics": ev.get("metrics"),
                           "rank": ev.get("rank"),
                           "selected_by": _selected_by(by_rank, cfg)}

    stopped = False
    step_global = start_epoch * steps
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        lr = cfg.lr_at(epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([cfg.seed, epoch])
        drng = np.random.default_rng([cfg.seed, epoch, 1])  # degradations: the clean draws stay as they were
        prng = np.random.default_rng([cfg.seed, epoch, 2])  # exposure changes, likewise
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        run_loss, n_done = 0.0, 0
        for s in range(steps):
            if ddp.any(_stop_requested(stop) or bool(cfg.max_seconds and time.perf_counter() - t_start > cfg.max_seconds)):
                stopped = True
                break
            # the global batch (the same draws on every rank); this rank trains on its slice of it
            na, nb, nf, idx = tr.batch(rng, cfg.batch * ddp.world_size, cfg.patch, cfg.augment,
                                       return_floor=True, return_index=True)
            if cfg.photometric > 0:  # new clean pairs (the targets change with them)
                na, nb = photometric_batch(na, nb, cfg.photometric, prng)
            da, db = na, nb
            if cfg.degrade > 0:  # degraded inputs, clean targets
                mods = [tr.modalities[i] or cfg.modalities for i in idx]
                da, db = degrade_batch(na, nb, mods, cfg.degrade, drng, tuple(cfg.degrade_levels))
            if ddp.active:
                part = slice(ddp.rank * cfg.batch, (ddp.rank + 1) * cfg.batch)
                na, nb, nf, da, db = na[part], nb[part], nf[part], da[part], db[part]
            ta = torch.from_numpy(na).to(device)
            tb = torch.from_numpy(nb).to(device)
            ia = ta if da is na else torch.from_numpy(da).to(device)
            ib = tb if db is nb else torch.from_numpy(db).to(device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", enabled=use_amp), _padding(model, cfg.train_pad):
                try:
                    x = net(ia, ib, checkpoint=cfg.checkpointing)
                except FloatingPointError as e:
                    raise FloatingPointError(f"training diverged at epoch {epoch + 1}, step {s + 1} ({e}); "
                                             f"lower the learning rate (lr {lr:g})") from None
            loss, parts = cfg.loss(x.float(), ta, tb, torch.from_numpy(nf).to(device))
            if cfg.adjoint_weight:
                loss = loss + cfg.adjoint_weight * adjoint_loss(model, generator=gen)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            lv = float(loss.detach())
            if not math.isfinite(lv) or not all(bool(torch.isfinite(p).all()) for p in params):
                raise FloatingPointError(
                    f"training diverged ({'loss ' + str(lv) if not math.isfinite(lv) else 'non-finite weights'}) at "
                    f"epoch {epoch + 1}, step {s + 1}; lower the learning rate (lr {lr:g})")
            run_loss += lv
            n_done += 1
            step_global += 1
            if callback is not None and ddp.is_main:
                callback(StepEvent(step=step_global, total_steps=total_steps, epoch=epoch + 1, loss=lv, lr=lr,
                                   parts=dict(parts)))
        if n_done == 0:
            break
        rec: dict[str, Any] = {"epoch": epoch + 1, "epochs": cfg.epochs, "train_loss": run_loss / n_done,
                               "val_loss": None, "metrics": None, "rank": None, "lr": lr, "steps": n_done,
                               "seconds": round(time.perf_counter() - t_start, 2)}
        last_epoch = epoch + 1 == cfg.epochs or stopped
        if va is not None and ((epoch + 1) % max(1, cfg.val_every) == 0 or last_epoch):
            ev = validate()
            rec["val_loss"], rec["metrics"], rec["rank"] = ev["loss"], ev.get("metrics"), ev.get("rank")
        if va is None:
            # no held-back pairs: nothing scores the weights as they are after the epoch (the training
            # loss was measured before each step), so the latest weights are kept, not a "best"
            score = -float(epoch + 1)
        else:
            score = _selection_score(rec["metrics"], rec["rank"], cfg) if by_rank else rec["val_loss"]
        rec["best"] = False
        if score is not None and score < best_loss:
            best_loss, best_state = score, snapshot()
            rec["best"] = True
            best_record = {k: rec[k] for k in ("epoch", "train_loss", "val_loss", "metrics", "rank")}
            best_record["selected_by"] = (_selected_by(by_rank, cfg) if va is not None
                                          else "latest epoch (no validation pairs)")
        history.append(rec)
        if callback is not None and ddp.is_main:
            callback(EpochEvent(**{k: rec[k] for k in ("epoch", "epochs", "train_loss", "val_loss", "metrics", "rank",
                                                       "lr", "best")}))
        if stopped:
            break
        if checkpoint_path is not None and ddp.is_main:
            ex = _optimizer_tensors(opt, params)
            if best_state is not None:
                ex.update({"best/" + k: v for k, v in best_state.items()})
            ck_info = _info(cfg, source, tr, va, history, best_record, info_init, t_start, device, resumed_from, prev_info)
            ck_info["training_state"] = {"epoch": epoch + 1, "best_loss": best_loss, "best": best_record}
            save_checkpoint(checkpoint_path, model, ck_info, ex)
        ddp.barrier()  # the others wait while rank 0 validates and writes

    model.eval()
    best_model = copy.deepcopy(model)
    if best_state is not None:
        best_model.load_state_dict(best_state)
    best_model.eval()
    info = _info(cfg, source, tr, va, history, best_record, info_init, t_start, device, resumed_from, prev_info)
    info["training"]["stopped_early"] = stopped
    if cfg.strategy == "ddp":
        info["ddp"] = {"world_size": ddp.world_size, "rank": ddp.rank, "backend": ddp.backend,
                       "global_batch": cfg.batch * ddp.world_size,
                       "rank_state_sha256": ddp.gather_hashes(model.state_dict())}
    return TrainResult(model=model, best_model=best_model, history=history, info=info, stopped=stopped)


# an epoch whose validation SR is under ``min_sr`` ranks behind every epoch that reaches it
_SR_PENALTY = 1000.0


def _selected_by(by_rank: bool, cfg: TrainConfig) -> str:
    if not by_rank:
        return "validation loss"
    return "validation mean rank" + (f" among epochs with SR >= {cfg.min_sr:g}" if cfg.min_sr is not None else "")


def _selection_score(metrics: dict[str, float] | None, rank: float | None, cfg: TrainConfig) -> float | None:
    """The score ``select='rank'`` minimises: the validation mean rank, behind every epoch that
    keeps at least ``cfg.min_sr`` of the salient image's contrast when a floor is set."""
    if rank is None:
        return None
    if cfg.min_sr is not None:
        sr = (metrics or {}).get("SR")
        if sr is None or not math.isfinite(sr) or sr < cfg.min_sr:
            return rank + _SR_PENALTY
    return rank


def _info(cfg, source, tr, va, history, best_record, info_init, t_start, device, resumed_from, prev_info):
    import torch

    from .. import __version__

    prev_secs = float(prev_info.get("training", {}).get("seconds", 0.0)) if resumed_from else 0.0
    return {
        "training": {
            "config": cfg.to_dict(),
            "init": source,
            "epochs_done": history[-1]["epoch"] if history else 0,
            "seconds": round(prev_secs + time.perf_counter() - t_start, 2),
            "device": device,
            "torch": torch.__version__,
            "software": f"napari-derun {__version__}",
            "python": platform.python_version(),
            "resumed_from": resumed_from,
            "loss": ("MSE(X, b) + gamma * MSE(LGDE(X), LGDE(a))" if cfg.objective == "paper" else
                     "w_intensity * L1(X, target) + w_gradient * L1(|grad X|, max(|grad a|, |grad b|)) + "
                     "w_ssim * (1 - (SSIM(X, a) + SSIM(X, b)) / 2) + w_lgde * MSE(LGDE(X), LGDE(a))"
                     + (" + w_salient * L1(X, target) weighted by relu(b - b_floor)" if cfg.w_salient else ""))
                    + " + adjoint_weight * adjoint_loss",
            "objective": cfg.objective,
            "reference_methods": list(REFERENCE_METHODS) if cfg.select == "rank" else [],
        },
        "data": {"train": tr.provenance(), "val": va.provenance() if va is not None else None},
        "metrics": {"best": best_record, "initial": info_init},
        "history": history,
    }


OBJECTIVE_FIELDS: tuple[str, ...] = ("objective", "target", "w_intensity", "w_gradient", "w_ssim", "w_lgde", "w_salient",
                                     "gamma")


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
    if "objective" not in stored:  # trained before objectives were options: Eq. 14
        return {"objective": "paper"} if stored else {}
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
