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
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.checkpoint import state_sha256

__all__ = ["ModelSpec", "model_spec", "resolve_fuser", "state_sha256", "connect", "CONNECT_TIMEOUT"]

#: seconds to reach a scheduler, and then to see at least one worker, before giving up
CONNECT_TIMEOUT = 10.0

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
        from . import registry
        from ..core.hifm import HIFMParams

        if self.kind == "admm":
            f = registry.load_model(HIFMParams.from_dict(self.hifm), self.device, self.precision)
            f.name = self.name or "admm"
            return f
        if self.kind == "path":
            return registry.load_model(self.path, self.device, self.precision)
        import torch

        from ..core.model import DeRUN, DeRUNConfig

        net = DeRUN(DeRUNConfig.from_dict(self.config))
        net.load_state_dict({k: torch.from_numpy(v) for k, v in self.state.items()})
        f = registry.load_model(net, self.device, self.precision)
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


def _probe(address: str, timeout: float) -> None:
    """``OSError`` unless something at a ``tcp://`` address answers like a dask.distributed process:
    a dask server sends its handshake message (an 8-byte length, then msgpack) as soon as it accepts a
    connection. A silent service, or one that sends other bytes (HTTP, SSH…), is refused here instead of
    hanging the client or making it allocate what those bytes would claim as a length."""
    rest = address.split("://", 1)[1] if "://" in address else address
    if "://" in address and not address.startswith("tcp://"):
        return  # tls://, inproc://, ucx://: left to dask (bounded by the thread deadline in connect)
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    try:
        port_n = int(port.split("/")[0])
    except ValueError:
        raise OSError(f"{address!r} is not a scheduler address such as tcp://HOST:8786") from None
    try:
        with socket.create_connection((host or "127.0.0.1", port_n), timeout=timeout) as s:
            s.settimeout(timeout)
            head = b""
            while len(head) < 8:
                chunk = s.recv(8 - len(head))
                if not chunk:
                    break
                head += chunk
    except socket.timeout:
        raise OSError(f"the service at {address} did not answer like a dask scheduler within {timeout:g} s; "
                      "check the address (dask scheduler prints it: tcp://HOST:8786)") from None
    except OSError as e:
        raise OSError(f"cannot reach the dask scheduler at {address} ({e.strerror or e}); start it "
                      "(dask scheduler) or check the address") from None
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
    if not 0 < n < (1 << 20):
        raise OSError(f"the service at {address} is not a dask scheduler (it answered {head[:8]!r}); check the "
                      "address and port (dask scheduler prints it: tcp://HOST:8786)")


def connect(address: str, timeout: float | None = None):
    """A ``dask.distributed.Client`` of the scheduler at ``address`` with at least one worker, within
    ``timeout`` seconds for each step (default :data:`CONNECT_TIMEOUT`), or ``OSError`` saying what to do.

    Every path handed to the workers must be absolute and on a file system they share with this machine
    (they read the inputs and write the outputs themselves).
    """
    timeout = CONNECT_TIMEOUT if timeout is None else float(timeout)
    _probe(address, timeout)
    from dask.distributed import Client

    box: dict[str, Any] = {}

    def make():
        try:
            box["client"] = Client(address, timeout=timeout)
        except BaseException as e:  # noqa: BLE001 - reported below, in the caller's thread
            box["error"] = e

    th = threading.Thread(target=make, name="napari-derun-dask-connect", daemon=True)
    th.start()
    th.join(timeout + 2.0)
    if th.is_alive() or "error" in box:
        e = box.get("error")
        why = f" ({type(e).__name__}: {str(e)[:200]})" if e is not None else ""
        raise OSError(f"cannot connect to the dask scheduler at {address} within {timeout:g} s{why}; start it "
                      "(dask scheduler) or check the address") from None
    client = box["client"]
    try:
        client.wait_for_workers(1, timeout=timeout)
    except Exception:  # noqa: BLE001 - dask raises TimeoutError (or OSError when the scheduler goes away)
        client.close()
        raise OSError(f"the dask scheduler at {address} has no workers (waited {timeout:g} s); start some "
                      f"(dask worker {address}) on machines that share this file system") from None
    return client
