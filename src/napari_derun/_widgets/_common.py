"""Qt helpers shared by the widgets."""
from __future__ import annotations

from qtpy.QtCore import QObject, Signal


class ProgressRelay(QObject):
    """Carries progress from a worker thread to the GUI thread (queued signal)."""

    progress = Signal(int, int, str)
    payload = Signal(object)


def image_layers(viewer):
    import napari

    return [ly for ly in viewer.layers if isinstance(ly, napari.layers.Image)]


def copy_units(src, kwargs: dict, extra_axes: int = 0) -> None:
    """Copy ``units`` of ``src`` into layer kwargs where napari supports them (napari >= 0.6)."""
    try:
        units = tuple(str(u) for u in src.units)
    except Exception:  # older napari: no units
        return
    kwargs["units"] = ("pixel",) * extra_axes + units
