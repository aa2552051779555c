"""What the widgets remember between napari sessions, and the model they offer first.

The preferences are a small JSON file in the user's config folder
(``platformdirs.user_config_dir("napari-derun")``; ``NAPARI_DERUN_CONFIG_DIR`` overrides the folder).

Remembering is a convenience: an unreadable, corrupt or read-only file is ignored, never an error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

FILE_NAME = "widgets.json"


def prefs_path() -> Path:
    """The preferences file (it may not exist yet)."""
    folder = os.environ.get("NAPARI_DERUN_CONFIG_DIR")
    if not folder:
        import platformdirs

        folder = platformdirs.user_config_dir("napari-derun", appauthor=False)
    return Path(folder) / FILE_NAME


#: the largest preferences file read (a real one is a few hundred bytes)
MAX_BYTES = 64 * 1024


def load_prefs() -> dict[str, Any]:
    """The remembered preferences (an empty dict when there are none or the file is unreadable).

    Only a regular file of at most :data:`MAX_BYTES` is read, without blocking: a FIFO, a link to
    ``/dev/zero``, a huge or deeply nested file never keeps a widget from opening."""
    from .._files import read_bounded

    try:
        data = json.loads(read_bounded(prefs_path(), MAX_BYTES, "preferences file").decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def save_pref(key: str, value: Any) -> bool:
    """Remember ``key = value`` (JSON-serialisable); ``False`` when the file cannot be written."""
    from .._files import atomic_writer

    prefs = load_prefs()
    prefs[key] = value
    try:
        with atomic_writer(prefs_path(), "w") as fh:
            json.dump(prefs, fh, indent=1, sort_keys=True)
    except OSError:
        return False
    return True


def default_model(names: Iterable[str | None], available: Sequence[str]) -> str:
    """The model to offer first: the one the user last fused with (remembered across napari sessions
    in :func:`prefs_path`), else the shipped model whose task the layer names suggest (``"GFP"``, ``"PET"``,
    ``"infrared"`` …), else the training-free ``admm``."""
    last = load_prefs().get("model")
    if isinstance(last, str) and last in available:
        return last
    from ..data.task_guess import MODEL_OF_TASK, task_from_names

    model = MODEL_OF_TASK.get(task_from_names(names) or "")
    return model if model in available else "admm"
