"""Scale-out: fusion on a dask.distributed cluster, DeRUN training with torchrun (DDP).

Fusion on a cluster
-------------------
``napari_derun.fuse(a, b, client=client)`` (or ``napari-derun fuse … --scheduler ADDRESS``)
sends blocks of planes to the workers. The model travels as a :class:`ModelSpec`
(built-in name, checkpoint path, or — for in-memory/session models — its config
and state dict), and each worker process loads it once (:func:`resolve_fuser`
keeps a per-process cache).

Training with torchrun
----------------------
::

    torchrun --nproc_per_node=4 -m napari_derun.distributed train --data DIR --out model.safetensors

runs :func:`ddp_train` in every process: ``torch.distributed`` (``nccl`` on GPUs,
``gloo`` on CPU), :class:`~torch.nn.parallel.DistributedDataParallel`, patches
sharded with :class:`~torch.utils.data.DistributedSampler`, checkpoint written by
rank 0 only (with the state-dict hash of every rank, which must agree).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ModelSpec", "model_spec", "resolve_fuser", "state_sha256", "PatchDataset", "ddp_train", "main"]

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
        f = self._load()
        f.precision = self.precision
        return f

    def _load(self):
        from . import registry as api
        from .hifm import HIFMParams

        if self.kind == "admm":
            f = api.load_model(HIFMParams.from_dict(self.hifm), self.device)
            f.name = self.name or "admm"
            return f
        if self.kind == "path":
            return api.load_model(self.path, self.device)
        import torch

        from .model import DeRUN, DeRUNConfig

        net = DeRUN(DeRUNConfig.from_dict(self.config))
        net.load_state_dict({k: torch.from_numpy(v) for k, v in self.state.items()})
        f = api.load_model(net, self.device)
        f.name, f.source, f.info = self.name, "in-memory", dict(self.info)
        return f


def state_sha256(state: dict) -> str:
    """SHA-256 of a state dict (names, shapes, dtypes and float32 bytes, in name order)."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        h.update(k.encode())
        h.update(str(v.shape).encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def model_spec(fuser) -> ModelSpec:
    """The :class:`ModelSpec` of a loaded :class:`~napari_derun.api.Fuser` (device kept as ``"auto"``
    unless it is ``"cpu"``, so GPU workers use their GPU)."""
    spec = _model_spec(fuser)
    spec.precision = fuser.precision
    return spec


def _model_spec(fuser) -> ModelSpec:
    dev = "cpu" if fuser.device == "cpu" else "auto"
    if fuser.kind == "admm":
        d = fuser.module.to_dict()
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


# ----------------------------------------------------------------------------- DDP training
class PatchDataset:
    """A map-style dataset of ``n`` random patches: item ``i`` is drawn from ``rng(seed, i)``,
    so every process sees the same item for the same index (needed for sharding)."""

    def __init__(self, pairs, n: int, patch: int = 128, seed: int = 0, augment: bool = True):
        self.pairs, self.n, self.patch, self.seed, self.augment = pairs, int(n), int(patch), int(seed), augment

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, int(i)])
        a, b = self.pairs.sample(rng, self.patch, self.augment)
        return a[None].astype(np.float32), b[None].astype(np.float32)


def _load_pairs(data):
    from .datasets import PairDataset

    if isinstance(data, str) and data.startswith("sample"):
        from . import sample_data

        return PairDataset([sample_data.gfp_pc(), sample_data.pet_mri()], names=["gfp_pc", "pet_mri"])
    return data if isinstance(data, PairDataset) else PairDataset(data)


def ddp_train(
    data: Any,
    out: str | os.PathLike,
    steps: int = 100,
    batch: int = 4,
    patch: int = 128,
    lr: float = 1e-4,
    gamma: float = 10.0,
    adjoint_weight: float = 0.01,
    seed: int = 0,
    init: Any = "admm",
    backend: str | None = None,
    device: str = "auto",
    log_every: int = 10,
    optimizer: str = "adam",
    objective: str = "fusion",
    target: str = "max",
    guided: bool = True,
) -> dict[str, Any]:
    """Train DeRUN with DistributedDataParallel in a process started by ``torchrun``.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` from the
    environment (a single process without them: world size 1). Each step every rank takes
    ``batch`` patches from its :class:`~torch.utils.data.DistributedSampler` shard of a
    :class:`PatchDataset` (global batch ``batch × world_size``); gradients are averaged by DDP.
    Loss: the objective of :class:`~napari_derun.train_config.TrainConfig` (``objective`` "fusion"
    with ``target`` "max" or "lift", or "paper" with ``gamma``; the same function as ``train``) +
    ``adjoint_weight`` · ``adjoint_loss`` (same random vectors on every rank). ``guided`` builds the
    guided DeRUN when ``init="admm"``. Rank 0 writes the checkpoint ``out`` (:func:`save_checkpoint`),
    whose info holds ``ddp.rank_state_sha256`` — the final state hash of every rank.

    Args:
        data: a folder with ``a/`` and ``b/``, ``"sample"`` (built-in samples) or a ``PairDataset``.
        init: ``"admm"`` (DeRUN.from_hifm) or a model name / checkpoint for :func:`load_model`.
        backend: ``"nccl"`` (default with CUDA) or ``"gloo"`` (default on CPU).
        optimizer: ``"adam"`` (paper: betas 0.9, 0.999) or ``"sgd"``.

    Returns:
        ``{"rank", "world_size", "state_sha256", "losses", "checkpoint"}`` for this rank.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, DistributedSampler

    from .checkpoint import save_checkpoint
    from .model import DeRUN, adjoint_loss
    from .train_config import TrainConfig

    cfg = TrainConfig(objective=objective, target=target, gamma=gamma)
    cfg.fusion_weights()  # validates the objective's settings before any process group is set up
    if objective not in ("paper", "fusion"):
        raise ValueError(f"objective must be 'paper' or 'fusion'; got {objective!r}")

    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    backend = backend or ("nccl" if cuda else "gloo")
    dev = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    initialised = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend)
        initialised = True
    try:
        torch.manual_seed(seed)
        if init == "admm":
            net = DeRUN.from_hifm(guided=guided)
        else:
            from .registry import load_model

            f = load_model(init, "cpu")
            if f.kind != "derun":
                net = DeRUN.from_hifm(f.module)
            else:
                net = f.module
        net = net.to(dev).float().train()
        model = DDP(net, device_ids=[local] if cuda else None, find_unused_parameters=True) if world > 1 else net
        pairs = _load_pairs(data)
        ds = PatchDataset(pairs, n=steps * batch * world, patch=patch, seed=seed)
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(0)
        loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=0, drop_last=True)
        params = [p for p in net.parameters() if p.requires_grad]
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd'; got {optimizer!r}")
        opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
        gen = torch.Generator().manual_seed(seed)
        losses = []
        t0 = time.perf_counter()
        for step, (ta, tb) in enumerate(loader):
            if step >= steps:
                break
            ta, tb = ta.to(dev), tb.to(dev)
            opt.zero_grad(set_to_none=True)
            x = model(ta, tb)
            loss, parts = cfg.loss(x, ta, tb)
            if adjoint_weight:
                loss = loss + adjoint_weight * adjoint_loss(net, generator=gen)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if rank == 0 and log_every and (step + 1) % log_every == 0:
                print(f"step {step + 1}/{steps} loss {losses[-1]:.5f} ({time.perf_counter() - t0:.1f} s)", flush=True)
        digest = state_sha256(net.state_dict())
        hashes = [digest]
        if world > 1:
            hashes = [None] * world
            dist.all_gather_object(hashes, digest)
        ckpt = None
        if rank == 0:
            info = {
                "name": Path(out).stem,
                "training": {"method": "ddp_train", "init": str(init), "steps": steps, "batch_per_rank": batch,
                             "patch": patch, "lr": lr, "optimizer": optimizer, "gamma": gamma, "adjoint_weight": adjoint_weight,
                             "objective": objective, "target": target, "config": cfg.to_dict(),
                             "seed": seed, "losses": losses},
                "data": {"source": getattr(pairs, "source", str(data)), "count": len(pairs)},
                "ddp": {"world_size": world, "backend": backend if world > 1 else None,
                        "rank_state_sha256": hashes},
            }
            ckpt = str(save_checkpoint(out, net, info))
        if world > 1:
            dist.barrier()
        return {"rank": rank, "world_size": world, "state_sha256": digest, "losses": losses, "checkpoint": ckpt}
    finally:
        if initialised:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """``python -m napari_derun.distributed train …`` (meant to be started by ``torchrun``)."""
    p = argparse.ArgumentParser(prog="python -m napari_derun.distributed",
                                description="DeRUN training with DistributedDataParallel (launch with torchrun)")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train DeRUN on DIR/a + DIR/b pairs with DDP")
    t.add_argument("--data", required=True, help="folder with a/ and b/ (same file names), or 'sample'")
    t.add_argument("--out", required=True, help="checkpoint to write (.safetensors), by rank 0")
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--batch", type=int, default=4, help="patches per rank and step")
    t.add_argument("--patch", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--gamma", type=float, default=10.0)
    t.add_argument("--adjoint-weight", type=float, default=0.01)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", default="admm", help="admm, a model name or a checkpoint")
    t.add_argument("--backend", default=None, choices=["nccl", "gloo"])
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--threads", type=int, default=None, help="torch threads per process")
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    t.add_argument("--objective", default="fusion", choices=["fusion", "paper"])
    t.add_argument("--target", default="max", choices=["max", "lift"])
    t.add_argument("--plain", action="store_true", help="a new model without the guided extension")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    res = ddp_train(args.data, args.out, steps=args.steps, batch=args.batch, patch=args.patch, lr=args.lr,
                    gamma=args.gamma, adjoint_weight=args.adjoint_weight, seed=args.seed, init=args.init,
                    backend=args.backend, device=args.device, log_every=args.log_every,
                    optimizer=args.optimizer, objective=args.objective, target=args.target,
                    guided=not args.plain)
    print(f"rank {res['rank']}/{res['world_size']}: state sha256 {res['state_sha256']}"
          + (f" -> {res['checkpoint']}" if res["checkpoint"] else ""), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
