"""napari widgets (the only place where Qt, napari and magicgui are imported).

The widget classes are imported lazily, so that the pure compute module
``napari_derun._widgets._fuse_job`` can be used (and tested) without Qt.
"""
from __future__ import annotations

from typing import Any

__all__ = ["FuseWidget", "FinetuneWidget"]


def __getattr__(name: str) -> Any:
    if name == "FuseWidget":
        from ._fuse_widget import FuseWidget

        return FuseWidget
    if name == "FinetuneWidget":
        from ._finetune_widget import FinetuneWidget

        return FinetuneWidget
    raise AttributeError(f"module 'napari_derun._widgets' has no attribute {name!r}")
