"""napari's side of :func:`napari_derun.fuse` called from napari's console: a progress bar and
notifications. Imports napari only (never the library), so that the core can call it without a cycle."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator


def active() -> bool:
    """Whether a napari viewer is open in this process (the call comes from its console or a plugin)."""
    try:
        import napari

        return napari.current_viewer() is not None
    except Exception:  # noqa: BLE001 - no viewer, no Qt: plain console behaviour
        return False


def notify(message: str) -> None:
    """A napari information notification."""
    from napari.utils.notifications import show_info

    show_info(message)


@contextlib.contextmanager
def progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A napari progress bar in the activity dock, driven by a ``callback(done, total)``.

    napari redraws its progress bar when the value changes, so the viewer shows it even though the
    fusion runs on the GUI thread; updates are limited to 10 per second.
    """
    from napari.utils import progress as napari_progress

    bar = napari_progress(total=0, desc=description)
    last = [0.0]

    def callback(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.1:
            return
        last[0] = now
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield callback
    finally:
        bar.close()
