"""Small evented objects shared by the widgets (psygnal only: no Qt)."""
from __future__ import annotations

from dataclasses import dataclass

from psygnal import evented


def _model_bus():
    """The core registry's signal holder (``napari_derun.api.MODELS``), imported lazily."""
    from ..api import MODELS

    return MODELS


class _LazyBus:
    @property
    def changed(self):
        return _model_bus().changed


#: widgets listen to ``MODEL_BUS.changed``: the same signal as ``napari_derun.api.MODELS.changed``
MODEL_BUS = _LazyBus()


@evented
@dataclass
class JobStatus:
    """What a widget's background job is doing (for the GUI and for tests)."""

    state: str = "idle"  # idle | running | done | cancelled | error
    message: str = ""
    done: int = 0
    total: int = 0
