"""The ``"ddp"`` strategy of :func:`napari_derun.training.train`: the same training loop in every
process that ``torchrun`` starts, with :class:`torch.nn.parallel.DistributedDataParallel` averaging
the gradients.

What changes against one process (everything else is the loop of :func:`~napari_derun.training.train`):

* every rank draws the same *global* batch of ``batch × world_size`` patches from the same seeded
  generator and trains on its own slice of ``batch``, so a DDP run equals a one-process run with
  ``batch × world_size`` patches per step (up to float summation order: a test checks it);
* a stop request (``stop``, ``max_seconds``, Ctrl-C) on any rank stops every rank at the same step;
* validation, selection, callbacks and checkpoint files are rank 0's; the others wait at a barrier;
* the result's info holds ``ddp``: world size, backend and the SHA-256 of every rank's final
  weights (they must agree).

Launch: ``torchrun --nproc_per_node=N -m napari_derun.cli train DIR -o OUT --strategy ddp``.
Without torchrun's environment (``WORLD_SIZE`` unset) the strategy runs as one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

__all__ = ["DDPContext", "setup"]


@dataclass
class DDPContext:
    """Where this process stands in a ``torchrun`` job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: Any) -> Any:
        """The model to call in the training step: DDP-wrapped when there are several ranks."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.startswith("cuda") else None
        # the first stage's mu/theta and the last stage's VFM/SPM do not exist; the guided lift may be
        # unused by some paths: let DDP find unused parameters instead of failing
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (one all-reduce)."""
        if not self.active:
            return bool(flag)
        import torch
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def gather_hashes(self, state: dict) -> list[str]:
        """Every rank's :func:`~napari_derun.io.checkpoint.state_sha256` of ``state`` (rank order)."""
        from ..io.checkpoint import state_sha256

        digest = state_sha256(state)
        if not self.active:
            return [digest]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, digest)
        return [str(h) for h in out]

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def setup(device: str = "auto", backend: str | None = None, timeout_s: float = 3600.0) -> DDPContext:
    """Join the ``torchrun`` job of this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT`` from the environment): ``nccl`` with one GPU per process
    (``cuda:LOCAL_RANK``), else ``gloo`` on the CPU. A process group that the caller already set up
    is used as it is (and left open). ``timeout_s`` bounds a wait at a collective: rank 0 validates
    while the others wait."""
    import torch
    import torch.distributed as dist

    from ..engine.registry import resolve_device

    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device)
    if dev.startswith("cuda"):
        dev = f"cuda:{local}"
        torch.cuda.set_device(dev)
    elif dev != "cpu" and world > 1:
        raise ValueError(f"the ddp strategy runs on CUDA GPUs or on CPUs, not on {dev!r}; use --device cpu")
    ctx = DDPContext(rank=rank, world_size=world, local_rank=local, device=dev)
    if world > 1:
        if dist.is_initialized():
            ctx.backend = dist.get_backend()
        else:
            ctx.backend = backend or ("nccl" if dev.startswith("cuda") else "gloo")
            dist.init_process_group(backend=ctx.backend, timeout=timedelta(seconds=timeout_s))
            ctx.owns_group = True
    return ctx
