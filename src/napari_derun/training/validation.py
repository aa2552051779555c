"""Validation during training: the configured objective's loss and the fusion metrics of a model
on held-back pairs, and its mean rank against reference methods (checkpoint selection)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import math

import numpy as np

from ..evaluation.metrics import MIN_METRIC_SIDE
from .datasets import PairDataset

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig

__all__ = ["REFERENCE_METHODS", "reference_scores", "evaluate_pairs", "combined_rank"]

REFERENCE_METHODS: tuple[str, ...] = ("average", "laplacian", "max", "admm")


def _reference_fusions(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from ..evaluation import baselines

    if name == "admm":
        from ..engine.registry import fuse_planes, load_model

        return np.clip(fuse_planes(load_model("admm", device="cpu"), a[None], b[None])[0], 0.0, 1.0)
    fn = {"average": baselines.average, "laplacian": baselines.laplacian_pyramid, "max": baselines.max_abs}[name]
    return fn(a, b)


def reference_scores(dataset: "PairDataset", limit: int | None = None,
                     methods: Sequence[str] = REFERENCE_METHODS) -> dict[str, list[dict[str, float]]]:
    """Rank metrics of the reference methods on ``dataset`` (pairs ≥ 41 × 41, first ``limit``)."""
    from ..evaluation.metrics_extra import rank_metrics

    out: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for a, b, ra, rb in _scored_pairs(dataset, limit):
        for m in methods:
            out[m].append(rank_metrics(ra * 255.0, rb * 255.0, _reference_fusions(m, a, b) * 255.0))
    return out


def _scored_pairs(dataset: "PairDataset", limit: int | None):
    """``(a, b, clean a, clean b)`` of the pairs ≥ 41 × 41 (the first ``limit``)."""
    pairs = [q for q in zip(dataset.a, dataset.b, dataset.ref_a, dataset.ref_b) if min(q[0].shape) >= MIN_METRIC_SIDE]
    return pairs[:limit] if limit else pairs


def evaluate_pairs(model, dataset: PairDataset, device: str = "cpu", gamma: float = 10.0,
                   metrics: bool = True, config: "TrainConfig | None" = None,
                   references: dict[str, list[dict[str, float]]] | None = None) -> dict[str, Any]:
    """Fuse every pair of ``dataset`` (full images) with ``model`` (a DeRUN) and score it against the
    pairs' clean sources (``dataset.ref_a``, ``ref_b``: the inputs themselves unless they are degraded copies).

    Returns ``{"loss": mean loss of the configured objective, "parts": {name: mean},
    "metrics": {name: mean}, "rank": mean rank or None, "per_pair": [...]}``. Metrics are
    :func:`napari_derun.evaluation.metrics_extra.rank_metrics` on grey 0–255 luminance of the first
    ``config.val_limit`` pairs ≥ 41 × 41 (``None`` when there are none); ``rank`` is the
    model's mean rank among itself and ``references`` (from :func:`reference_scores`), over the nine rank
    metrics on clean pairs and the five reference metrics on degraded copies (:func:`combined_rank`).
    """
    import torch

    from ..evaluation.metrics_extra import mean_ranks, rank_metrics

    from .config import TrainConfig

    cfg = config or TrainConfig(gamma=gamma)
    limit = cfg.val_limit
    was_training = model.training
    model.eval()
    losses, parts_all, per = [], [], []
    n_scored = 0
    with torch.no_grad():
        for i, (name, a, b) in enumerate(zip(dataset.names, dataset.a, dataset.b)):
            ra, rb = dataset.ref_a[i], dataset.ref_b[i]  # the clean sources (= a, b unless degraded copies)
            x = model(torch.from_numpy(a)[None, None].to(device), torch.from_numpy(b)[None, None].to(device))
            ta = torch.from_numpy(ra)[None, None].to(device)
            tb = torch.from_numpy(rb)[None, None].to(device)
            loss, parts = cfg.loss(x, ta, tb, torch.tensor([dataset.b_floor(i)]))
            losses.append(float(loss))
            parts_all.append(parts)
            row = {"name": name, "loss": float(loss), "degraded": ra is not a or rb is not b}
            if metrics and min(a.shape) >= MIN_METRIC_SIDE and (not limit or n_scored < limit):
                f = np.clip(x[0, 0].float().cpu().numpy(), 0.0, 1.0)
                row["metrics"] = rank_metrics(ra * 255.0, rb * 255.0, f * 255.0)
                n_scored += 1
            per.append(row)
    model.train(was_training)
    out: dict[str, Any] = {"loss": float(np.mean(losses)),
                           "parts": {k: float(np.mean([p[k] for p in parts_all])) for k in parts_all[0]},
                           "per_pair": per, "rank": None}
    out.update({k: out["parts"][k] for k in ("pixel", "lgde") if k in out["parts"]})
    scored = [r for r in per if "metrics" in r]
    if metrics:
        out["metrics"] = ({k: float(np.nanmean([r["metrics"][k] for r in scored])) for k in scored[0]["metrics"]}
                          if scored else None)
        if scored and references and all(len(v) == len(scored) for v in references.values()):
            out["rank"] = combined_rank({**references, "model": [r["metrics"] for r in scored]},
                                        [r["degraded"] for r in scored])["model"]
    return out


def combined_rank(table: dict[str, list[dict[str, float]]], degraded: Sequence[bool]) -> dict[str, float]:
    """Mean rank of every method over (pair, metric) entries: the nine rank metrics on clean pairs, the
    five reference metrics (:data:`~napari_derun.evaluation.metrics_extra.REFERENCE_METRICS`) on degraded
    copies, whose no-reference metrics (EN, SD, SF, AG) would reward passing the noise through."""
    from ..evaluation.metrics_extra import RANK_METRICS, REFERENCE_METRICS, mean_ranks

    total: dict[str, float] = {m: 0.0 for m in table}
    weight = 0
    for flag, metrics in ((False, RANK_METRICS), (True, REFERENCE_METRICS)):
        idx = [i for i, d in enumerate(degraded) if bool(d) == flag]
        if not idx:
            continue
        r = mean_ranks({m: [v[i] for i in idx] for m, v in table.items()}, metrics)
        w = len(idx) * len(metrics)
        for m in table:
            total[m] += r[m] * w
        weight += w
    return {m: v / weight for m, v in total.items()} if weight else {m: float("nan") for m in table}


# an epoch whose validation SR is under ``min_sr`` ranks behind every epoch that reaches it
_SR_PENALTY = 1000.0


def selected_by(by_rank: bool, cfg: TrainConfig) -> str:
    """How the best epoch is chosen, in words (for the provenance)."""
    if not by_rank:
        return "validation loss"
    return "validation mean rank" + (f" among epochs with SR >= {cfg.min_sr:g}" if cfg.min_sr is not None else "")


def selection_score(metrics: dict[str, float] | None, rank: float | None, cfg: TrainConfig) -> float | None:
    """The score ``select='rank'`` minimises: the validation mean rank, behind every epoch that
    keeps at least ``cfg.min_sr`` of the salient image's contrast when a floor is set."""
    if rank is None:
        return None
    if cfg.min_sr is not None:
        sr = (metrics or {}).get("SR")
        if sr is None or not math.isfinite(sr) or sr < cfg.min_sr:
            return rank + _SR_PENALTY
    return rank
