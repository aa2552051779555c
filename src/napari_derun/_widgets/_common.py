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


def layer_picker(viewer, label: str, tooltip: str = ""):
    """A picker of the viewer's image layers: napari's own magicgui widget for a
    ``napari.layers.Image`` annotation (``create_widget``), bound to ``viewer`` so that it also lists
    the layers before the widget is docked (napari's default choices only look for a viewer among
    the widget's Qt parents). The widgets' ``reset_choices`` refresh it; napari calls that when a
    layer is added, removed, moved or renamed."""
    import napari
    from magicgui.widgets import create_widget

    def choices(_w=None):
        return [(ly.name, ly) for ly in image_layers(viewer)]

    return create_widget(annotation=napari.layers.Image, label=label,
                         options={"nullable": True, "choices": choices, "tooltip": tooltip or None})


def copy_units(src, kwargs: dict, extra_axes: int = 0) -> None:
    """Copy ``units`` of ``src`` into layer kwargs where napari supports them (napari >= 0.6)."""
    try:
        units = tuple(str(u) for u in src.units)
    except Exception:  # older napari: no units
        return
    kwargs["units"] = ("pixel",) * extra_axes + units


def copy_axis_labels(src, kwargs: dict, extra: tuple[str, ...] = ()) -> None:
    """Axis labels for a new layer: ``extra`` leading labels (``stage``, ``filter``) then those of
    ``src`` (napari shows them on the sliders; layers without labels keep napari's defaults)."""
    try:
        labels = tuple(str(x) for x in src.axis_labels)
    except Exception:  # older napari: no per-layer axis labels
        return
    kwargs["axis_labels"] = tuple(extra) + labels


class JobWidgetMixin:
    """What both widgets share: a :class:`~._state.JobStatus`, one background worker at a time, and a
    status label. The widget defines ``status_label`` and the ``_on_returned`` / ``_on_errored`` /
    ``_on_finished`` slots; ``_start_worker`` wires them and starts the thread."""

    worker = None

    def _init_job(self) -> None:
        from ._state import JobStatus

        self.status = JobStatus()
        self.worker = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _set_status(self, state: str, message: str) -> None:
        self.status.state = state
        self.status.message = message
        self.status_label.value = message

    def _start_worker(self, work) -> None:
        from napari.qt.threading import create_worker

        self.worker = create_worker(work, _start_thread=False)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()


def disconnect_quietly(signal, slot) -> None:
    """Disconnect ``slot`` from ``signal``; nothing when it is not connected (or the object is gone)."""
    try:
        signal.disconnect(slot)
    except Exception:  # noqa: BLE001 - already disconnected, or the Qt object was deleted
        pass
