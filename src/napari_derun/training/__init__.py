"""Training and fine-tuning: the loop (:mod:`.loop`: :func:`train`, :func:`finetune`), its settings
(:mod:`.config`: :class:`TrainConfig`), typed events (:mod:`.events`), validation by mean rank
(:mod:`.validation`) and the DistributedDataParallel strategy (:mod:`.ddp`).

``napari_derun.training`` reads like the loop module (``from napari_derun.training import train,
TrainConfig, PairDataset``); names are loaded on first use, so importing the package imports no torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["PairDataset", "TrainConfig", "TrainResult", "train", "finetune", "evaluate_pairs", "reference_scores",
           "REFERENCE_METHODS", "peak_rss_mb"]


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module(".loop", __name__), name)
