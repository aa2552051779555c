"""Scoring fusions: the metrics (:mod:`.metrics`, :mod:`.metrics_extra`), the baselines
(:mod:`.baselines`), evaluation tables (:mod:`.runner`: :func:`evaluate`), robustness to degradations
(:mod:`.robust`) and parameters / multiply-adds / time (:mod:`.profiling`).

``napari_derun.evaluation`` reads like the runner module (``from napari_derun.evaluation import
evaluate, EVAL_METRICS``); names are loaded on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["evaluate", "resolve_methods", "summarize", "EVAL_METRICS", "DEFAULT_METHODS"]


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module(".runner", __name__), name)
