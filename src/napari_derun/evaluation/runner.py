"""Benchmark fusion methods on a folder of image pairs.

* :func:`evaluate` fuses every ``a/`` + ``b/`` pair of a data folder with each
  method and scores the result with the metrics of :mod:`napari_derun.evaluation.metrics` and
  :mod:`napari_derun.evaluation.metrics_extra` (per-image CSV + a Markdown mean ± std table laid
  out like the paper's Tables 1-2, with a mean-rank column).
* :mod:`napari_derun.evaluation.robust` (robustness: metrics vs degradation level) and
  :mod:`napari_derun.evaluation.profiling` (parameters, multiply-adds, time) build on it.

Methods are strings: ``"derun"`` (a shipped DeRUN, see :func:`resolve_methods`),
``"admm"`` (training-free HIFM solver), ``"average"``, ``"max"``, ``"laplacian"``,
``"pixel_max"``, ``"overlay"``, ``"copy_a"``, ``"copy_b"`` (:mod:`napari_derun.evaluation.baselines`),
or any other model name / checkpoint path accepted by :func:`napari_derun.engine.registry.load_model`.

All methods fuse the same luminance planes in [0, 1] produced by
:func:`napari_derun.data.preprocess.prepare_pair` (uint8 / 255, other dtypes by the
0.1-99.9 percentile range; colour inputs by their BT.601 luminance); the
metrics are computed on those planes and the fused luminance, times 255.
torch is only imported when a model-based method is used.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..data import preprocess
from ..io import planes as io
from . import baselines, metrics_extra
from .metrics import METRIC_NAMES, all_metrics, check_metric_size

#: every column of the evaluation tables: the paper's eight, then SD, SF, MI, Qabf, SCD and SR
EVAL_METRICS: tuple[str, ...] = METRIC_NAMES + ("SD", "SF", "MI", "Qabf", "SCD", "SR")

__all__ = [
    "DEFAULT_METHODS",
    "BASELINE_METHODS",
    "DEGRADATION_ALIASES",
    "Method",
    "resolve_methods",
    "evaluate",
    "summarize",
    "markdown_table",
    "EVAL_METRICS",
]

DEFAULT_METHODS: tuple[str, ...] = ("derun", "admm", "average", "max", "laplacian")

#: method name -> baseline fusion function on (H, W) float [0, 1] luminance.
BASELINE_METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "average": baselines.average,
    "max": baselines.max_abs,
    "laplacian": baselines.laplacian_pyramid,
    "pixel_max": baselines.pixel_max,
    "overlay": baselines.overlay,
    "copy_a": baselines.copy_a,
    "copy_b": baselines.copy_b,
}

#: short names accepted for the degradations of :mod:`napari_derun.data.degrade`.
DEGRADATION_ALIASES = {"noise": "gaussian_noise"}

#: pairs read to decide which shipped model "derun" is (the most frequent guess among them)
GUESS_PAIRS = 3

CSV_FIELDS = ("name", "method") + EVAL_METRICS + ("seconds",)


@dataclass
class Method:
    """A resolved fusion method: ``label`` as shown in tables, ``kind`` "baseline" or "model"."""

    label: str
    kind: str
    target: Any  # baseline function or model name / checkpoint path
    _fuser: Any = None

    def fuse(self, a: np.ndarray, b: np.ndarray, device: str = "auto") -> np.ndarray:
        """Fuse two (H, W) float32 [0, 1] luminance planes -> (H, W) float32 clipped to [0, 1]."""
        if self.kind == "baseline":
            f = self.target(a, b)
        else:
            from ..engine import registry

            if self._fuser is None:
                self._fuser = registry.load_model(self.target, device)
                # warm-up (allocations, kernel selection) so that timings are steady
                z = np.zeros((1, 32, 32), np.float32)
                registry.fuse_planes(self._fuser, z, z)
            f = registry.fuse_planes(self._fuser, a[None], b[None])[0]
        return np.clip(np.asarray(f, dtype=np.float32), 0.0, 1.0)


def _shipped_models() -> list[str]:
    from ..engine import registry

    return [m for m in registry.list_models() if m != registry.TRAINING_FREE]


def _model_of_content(pairs: Sequence[tuple[str, Any, Any]]) -> tuple[str | None, str]:
    """The shipped model the first pairs' content points to (:mod:`napari_derun.data.task_guess`), and why;
    never the folder's name (a folder called ``ivf3`` or ``pet3`` says nothing)."""
    from collections import Counter

    from ..data.task_guess import analyse_pair

    votes: Counter = Counter()
    reasons = {}
    for _, pa, pb in list(pairs)[:GUESS_PAIRS]:
        try:
            a = io.read_image(pa) if isinstance(pa, (str, os.PathLike)) else np.asarray(pa)
            b = io.read_image(pb) if isinstance(pb, (str, os.PathLike)) else np.asarray(pb)
            g = analyse_pair(a, b)
        except (ValueError, OSError):
            continue
        votes[g.model] += 1
        reasons.setdefault(g.model, g.reason)
    if not votes:
        return None, ""
    model, n = votes.most_common(1)[0]
    return model, f"{n} of the first {sum(votes.values())} pairs look like it: {reasons[model]}"


def resolve_methods(
    methods: Iterable[str] | str = DEFAULT_METHODS,
    model: str | None = None,
    source: Any = None,
) -> tuple[list[Method], list[str]]:
    """Turn method strings into :class:`Method` objects.

    ``"derun"`` uses ``model`` if given, else the shipped model of the task the first pairs of
    ``source`` look like (:mod:`napari_derun.data.task_guess`, from the images, not the folder's name),
    else the first shipped model.  When no DeRUN model is available, ``"derun"`` is skipped and a
    message says so.

    Returns:
        ``(methods, messages)``; ``messages`` explain skipped methods.

    Raises:
        ValueError: an unknown method (not a baseline, model name or checkpoint path),
            an unknown ``model``, or no method left.
    """
    from ..engine import registry

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    out: list[Method] = []
    messages: list[str] = []
    known = None
    for m in methods:
        if m in BASELINE_METHODS:
            out.append(Method(m, "baseline", BASELINE_METHODS[m]))
        elif m == "derun":
            if known is None:
                known = registry.list_models()
            shipped = [x for x in known if x != registry.TRAINING_FREE]
            if model is not None:
                if model not in known and not Path(model).expanduser().exists():
                    raise ValueError(f"unknown model {model!r}: use one of {known} or a checkpoint path")
                out.append(Method("derun", "model", model))
            elif shipped:
                pairs = source
                if isinstance(source, (str, os.PathLike)):
                    pairs = io.find_pairs(Path(source))[0] if Path(source).is_dir() else []
                task_model, why = _model_of_content(pairs or [])
                pick = task_model if task_model in shipped else shipped[0]
                out.append(Method("derun", "model", pick))
                messages.append(f"derun: using model {pick!r}" + (f" ({why})" if task_model in shipped else ""))
            else:
                messages.append(
                    "derun: skipped, no trained DeRUN model is available (no shipped weights and no "
                    "--model); train one with `napari-derun train` or pass --model PATH"
                )
        else:
            if known is None:
                known = registry.list_models()
            if m in known or Path(m).expanduser().is_file():
                label = m if m in known else Path(m).stem
                out.append(Method(label, "model", m))
            else:
                raise ValueError(
                    f"unknown method {m!r}: use derun, {', '.join(BASELINE_METHODS)}, "
                    f"a model name ({', '.join(known)}) or a checkpoint path"
                )
    if not out:
        raise ValueError("no fusion method left to evaluate" + (f" ({'; '.join(messages)})" if messages else ""))
    labels = [x.label for x in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"methods given twice: {labels}")
    return out, messages


def _iter_pairs(dir_or_pairs, limit: int | None) -> tuple[list[tuple[str, Any, Any]], list[str]]:
    if isinstance(dir_or_pairs, (str, os.PathLike)):
        root = Path(dir_or_pairs)
        if not root.is_dir():
            raise FileNotFoundError(f"no such data folder: {root}")
        pairs, problems = io.find_pairs(root)
        pairs = [(n, pa, pb) for n, pa, pb in pairs]
    else:
        pairs, problems = [tuple(p) for p in dir_or_pairs], []
        for p in pairs:
            if len(p) != 3:
                raise ValueError("pairs must be (name, a, b) triples (paths or arrays)")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        pairs = pairs[:limit]
    return pairs, list(problems)


def _load_pair(name: str, a, b) -> tuple[np.ndarray, np.ndarray]:
    """Read (if paths) and prepare one pair -> float32 luminance planes in [0, 1]."""
    arrs = []
    for x in (a, b):
        arrs.append(io.read_image(x) if isinstance(x, (str, os.PathLike)) else np.asarray(x))
    prep = preprocess.prepare_pair(arrs[0], arrs[1])
    return prep.a, prep.b


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="fusion", disable=not enabled, file=sys.stderr, leave=False)


def _check_metric_names(names: Iterable[str] | str | None) -> tuple[str, ...]:
    if names is None:
        return EVAL_METRICS
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = tuple(names)
    bad = [n for n in names if n not in EVAL_METRICS]
    if bad or not names:
        raise ValueError(f"unknown metric(s) {bad}: choose from {', '.join(EVAL_METRICS)}")
    return tuple(n for n in EVAL_METRICS if n in names)  # table order


def loaded_pairs(pairs, problems: list[str], bar, steps: int, crop=None):
    """``(index, name, a, b)`` of each readable pair of ``pairs`` (centre-cropped to ``crop``); the others are
    added to ``problems`` and skipped (``bar`` advanced by their ``steps``)."""
    for i, (name, pa, pb) in enumerate(pairs):
        try:
            a, b = _load_pair(name, pa, pb)
            if crop:
                a, b = center_crop(a, crop), center_crop(b, crop)
            check_metric_size(a)
        except (ValueError, FileNotFoundError, OSError) as exc:
            problems.append(f"{name}: skipped, {exc}")
            bar.update(steps)
            continue
        yield i, name, a, b


def close_run(bar, problems: list[str], verbose: bool) -> None:
    """End a scoring run: close its progress bar, print the skipped pairs when ``verbose``."""
    bar.close()
    if verbose:
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)


def center_crop(x: np.ndarray, size: int | None) -> np.ndarray:
    """The central ``size`` × ``size`` window of ``x`` (``x`` itself if smaller or ``size`` is None)."""
    if not size:
        return x
    h, w = x.shape[:2]
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return x[y0:y0 + size, x0:x0 + size]


def method_row(meth, inputs, clean, device, names: Sequence[str] = EVAL_METRICS, **keys) -> dict:
    """One result row: ``keys``, the method, the metrics of its fusion of ``inputs`` against the ``clean``
    sources, and the seconds the fusion took."""
    t0 = time.perf_counter()
    f = meth.fuse(*inputs, device)
    dt = time.perf_counter() - t0
    row = {**keys, "method": meth.label}
    row.update(_score(*clean, f, names))
    row["seconds"] = dt
    return row


def _score(a: np.ndarray, b: np.ndarray, f: np.ndarray, names: Sequence[str] = EVAL_METRICS) -> dict[str, float]:
    a, b, f = (np.asarray(x, np.float64) * 255.0 for x in (a, b, f))
    out = all_metrics(a, b, f) if all(n in names for n in METRIC_NAMES) else {}
    for name in names:
        if name not in out:
            out[name] = float(metrics_extra.METRIC_FUNCTIONS[name](a, b, f))
    return {n: out[n] for n in EVAL_METRICS if n in out}


def summarize(rows: Sequence[dict], group: Sequence[str] = ("method",)) -> dict:
    """Mean, sample standard deviation (ddof=1; 0 for one image) and count of every
    metric and of ``seconds`` per group (default: per method), in first-seen order.

    Returns ``{key: {metric: {"mean", "std", "n"}}}`` where ``key`` is the method
    name (a tuple when ``group`` has several fields).
    """
    groups: dict[Any, list[dict]] = {}
    for r in rows:
        key = tuple(r[g] for g in group)
        groups.setdefault(key[0] if len(group) == 1 else key, []).append(r)
    out: dict[Any, dict] = {}
    for key, rs in groups.items():
        d = {}
        for m in [k for k in EVAL_METRICS if k in rs[0]] + ["seconds"]:
            v = np.array([float(r[m]) for r in rs], dtype=np.float64)
            mean = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            std = float(np.std(v, ddof=1)) if v.size > 1 and np.all(np.isfinite(v)) else 0.0
            d[m] = {"mean": mean, "std": std, "n": int(v.size)}
        out[key] = d
    return out


_DECIMALS = {"SSIM": 3, "PSNR": 2, "AG": 2, "FMI": 3, "VIF": 3, "EN": 2, "UIQI": 3, "Qp": 3,
             "SD": 2, "SF": 2, "MI": 3, "Qabf": 3, "SCD": 3, "SR": 3}


def method_ranks(rows: Sequence[dict], metrics: Sequence[str] = metrics_extra.RANK_METRICS) -> dict[str, float]:
    """Mean rank of each method (1 = best) over the images every method scored and ``metrics``."""
    by: dict[str, dict[str, dict]] = {}
    for r in rows:
        by.setdefault(r["method"], {})[r["name"]] = r
    if not by:
        return {}
    common = sorted(set.intersection(*(set(v) for v in by.values())))
    if not common or any(m not in rows[0] for m in metrics):
        return {}
    return metrics_extra.mean_ranks({k: [v[n] for n in common] for k, v in by.items()}, metrics)


def _fmt(x: float, nd: int) -> str:
    return "inf" if math.isinf(x) else f"{x:.{nd}f}"


def markdown_table(summary: dict, ranks: dict[str, float] | None = None) -> str:
    """Paper-style table: rows = methods, columns = the metrics (mean ± std) and seconds per
    image, then the mean rank over :data:`~napari_derun.evaluation.metrics_extra.RANK_METRICS` when
    ``ranks`` is given. The best mean of each metric column (all are higher-is-better; SR is
    best at 1) is bold (ties at the shown precision are all bold)."""
    methods = list(summary)
    cols = [m for m in EVAL_METRICS if methods and m in summary[methods[0]]]
    head = "| Method | " + " | ".join(cols) + " | s / image |" + (" Rank |" if ranks else "")
    sep = "|---|" + "---|" * (len(cols) + 1) + ("---|" if ranks else "")
    best = {}
    for m in cols:
        vals = [round(summary[k][m]["mean"], _DECIMALS[m]) for k in methods]
        vals = [-abs(v - 1.0) if m == "SR" else v for v in vals if v == v]
        best[m] = max(vals) if vals else None
    lines = [head, sep]
    for k in methods:
        cells = []
        for m in cols:
            s = summary[k][m]
            txt = f"{_fmt(s['mean'], _DECIMALS[m])} ± {_fmt(s['std'], _DECIMALS[m])}"
            v = round(s["mean"], _DECIMALS[m])
            if len(methods) > 1 and (-abs(v - 1.0) if m == "SR" else v) == best[m]:
                txt = f"**{txt}**"
            cells.append(txt)
        cells.append(f"{summary[k]['seconds']['mean']:.3f}")
        if ranks:
            cells.append(f"{ranks[k]:.2f}" if k in ranks else "")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    from .._files import atomic_writer

    with atomic_writer(path, "w") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fields))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in fields})


def evaluate(
    dir_or_pairs: str | os.PathLike | Sequence[tuple[str, Any, Any]],
    methods: Iterable[str] | str = DEFAULT_METHODS,
    out_dir: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
    *,
    model: str | None = None,
    limit: int | None = None,
    verbose: bool = True,
    metrics: Iterable[str] | str | None = None,
) -> tuple[list[dict], dict]:
    """Fuse every pair with every method and score it with the eight fusion metrics.

    Args:
        dir_or_pairs: a data folder with ``a/`` and ``b/`` (same file stem = pair; png,
            jpg, tif; 8/16-bit; grey or RGB), or a list of ``(name, a, b)`` with paths or arrays.
        methods: derun (the shipped model of the data's task), admm (training-free), average, max,
            laplacian, pixel_max, overlay, copy_a, copy_b, or model names / checkpoint paths; a list or
            one comma-separated string.
        out_dir: if given, writes ``per_image.csv`` (name, method, 8 metrics, seconds)
            and ``summary.md`` (mean ± std table, the problems list).
        device: for model-based methods: auto (a GPU when there is one), cpu, cuda or mps.
        progress: show a tqdm progress bar (on stderr).
        model: the model behind ``derun`` (default: the shipped model of the task the first pairs look
            like, see :func:`resolve_methods`).
        limit: only the first ``limit`` pairs (sorted by name).
        verbose: print problems and skipped methods.
        metrics: the metric columns to compute, a list or one comma-separated string (default all
            14: SSIM, PSNR, AG, FMI, VIF, EN, UIQI, Qp, SD, SF, MI, Qabf, SCD, SR; FMI and Qp take most
            of the time and are not part of the mean rank).

    Returns:
        ``(rows, summary)``: ``rows`` is a list of dicts with the CSV fields;
        ``summary`` is ``{"table": summarize(rows), "markdown": str, "problems": [...],
        "messages": [...], "methods": [labels], "n_pairs": int}``.  Unreadable,
        unpaired, mismatched or too small (< :data:`~napari_derun.evaluation.metrics.MIN_METRIC_SIDE` px) pairs are listed in ``problems``
        and skipped.
    """
    names = _check_metric_names(metrics)
    meths, messages = resolve_methods(methods, model=model, source=dir_or_pairs)
    pairs, problems = _iter_pairs(dir_or_pairs, limit)
    if verbose:
        for msg in messages:
            print(msg, file=sys.stderr)
    rows: list[dict] = []
    n_ok = 0
    bar = _progress(len(pairs) * len(meths), "evaluate", progress)
    try:
        for _, name, a, b in loaded_pairs(pairs, problems, bar, len(meths)):
            for meth in meths:
                rows.append(method_row(meth, (a, b), (a, b), device, names, name=name))
                bar.update(1)
            n_ok += 1
    finally:
        close_run(bar, problems, verbose)
    table = summarize(rows)
    ranks = method_ranks(rows) if len(meths) > 1 else {}
    md = _summary_markdown(dir_or_pairs, meths, table, problems, messages, n_ok, ranks)
    summary = {
        "table": table,
        "ranks": ranks,
        "markdown": md,
        "problems": problems,
        "messages": messages,
        "methods": [m.label for m in meths],
        "n_pairs": n_ok,
    }
    if out_dir is not None:
        out = Path(out_dir)
        _write_csv(out / "per_image.csv", rows, ("name", "method") + names + ("seconds",))
        from .._files import atomic_write_text

        atomic_write_text(out / "summary.md", md)
    return rows, summary


def _summary_markdown(source, meths, table, problems, messages, n_ok, ranks=None) -> str:
    src = str(source) if isinstance(source, (str, os.PathLike)) else "(in-memory pairs)"
    lines = [f"# Fusion evaluation: {src}", "", f"{n_ok} image pairs; mean ± std (ddof=1) over images.", ""]
    models = [f"{m.label} = `{m.target}`" for m in meths if m.kind == "model"]
    if models:
        lines += ["Models: " + ", ".join(models), ""]
    if table:
        lines.append(markdown_table(table, ranks))
        if ranks:
            lines.append("Rank: mean rank (1 = best) over images and " + ", ".join(metrics_extra.RANK_METRICS)
                         + " among the methods of this table. SR (salient contrast retention) is best at 1.")
    else:
        lines += ["No pair could be evaluated.", ""]
    if messages:
        lines += ["## Notes", ""] + [f"- {m}" for m in messages] + [""]
    lines += ["## Problems (skipped)", ""]
    lines += [f"- {p}" for p in problems] if problems else ["- none"]
    return "\n".join(lines) + "\n"
