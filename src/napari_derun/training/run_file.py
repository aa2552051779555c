"""Training run files: one TOML file that says everything about a training run, read by
``napari-derun train --config FILE`` (docs/training.md).

Top-level keys are :class:`~napari_derun.training.config.TrainConfig` fields, named and validated as
there, plus the run settings ``init``, ``out``, ``checkpoint`` and ``name``; the ``[data]`` table
(:class:`DataSettings`) says which pairs to train and validate on. Relative paths in the file
(``out``, ``checkpoint``, an ``init`` that is a file, and ``[data]`` ``root`` and ``splits``) are
relative to the folder of the file itself, so a run file works from any working folder. Unknown
keys are refused with a message that names them.

No torch here: the command line reads and checks the file before importing it.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import TrainConfig

__all__ = ["DataSettings", "RunFile", "RUN_KEYS", "read_run_file", "settings_error"]

#: run settings of a run file (besides the TrainConfig fields and the [data] table)
RUN_KEYS: tuple[str, ...] = ("init", "out", "checkpoint", "name")


class DataSettings(BaseModel):
    """The ``[data]`` table of a run file: which pairs train and validate."""

    model_config = ConfigDict(extra="forbid")

    root: str | None = Field(None, description="data root with one folder (a/, b/) per task, or the training "
                             "folder itself when there are no tasks")
    tasks: list[str] | None = Field(None, min_length=1, description="task folders under root, trained together")
    splits: str | None = Field(None, description="folder of split files <task>.json (train / val / test name "
                               "lists): train on train, validate on val, never read test")
    val_crop: int | None = Field(None, ge=16, description="crop the validation pairs to this central square")
    val_degraded: bool = Field(False, description="validate on degraded copies too, against the clean pairs")
    only: list[str] | None = Field(None, min_length=1, description="train only on the training pairs whose name "
                                   "contains one of these (validation: the whole split)")
    licence: str | None = Field(None, description="licence / provenance note of the data, stored in the output")


@dataclass
class RunFile:
    """A read run file: ``config`` (the TrainConfig fields it sets), ``run`` (the run settings it sets,
    paths made absolute), ``data`` (the ``[data]`` keys it sets, paths made absolute), ``text`` (the file)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    text: str = ""


def settings_error(e: ValidationError, where: dict[str, str] | None = None) -> ValueError:
    """A one-line ``ValueError`` per bad setting of a pydantic error, each named as the user wrote it
    (``where`` maps a field to e.g. ``"--epochs"`` or ``"epochs in run.toml"``)."""
    where = where or {}
    parts = []
    for err in e.errors():
        key = str(err["loc"][0]) if err["loc"] else ""
        name = where.get(key, key)
        msg = err["msg"][0].lower() + err["msg"][1:] if err["msg"] else "invalid"
        got = "" if err["type"] == "missing" else f", got {err['input']!r}"
        parts.append(f"{name}: {msg}{got}")
    return ValueError("; ".join(parts))


def _path(base: Path, p: str) -> str:
    import os

    q = Path(p).expanduser()
    return os.path.normpath(q if q.is_absolute() else base / q)


def read_run_file(path: str | Path) -> RunFile:
    """Read and check a run file (TOML). ``ValueError`` naming the key for an unknown key or a bad value,
    ``FileNotFoundError`` when it does not exist."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"run file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None
    base = path.resolve().parent
    out = RunFile(path=path, text=text)
    fields = TrainConfig.model_fields
    for key, value in doc.items():
        if key == "data":
            if not isinstance(value, dict):
                raise ValueError(f"{path}: data must be a table ([data]), got {value!r}")
            unknown = sorted(set(value) - set(DataSettings.model_fields))
            if unknown:
                raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)} in [data]; allowed: "
                                 f"{', '.join(DataSettings.model_fields)}")
            try:
                DataSettings.model_validate(value)
            except ValidationError as e:
                raise ValueError(f"{path}: " + str(settings_error(e, {k: f"data.{k}" for k in value}))) from None
            out.data = dict(value)
        elif key in RUN_KEYS:
            if not isinstance(value, str):
                raise ValueError(f"{path}: {key} must be a string, got {value!r}")
            out.run[key] = value
        elif key in fields:
            out.config[key] = value
        else:
            raise ValueError(f"{path}: unknown key {key!r}: not a TrainConfig field (see docs/training.md), nor "
                             f"one of {', '.join(RUN_KEYS)}, nor the [data] table")
    try:
        TrainConfig.model_validate(out.config)  # every value checked now, as TrainConfig checks it
    except ValidationError as e:
        raise ValueError(f"{path}: " + str(settings_error(e))) from None
    for key in ("out", "checkpoint"):
        if key in out.run:
            out.run[key] = _path(base, out.run[key])
    init = out.run.get("init")
    if init and (Path(init).suffix or "/" in init or "\\" in init):  # a file, not a model name such as gfp_pc
        out.run["init"] = _path(base, init)
    for key in ("root", "splits"):
        if out.data.get(key):
            out.data[key] = _path(base, out.data[key])
    return out
