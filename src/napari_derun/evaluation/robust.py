"""Robustness to degraded inputs: degrade one input at increasing levels (:mod:`napari_derun.data.degrade`),
fuse with each method and score against the *clean* sources (CSV + metrics-vs-level plot, like the
paper's Fig. 7). Uses the method and scoring machinery of :mod:`napari_derun.evaluation`."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .runner import (DEFAULT_METHODS, DEGRADATION_ALIASES, EVAL_METRICS, _iter_pairs, _progress, _write_csv,
                     close_run, loaded_pairs, method_row, resolve_methods, summarize)
from .metrics import METRIC_NAMES

__all__ = ["ROBUSTNESS_FIELDS", "robustness", "plot_robustness"]

# ----------------------------------------------------------------------------
# robustness to degraded inputs
# ----------------------------------------------------------------------------
def _resolve_degradations(names: Iterable[str] | str) -> list[tuple[str, str]]:
    from ..data.degrade import DEGRADATIONS

    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for n in names:
        key = DEGRADATION_ALIASES.get(n, n)
        if key not in DEGRADATIONS:
            raise ValueError(
                f"unknown degradation {n!r}; choose from {sorted(set(DEGRADATIONS) | set(DEGRADATION_ALIASES))}"
            )
        out.append((n, key))
    if not out:
        raise ValueError("no degradation given")
    return out


ROBUSTNESS_FIELDS = ("degradation", "level", "input", "name", "method") + EVAL_METRICS + ("seconds",)


def robustness(
    dir_or_pairs: str | os.PathLike | Sequence[tuple[str, Any, Any]],
    input: str = "b",
    degradations: Iterable[str] | str = ("haze", "rain", "low_light", "noise", "blur"),
    levels: Iterable[int] | str = (0, 1, 2, 3, 4, 5),
    methods: Iterable[str] | str = DEFAULT_METHODS,
    out_dir: str | os.PathLike | None = None,
    *,
    model: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    crop: int | None = None,
    device: str = "auto",
    progress: bool = True,
    verbose: bool = True,
) -> tuple[list[dict], dict]:
    """Fuse with one input degraded at increasing levels and score against the clean sources.

    For each pair, degradation and level, the luminance plane of ``input`` (``"a"`` or
    ``"b"``) is degraded with :func:`napari_derun.data.degrade.apply` (seeded by
    ``(seed, pair index, degradation index, level)``, so every method sees the same
    degraded image), fused with every method, and the eight metrics are computed
    between the *clean* A and B and the fused image (level 0 = no degradation).

    Args:
        dir_or_pairs: as in :func:`evaluate`.
        input: which input to degrade: ``a`` (structural) or ``b`` (salient).
        degradations: haze, rain, low_light, noise (gaussian_noise) and/or blur; a list or one
            comma-separated string.
        levels: degradation levels 0-5 (0: clean); a list or one comma-separated string.
        methods: as in :func:`evaluate`.
        out_dir: writes ``robustness.csv`` and ``robustness.png`` here.
        model: as in :func:`evaluate`.
        limit: only the first ``limit`` pairs (sorted by name).
        seed: seed of the random degradations (rain streaks, noise).
        crop: centre-crop every pair to at most ``crop`` × ``crop`` pixels first (speed).
        device: as in :func:`evaluate`.
        progress: show a progress bar (on stderr).
        verbose: print problems and skipped methods.

    Returns:
        ``(rows, summary)``: rows with :data:`ROBUSTNESS_FIELDS`; summary
        ``{"table": {(degradation, level, method): stats}, "problems", "messages", "n_pairs"}``.
        With ``out_dir``: ``robustness.csv`` and ``robustness.png`` (one row of
        subplots per degradation, one subplot per metric, one line per method).
    """
    from ..data import degrade

    if input not in ("a", "b"):
        raise ValueError(f"input must be 'a' or 'b', got {input!r}")
    degs = _resolve_degradations(degradations)
    try:
        if isinstance(levels, str):
            levels = [int(x) for x in levels.split(",") if x.strip()]
        levels = [int(x) for x in levels]
    except ValueError:
        raise ValueError(f"levels must be whole numbers in {list(degrade.LEVELS)}, e.g. 0,2,4; got {levels!r}") from None
    if not levels:
        raise ValueError(f"give at least one level in {list(degrade.LEVELS)}")
    for lv in levels:
        if lv not in degrade.LEVELS:
            raise ValueError(f"levels must be in {list(degrade.LEVELS)}, got {lv}")
    meths, messages = resolve_methods(methods, model=model, source=dir_or_pairs)
    pairs, problems = _iter_pairs(dir_or_pairs, limit)
    for msg in messages if verbose else ():
        print(msg, file=sys.stderr)
    rows: list[dict] = []
    n_ok = 0
    total = len(pairs) * len(degs) * len(levels) * len(meths)
    bar = _progress(total, "robustness", progress)
    try:
        for ip, name, a, b in loaded_pairs(pairs, problems, bar, len(degs) * len(levels) * len(meths), crop):
            for idg, (label, key) in enumerate(degs):
                for lv in levels:
                    rng = np.random.default_rng([int(seed), ip, idg, lv])
                    src = a if input == "a" else b
                    d = degrade.apply(src, key, lv, seed=rng).astype(np.float32)
                    da, db = (d, b) if input == "a" else (a, d)
                    for meth in meths:
                        rows.append(method_row(meth, (da, db), (a, b), device, degradation=label, level=lv,
                                               input=input, name=name))
                        bar.update(1)
            n_ok += 1
    finally:
        close_run(bar, problems, verbose)
    table = summarize(rows, group=("degradation", "level", "method"))
    summary = {"table": table, "problems": problems, "messages": messages, "n_pairs": n_ok,
               "methods": [m.label for m in meths], "degradations": [d for d, _ in degs], "levels": levels}
    if out_dir is not None:
        out = Path(out_dir)
        _write_csv(out / "robustness.csv", rows, ROBUSTNESS_FIELDS)
        if rows:
            plot_robustness(summary, out / "robustness.png",
                            title=f"{n_ok} pairs, input {input} degraded")
    return rows, summary


def plot_robustness(summary: dict, path, title: str = "") -> Path:
    """Metrics-vs-level plot (Agg backend): one row per degradation, one column per metric."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    degs, levels, meths = summary["degradations"], summary["levels"], summary["methods"]
    table = summary["table"]
    nrow, ncol = len(degs), len(METRIC_NAMES)
    fig = Figure(figsize=(2.1 * ncol, 1.9 * nrow + 0.6), dpi=80)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for i, dg in enumerate(degs):
        for j, m in enumerate(METRIC_NAMES):
            ax = axes[i][j]
            for meth in meths:
                ys = [table[(dg, lv, meth)][m]["mean"] if (dg, lv, meth) in table else np.nan for lv in levels]
                ax.plot(levels, ys, marker="o", ms=3, lw=1.2, label=meth)
            ax.set_xticks(levels)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(m, fontsize=9)
            if j == 0:
                ax.set_ylabel(dg, fontsize=9)
            if i == nrow - 1:
                ax.set_xlabel("level", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(meths), fontsize=8, frameon=False)
    if title:
        fig.text(0.01, 0.995, title, fontsize=8, va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (1.9 * nrow + 0.6)))
    from .._files import atomic_writer

    path = Path(path)
    with atomic_writer(path) as fh:
        fig.savefig(fh, format=path.suffix.lstrip(".") or "png")
    return path


