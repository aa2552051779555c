"""Safe checkpoints: safetensors weights + JSON config, written atomically.

A checkpoint is one ``.safetensors`` file (tensors only: loading never unpickles
code) whose header metadata holds a JSON document::

    {"format": "napari-derun", "format_version": 1,
     "config": {...DeRUNConfig...}, "training": {...}, "data": {...},
     "metrics": {...}, "name": "..."}

The same JSON is also written beside it as ``<file>.json`` for people to read.
Files are written to a temporary name in the same folder and renamed into place,
so an interruption never leaves a half-written checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint_info", "file_sha256",
           "state_sha256"]

FORMAT = "napari-derun"
FORMAT_VERSION = 1
#: the largest JSON document read from a checkpoint's header (a shipped one is about 30 kB)
MAX_METADATA_BYTES = 16 << 20
#: the longest model name kept from a file (it is copied into every output's provenance)
MAX_NAME = 200
#: tensor dtypes of DeRUN weights (safetensors names); anything else is refused, never cast
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class CheckpointError(ValueError):
    """A file is not a usable napari-derun checkpoint (foreign, corrupt or incompatible)."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    from .._files import atomic_write_bytes

    atomic_write_bytes(path, data)


def save_checkpoint(path: str | os.PathLike, model, info: dict[str, Any] | None = None, extra_tensors=None) -> Path:
    """Write ``model`` (a :class:`~napari_derun.core.model.DeRUN`) and ``info`` atomically.

    Args:
        path: target ``.safetensors`` file.
        info: JSON-serialisable metadata (training settings, data provenance, metrics…).
        extra_tensors: optional ``{name: tensor}`` stored under ``extra/`` (e.g. optimiser state).

    Returns:
        The path written.
    """
    from safetensors.torch import save

    path = Path(path)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_dict()}
    doc.update(info or {})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors["extra/" + k] = v.detach().cpu().contiguous()
    data = save(tensors, metadata={"napari_derun": json.dumps(doc)})
    _atomic_write_bytes(path, data)
    _atomic_write_bytes(path.with_name(path.name + ".json"), json.dumps(doc, indent=2).encode())
    return path


def read_checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON document of a checkpoint, without loading its tensors.

    Raises:
        CheckpointError: the file is missing, not safetensors, or not a napari-derun checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several error types for bad headers
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); "
            "pass a checkpoint written by napari-derun (train / fine-tune / Save)"
        ) from None
    raw = meta.get("napari_derun")
    if raw is None:
        raise CheckpointError(
            f"{path} is a safetensors file but not a napari-derun checkpoint (no 'napari_derun' metadata)"
        )
    if len(raw) > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path} has {len(raw):,} bytes of napari-derun metadata, more than the "
                              f"{MAX_METADATA_BYTES:,} a checkpoint holds; refused")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} has corrupt napari-derun metadata: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{path} has napari-derun metadata nested too deeply; refused") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} has corrupt napari-derun metadata (a JSON {type(doc).__name__}, not an "
                              "object); it was not written by napari-derun")
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {str(doc.get('format'))[:80]!r}, expected {FORMAT!r}")
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        doc["name"] = None
    elif isinstance(name, str) and len(name) > MAX_NAME:
        doc["name"] = name[:MAX_NAME] + "…"  # the name goes into every output: never megabytes of it
    version = doc.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path} has an invalid format_version {version!r} (expected an integer)")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer napari-derun (format {doc.get('format_version')}); upgrade napari-derun"
        )
    return doc


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu"):
    """Load a checkpoint as ``(model, info, extra_tensors)``.

    Raises:
        CheckpointError: foreign, corrupt or incompatible file (the message says which).
    """
    from safetensors.torch import load_file

    from ..core.model import DeRUN, DeRUNConfig

    import torch
    from safetensors import safe_open

    doc = read_checkpoint_info(path)
    try:
        cfg = DeRUNConfig.from_dict(doc["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an invalid model config: {_one_line(e)}") from None
    # compare the header's tensor names and shapes with what the config builds, before allocating
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in DeRUN(cfg).state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if not k.startswith("extra/")}
        dtypes = {k: f.get_slice(k).get_dtype() for k in found}
    not_float = sorted(k for k, d in dtypes.items() if d not in FLOAT_DTYPES)
    if not_float:
        raise CheckpointError(
            f"{path} stores weights that are not floating point ({not_float[0]}: {dtypes[not_float[0]]}"
            + (f", and {len(not_float) - 1} more" if len(not_float) > 1 else "") + "); DeRUN weights are float32: "
            "this file was not written by napari-derun (or was converted); refused rather than cast")
    if found != expected:
        missing = sorted(set(expected) - set(found))[:3]
        unexpected = sorted(set(found) - set(expected))[:3]
        wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])[:3]
        raise CheckpointError(
            f"{path} does not match the DeRUN architecture in its config (missing {missing}, "
            f"unexpected {unexpected}, wrong shapes {wrong}); it was not written for this model")
    try:
        tensors = load_file(str(path), device=map_location)
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt: its tensors could not be read ({e})") from None
    extra = {k[len("extra/") :]: v for k, v in tensors.items() if k.startswith("extra/")}
    state = {k: v for k, v in tensors.items() if not k.startswith("extra/")}
    model = DeRUN(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match the DeRUN architecture in its config: {e}") from None
    return model, doc, extra


def _one_line(e: Exception) -> str:
    """An exception's message on one line (a pydantic ValidationError as its messages joined by "; ")."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        try:
            msgs = []
            for x in errors():
                msg = str(x.get("msg", "")).removeprefix("Value error, ")
                loc = ".".join(map(str, x.get("loc") or ()))
                msgs.append(f"{loc}: {msg} (got {str(x.get('input'))[:40]!r})" if loc and loc not in msg else msg)
            if msgs:
                return "; ".join(msgs)
        except Exception:  # noqa: BLE001 - not a pydantic error after all
            pass
    return " ".join(str(e).split())


def state_sha256(state: dict) -> str:
    """SHA-256 of a state dict (names, shapes and bytes, in name order): equal weights, equal hash."""
    import numpy as np

    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        h.update(k.encode())
        h.update(str(v.shape).encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()
