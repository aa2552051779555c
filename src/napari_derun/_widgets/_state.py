"""Small evented objects shared by the widgets (psygnal only: no Qt)."""
from __future__ import annotations

from dataclasses import dataclass

from psygnal import evented


@evented
@dataclass
class JobStatus:
    """What a widget's background job is doing (for the GUI and for tests)."""

    state: str = "idle"  # idle | running | done | cancelled | error
    message: str = ""
    done: int = 0
    total: int = 0
