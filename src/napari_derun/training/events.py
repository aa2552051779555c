"""Typed training events passed to ``train(..., callback=...)``.

Each event is a frozen dataclass read by attribute (``ev.loss``, ``ev.parts["lgde"]``); ``ev.kind`` tells
the two apart. Epochs are 1-based everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["StepEvent", "EpochEvent", "TrainEvent"]


@dataclass(frozen=True, eq=False)
class StepEvent:
    """After every optimiser step: ``step`` of ``total_steps`` (both 1-based, over the whole run)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    parts: dict[str, float] = field(default_factory=dict)  # the objective's terms
    kind: Literal["step"] = "step"


@dataclass(frozen=True, eq=False)
class EpochEvent:
    """After every epoch; ``val_loss``, ``metrics`` and ``rank`` are None when not validated."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float | None
    metrics: dict[str, float] | None
    rank: float | None
    lr: float
    best: bool
    kind: Literal["epoch"] = "epoch"


TrainEvent = StepEvent | EpochEvent
