"""Small evented objects shared by the widgets (psygnal only: no Qt)."""
from __future__ import annotations

from dataclasses import dataclass

from psygnal import Signal, evented


class _ModelBus:
    """Emits ``changed(name)`` when a widget registers a session model (api.register_model)."""

    changed = Signal(str)


MODEL_BUS = _ModelBus()


@evented
@dataclass
class JobStatus:
    """What a widget's background job is doing (for the GUI and for tests)."""

    state: str = "idle"  # idle | running | done | cancelled | error
    message: str = ""
    done: int = 0
    total: int = 0
