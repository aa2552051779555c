"""Typed training events passed to ``train(..., callback=...)``.

Each event is a frozen dataclass with attribute access (``ev.loss``) that also reads like the
mapping it replaces (``ev["loss"]``, ``set(ev)``, ``ev.get("val_loss")``), so callbacks written for
dict events keep working. Epochs are 1-based everywhere.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

__all__ = ["StepEvent", "EpochEvent", "TrainEvent"]


class _MappingEvent(Mapping):
    """Mapping view of a dataclass event; ``parts`` (when present) are flattened into the keys."""

    def _keys(self) -> list[str]:
        names = [f.name for f in fields(self) if f.name != "parts"]
        return names + list(getattr(self, "parts", {}) or {})

    def __getitem__(self, key: str) -> Any:
        parts = getattr(self, "parts", None) or {}
        if key in parts:
            return parts[key]
        if key in self._keys():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())


@dataclass(frozen=True, eq=False)
class StepEvent(_MappingEvent):
    """After every optimiser step: ``step`` of ``total_steps`` (both 1-based, over the whole run)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    parts: dict[str, float] = field(default_factory=dict)  # the objective's terms
    kind: Literal["step"] = "step"


@dataclass(frozen=True, eq=False)
class EpochEvent(_MappingEvent):
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
