"""Benchmark fusion methods on a folder of image pairs.

* :func:`evaluate` fuses every ``a/`` + ``b/`` pair of a data folder with each
  method and scores the result with the eight metrics of
  :mod:`napari_derun.metrics` (per-image CSV + a Markdown mean ± std table laid
  out like the paper's Tables 1-2).
* :func:`robustness` degrades one input at increasing levels
  (:mod:`napari_derun.degrade`) and records the metrics against the *clean*
  sources (CSV + metrics-vs-level plot, like the paper's Fig. 7).
* :func:`profile` counts parameters and multiply-adds and times each method.

Methods are strings: ``"derun"`` (a shipped DeRUN, see :func:`resolve_methods`),
``"admm"`` (training-free HIFM solver), ``"average"``, ``"max"``, ``"laplacian"``
(:mod:`napari_derun.baselines`), or any other model name / checkpoint path
accepted by :func:`napari_derun.api.load_model`.

All methods fuse the same luminance planes in [0, 1] produced by
:func:`napari_derun.preprocess.prepare_pair` (uint8 / 255, other dtypes by the
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

from . import baselines, io, preprocess
from . import metrics_extra
from .metrics import METRIC_NAMES, all_metrics

#: every column of the evaluation tables: the paper's eight, then SD, SF, MI, Qabf, SCD and SR
EVAL_METRICS: tuple[str, ...] = METRIC_NAMES + ("SD", "SF", "MI", "Qabf", "SCD", "SR")

__all__ = [
    "DEFAULT_METHODS",
    "BASELINE_METHODS",
    "DEGRADATION_ALIASES",
    "Method",
    "resolve_methods",
    "evaluate",
    "robustness",
    "summarize",
    "markdown_table",
    "EVAL_METRICS",
    "profile",
    "profile_table",
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

#: short names accepted for the degradations of :mod:`napari_derun.degrade`.
DEGRADATION_ALIASES = {"noise": "gaussian_noise"}

# folder name -> the shipped-model task it belongs to
_TASK_OF_FOLDER = {
    "gfp_pc": "gfp_pc",
    "ivf": "ivf",
    "medical": "medical",
    "pet_mri": "medical",
    "spect_mri": "medical",
    "ct_mri": "medical",
}

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
            from . import api

            if self._fuser is None:
                self._fuser = api.load_model(self.target, device)
                # warm-up (allocations, kernel selection) so that timings are steady
                z = np.zeros((1, 32, 32), np.float32)
                api.fuse_planes(self._fuser, z, z)
            f = api.fuse_planes(self._fuser, a[None], b[None])[0]
        return np.clip(np.asarray(f, dtype=np.float32), 0.0, 1.0)


def _shipped_models() -> list[str]:
    from . import api

    return [m for m in api.list_models() if m != api.TRAINING_FREE]


def _task_of(source: Any) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return _TASK_OF_FOLDER.get(Path(source).resolve().name.lower())
    return None


def resolve_methods(
    methods: Iterable[str] | str = DEFAULT_METHODS,
    model: str | None = None,
    source: Any = None,
) -> tuple[list[Method], list[str]]:
    """Turn method strings into :class:`Method` objects.

    ``"derun"`` uses ``model`` if given, else the shipped model whose name is the
    task of the data folder ``source`` (``gfp_pc``, ``ivf``, ``medical`` for
    pet_mri / spect_mri / ct_mri), else the first shipped model.  When no DeRUN
    model is available, ``"derun"`` is skipped and a message says so.

    Returns:
        ``(methods, messages)``; ``messages`` explain skipped methods.

    Raises:
        ValueError: an unknown method (not a baseline, model name or checkpoint path),
            an unknown ``model``, or no method left.
    """
    from . import api

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
                known = api.list_models()
            shipped = [x for x in known if x != api.TRAINING_FREE]
            if model is not None:
                if model not in known and not Path(model).expanduser().exists():
                    raise ValueError(f"unknown model {model!r}: use one of {known} or a checkpoint path")
                out.append(Method("derun", "model", model))
            elif shipped:
                task = _task_of(source)
                pick = task if task in shipped else shipped[0]
                out.append(Method("derun", "model", pick))
                messages.append(f"derun: using model {pick!r}")
            else:
                messages.append(
                    "derun: skipped, no trained DeRUN model is available (no shipped weights and no "
                    "--model); train one with `napari-derun train` or pass --model PATH"
                )
        else:
            if known is None:
                known = api.list_models()
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


_EXTRA = {"SD": metrics_extra.sd, "SF": metrics_extra.sf, "MI": metrics_extra.mi, "Qabf": metrics_extra.qabf,
          "SCD": metrics_extra.scd, "SR": metrics_extra.sr}


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


def _score(a: np.ndarray, b: np.ndarray, f: np.ndarray, names: Sequence[str] = EVAL_METRICS) -> dict[str, float]:
    from .metrics import METRICS

    a, b, f = (np.asarray(x, np.float64) * 255.0 for x in (a, b, f))
    if all(n in names for n in METRIC_NAMES):
        out = all_metrics(a, b, f)
    else:
        out = {n: float(METRICS[n](a, b, f)) for n in METRIC_NAMES if n in names}
    for name, fn in _EXTRA.items():
        if name in names:
            out[name] = float(fn(a, b, f))
    return out


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
    image, then the mean rank over :data:`~napari_derun.metrics_extra.RANK_METRICS` when
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fields))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in fields})


def evaluate(
    dir_or_pairs,
    methods: Iterable[str] | str = DEFAULT_METHODS,
    out_dir=None,
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
        methods: method strings (see module docstring) or one comma-separated string.
        out_dir: if given, writes ``per_image.csv`` (name, method, 8 metrics, seconds)
            and ``summary.md`` (mean ± std table, the problems list).
        device: for model-based methods.
        progress: show a tqdm progress bar (on stderr).
        model: the model behind ``"derun"`` (default: see :func:`resolve_methods`).
        limit: only the first ``limit`` pairs (sorted by name).
        verbose: print problems and skipped methods.
        metrics: the metric columns to compute (default all of :data:`EVAL_METRICS`; FMI and Qp
            take most of the time and are not part of the mean rank).

    Returns:
        ``(rows, summary)``: ``rows`` is a list of dicts with the CSV fields;
        ``summary`` is ``{"table": summarize(rows), "markdown": str, "problems": [...],
        "messages": [...], "methods": [labels], "n_pairs": int}``.  Unreadable,
        unpaired, mismatched or too small (< 41 px) pairs are listed in ``problems``
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
        for name, pa, pb in pairs:
            try:
                a, b = _load_pair(name, pa, pb)
                if min(a.shape) < 41:
                    raise ValueError(f"image is {a.shape[0]}x{a.shape[1]}; the metrics need at least 41x41")
            except (ValueError, FileNotFoundError, OSError) as exc:
                problems.append(f"{name}: skipped, {exc}")
                bar.update(len(meths))
                continue
            pair_rows = []
            for meth in meths:
                t0 = time.perf_counter()
                f = meth.fuse(a, b, device)
                dt = time.perf_counter() - t0
                row = {"name": name, "method": meth.label}
                row.update(_score(a, b, f, names))
                row["seconds"] = dt
                pair_rows.append(row)
                bar.update(1)
            rows.extend(pair_rows)
            n_ok += 1
    finally:
        bar.close()
    if verbose:
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
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
        (out / "summary.md").write_text(md)
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


# ----------------------------------------------------------------------------
# robustness to degraded inputs
# ----------------------------------------------------------------------------
def _resolve_degradations(names: Iterable[str] | str) -> list[tuple[str, str]]:
    from .degrade import DEGRADATIONS

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


def _center_crop(x: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return x
    h, w = x.shape[:2]
    ch, cw = min(h, size), min(w, size)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return x[y0 : y0 + ch, x0 : x0 + cw]


ROBUSTNESS_FIELDS = ("degradation", "level", "input", "name", "method") + EVAL_METRICS + ("seconds",)


def robustness(
    dir_or_pairs,
    input: str = "b",
    degradations: Iterable[str] | str = ("haze", "rain", "low_light", "noise", "blur"),
    levels: Iterable[int] | str = (0, 1, 2, 3, 4, 5),
    methods: Iterable[str] | str = DEFAULT_METHODS,
    out_dir=None,
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
    ``"b"``) is degraded with :func:`napari_derun.degrade.apply` (seeded by
    ``(seed, pair index, degradation index, level)``, so every method sees the same
    degraded image), fused with every method, and the eight metrics are computed
    between the *clean* A and B and the fused image (level 0 = no degradation).

    Args:
        crop: centre-crop every pair to at most ``crop`` × ``crop`` first (speed).
        Others: as in :func:`evaluate`; ``degradations`` accepts ``noise`` for
            ``gaussian_noise``.

    Returns:
        ``(rows, summary)``: rows with :data:`ROBUSTNESS_FIELDS`; summary
        ``{"table": {(degradation, level, method): stats}, "problems", "messages", "n_pairs"}``.
        With ``out_dir``: ``robustness.csv`` and ``robustness.png`` (one row of
        subplots per degradation, one subplot per metric, one line per method).
    """
    from . import degrade

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
        for ip, (name, pa, pb) in enumerate(pairs):
            try:
                a, b = _load_pair(name, pa, pb)
                a, b = _center_crop(a, crop), _center_crop(b, crop)
                if min(a.shape) < 41:
                    raise ValueError(f"image is {a.shape[0]}x{a.shape[1]}; the metrics need at least 41x41")
            except (ValueError, FileNotFoundError, OSError) as exc:
                problems.append(f"{name}: skipped, {exc}")
                bar.update(len(degs) * len(levels) * len(meths))
                continue
            for idg, (label, key) in enumerate(degs):
                for lv in levels:
                    rng = np.random.default_rng([int(seed), ip, idg, lv])
                    src = a if input == "a" else b
                    d = degrade.apply(src, key, lv, seed=rng).astype(np.float32)
                    da, db = (d, b) if input == "a" else (a, d)
                    for meth in meths:
                        t0 = time.perf_counter()
                        f = meth.fuse(da, db, device)
                        dt = time.perf_counter() - t0
                        row = {"degradation": label, "level": lv, "input": input, "name": name,
                               "method": meth.label}
                        row.update(_score(a, b, f))
                        row["seconds"] = dt
                        rows.append(row)
                        bar.update(1)
            n_ok += 1
    finally:
        bar.close()
    if verbose:
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------
# parameters, multiply-adds and run time
# ----------------------------------------------------------------------------
def _count_torch_macs(fn: Callable[[], Any]) -> dict[str, int]:
    """Run ``fn`` and count multiply-adds of convolutions, matrix products and FFTs.

    Convolutions: output elements × (input channels / groups) × kernel taps.
    Matrix products: M × N × K.  FFTs (radix-2 convention): a real transform of n
    points counts n·log2(n) real multiply-adds, a complex one 2·n·log2(n), n being
    the product of the transformed sizes.  Element-wise operations are not counted.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    counts = {"conv": 0, "matmul": 0, "fft": 0}

    def _fft_n(x, dims) -> int:
        n = 1
        for d in dims:
            n *= int(x.shape[d])
        return n

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            pkt = func.overloadpacket
            if pkt in (aten.convolution, aten._convolution, aten.conv2d):
                x, w = args[0], args[1]
                transposed = bool(args[6]) if pkt is not aten.conv2d and len(args) > 6 else False
                taps = int(np.prod(w.shape[2:]))
                if transposed:
                    counts["conv"] += int(x.numel()) * int(w.shape[1]) * taps
                else:
                    counts["conv"] += int(out.numel()) * int(w.shape[1]) * taps
            elif pkt in (aten.mm, aten.bmm, aten.addmm, aten.baddbmm):
                x, y = (args[1], args[2]) if pkt in (aten.addmm, aten.baddbmm) else (args[0], args[1])
                counts["matmul"] += int(x.numel()) * int(y.shape[-1])
            elif pkt in (aten._fft_r2c, aten._fft_c2r, aten._fft_c2c):
                dims = args[1]
                if pkt is aten._fft_c2r:
                    n = int(np.prod([out.shape[d] for d in dims]))
                else:
                    n = _fft_n(args[0], dims)
                batch = int(out.numel()) // max(1, int(np.prod([out.shape[d] for d in dims])))
                per = n * math.log2(max(n, 2))
                counts["fft"] += int(batch * per * (2 if pkt is aten._fft_c2c else 1))
            return out

    with Counter():
        fn()
    counts["total"] = counts["conv"] + counts["matmul"] + counts["fft"]
    return counts


def _baseline_macs(name: str, h: int, w: int) -> int:
    """Analytic multiply-adds of the baselines (filter taps; comparisons not counted).

    average: H·W.  max: per source two separable Gaussian filters (sigma 2, 17 taps, 2
    passes) = 68·H·W, two sources.  laplacian: per level of size h×w, per source a
    reduce (2 passes × 5 taps) and an expand (2 passes × 5 taps on the up-sampled
    grid) = 20·h·w, plus one expand for the reconstruction = 10·h·w: 50·Σ h·w.
    """
    if name == "average":
        return h * w
    if name == "max":
        return 2 * 68 * h * w
    if name == "laplacian":
        total, hh, ww, side, n = 0, h, w, min(h, w), 0
        while (side + 1) // 2 >= 4 and n < 4:
            side = (side + 1) // 2
            n += 1
        for _ in range(n):
            total += 50 * hh * ww
            hh, ww = (hh + 1) // 2, (ww + 1) // 2
        return total
    raise ValueError(name)


def _profile_pair(size: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    a = ndi.gaussian_filter(rng.random((size, size)), 2.0)
    b = ndi.gaussian_filter(rng.random((size, size)), 6.0)
    a = (a - a.min()) / (np.ptp(a) + 1e-12)
    b = (b - b.min()) / (np.ptp(b) + 1e-12)
    return a.astype(np.float32), b.astype(np.float32)


def profile(
    size: int = 256,
    methods: Iterable[str] | str = DEFAULT_METHODS,
    device: str = "auto",
    repeats: int = 5,
    model: str | None = None,
) -> list[dict]:
    """Parameters, multiply-adds and median fusion time of each method on a ``size``² pair.

    ``"derun"`` is the shipped model (as in :func:`resolve_methods`) or, when none is
    shipped, the default DeRUN architecture initialised from HIFM (same parameter and
    multiply-add counts as a trained one).  Model multiply-adds are counted by
    intercepting the torch operations of one forward pass (see
    :func:`_count_torch_macs`); baselines analytically (:func:`_baseline_macs`).

    Returns:
        rows ``{"method", "params", "macs", "conv_macs", "fft_macs", "median_ms", "note"}``.
    """
    from . import api

    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    a, b = _profile_pair(size)
    rows = []
    for m in methods:
        note = ""
        if m in BASELINE_METHODS:
            fn = BASELINE_METHODS[m]
            run = lambda fn=fn: fn(a, b)  # noqa: E731
            params, macs = 0, {"total": _baseline_macs(m, size, size), "conv": 0, "fft": 0}
            note = "analytic (filter taps)"
        else:
            target = m
            if m == "derun":
                shipped = _shipped_models()
                if model is not None:
                    target = model
                elif shipped:
                    target = shipped[0]
                else:
                    from .model import DeRUN

                    target = DeRUN.from_hifm()
                    note = "no shipped weights: default architecture, untrained"
            fuser = api.load_model(target, device)
            ta, tb = a[None], b[None]
            run = lambda fuser=fuser: api.fuse_planes(fuser, ta, tb)  # noqa: E731
            run()  # warm-up
            macs = _count_torch_macs(run)
            params = fuser.module.num_parameters() if fuser.kind == "derun" else 0
            if fuser.kind == "admm":
                note = f"{fuser.n_stages} ADMM iterations, fixed filters"
            if fuser.device.startswith("cuda"):
                import torch

                def run(fuser=fuser, _sync=torch.cuda.synchronize):  # noqa: E306
                    api.fuse_planes(fuser, ta, tb)
                    _sync()
        run()
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        rows.append({
            "method": m,
            "params": int(params),
            "macs": int(macs["total"]),
            "conv_macs": int(macs.get("conv", 0) + macs.get("matmul", 0)),
            "fft_macs": int(macs.get("fft", 0)),
            "median_ms": 1000.0 * float(np.median(times)),
            "note": note,
        })
    return rows


def profile_table(rows: Sequence[dict], size: int) -> str:
    """Plain-text / Markdown table of :func:`profile` rows."""
    lines = [
        f"| Method ({size}x{size}) | Parameters | Multiply-adds (G) | conv (G) | FFT (G) | median time (ms) | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['params']:,} | {r['macs'] / 1e9:.4f} | {r['conv_macs'] / 1e9:.4f} | "
            f"{r['fft_macs'] / 1e9:.4f} | {r['median_ms']:.1f} | {r['note']} |"
        )
    return "\n".join(lines) + "\n"
