"""Robustness evaluation on the untouched test split (tools/splits/<task>.json, "test"): every method fuses
the test pairs clean and with one input degraded (each degradation of that input's modality, levels 2 and 4);
every fusion is scored against the *clean* sources. The numbers and figures of docs/robustness.md.

    OMP_NUM_THREADS=1 python tools/eval_robust.py --tasks ivf gfp_pc pet_mri spect_mri ct_mri \\
        --model ivf=src/napari_derun/weights/ivf.safetensors ... --clean ivf=old_ivf.safetensors ... \\
        --cache eval_robust/cache.json --out docs/results/robust [--figures docs/images]

Methods: average, max (max-abs rule), laplacian, admm, overlay (napari's additive blend), pixel_max,
copy_a, copy_b, ``clean`` (the clean-trained model), ``restore+clean`` (scikit-image / classical
restoration of the degraded input first, napari_derun.data.restoration, then the clean model), ``auto+clean``
(the product's ``restore="auto"`` on both inputs, told nothing: destriping where an input shows column
stripes, else non-local means where it looks noisy, then the clean model) and
``model`` (the model under test, fed the degraded inputs as they are).

Every (task, condition, pair, method) score is kept in ``--cache`` (JSON), so a re-run with a new model
recomputes only ``model`` rows (``--recompute model``). Per condition the mean rank among all methods
(clean inputs: over the nine rank metrics EN SD SF AG SSIM PSNR UIQI VIF Qabf; degraded inputs: over the
five reference metrics SSIM PSNR UIQI VIF Qabf, since the other four rise with noise), SR and SCD are
reported, and for every method its *drop*: the mean relative loss of the five reference metrics from its own
clean score (%). pixel_max, copy_a and copy_b are scored on clean inputs only (the clean check's references).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPLITS = Path(__file__).resolve().parent / "splits"
TASK_MODEL = {"gfp_pc": "gfp_pc", "pet_mri": "medical", "spect_mri": "medical", "ct_mri": "medical", "ivf": "ivf"}
BASE = ["average", "max", "laplacian", "admm", "overlay", "pixel_max", "copy_a", "copy_b"]
METHODS = BASE + ["clean", "restore+clean", "auto+clean", "model"]
#: scored on clean inputs only (the references of the clean acceptance check), not on degraded ones
CLEAN_ONLY = ("pixel_max", "copy_a", "copy_b")
#: centre crop per task (pixels; medical images are 256 × 256 already); the larger ivf and gfp_pc images
#: are cropped to 192 to keep the run under an hour on two cores
CROP = {"ivf": 192, "gfp_pc": 192}


def split_pairs(task: str, data: Path, crop: int, split: str = "test"):
    """The pairs of a split (``test``: to report; ``val``: to decide) as float32 luminance planes,
    centre-cropped to ``crop``."""
    from napari_derun.training.datasets import PairDataset

    names = set(json.loads((SPLITS / f"{task}.json").read_text())[split])
    ds = PairDataset(data / task, select=lambda i, n: n in names)

    def c(x):
        h, w = x.shape
        y0, x0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        return np.ascontiguousarray(x[y0:y0 + crop, x0:x0 + crop])

    return [(n, c(a), c(b)) for n, a, b in zip(ds.names, ds.a, ds.b)]


def conditions(task: str, levels):
    from napari_derun.data.degrade import MODALITIES, TASK_MODALITIES

    ma, mb = TASK_MODALITIES[task]
    out = [("clean", None, None, 0)]
    for side, mod in (("a", ma), ("b", mb)):
        for deg in MODALITIES[mod]:
            for lv in levels:
                out.append((f"{side}:{deg}:{lv}", side, deg, lv))
    return out


class Fusers:
    def __init__(self, models: dict, clean: dict):
        from napari_derun.engine.registry import load_model

        self.load = load_model
        self.models, self.clean, self.cache = models, clean, {}

    def _fuse(self, spec, a, b):
        from napari_derun.engine.registry import fuse_planes

        if spec not in self.cache:
            self.cache[spec] = self.load(spec, device="cpu")
        return np.clip(fuse_planes(self.cache[spec], a[None], b[None])[0], 0.0, 1.0)

    def fuse(self, method: str, task: str, a, b, deg: dict):
        from napari_derun.evaluation import baselines as B
        from napari_derun.data.restoration import restore_then_fuse

        if method == "model":
            return self._fuse(self.models[task], a, b)
        if method == "clean":
            return self._fuse(self.clean[task], a, b)
        if method == "restore+clean":
            return restore_then_fuse(a, b, lambda x, y: self._fuse(self.clean[task], x, y), deg)
        if method == "auto+clean":  # the product's restore="auto" on both inputs: no one says what is degraded
            return restore_then_fuse(a, b, lambda x, y: self._fuse(self.clean[task], x, y), {"a": "auto", "b": "auto"})
        if method == "admm":
            return self._fuse("admm", a, b)
        fn = {"average": B.average, "max": B.max_abs, "laplacian": B.laplacian_pyramid, "overlay": B.overlay,
              "pixel_max": B.pixel_max, "copy_a": B.copy_a, "copy_b": B.copy_b}[method]
        return fn(a, b)


def run(tasks, fusers, data, crop, levels, cache_path: Path, recompute=(), methods=METHODS, log=print, split="test"):
    from napari_derun.data.degrade import apply
    from napari_derun.evaluation.metrics_extra import rank_metrics

    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    t_save = time.time()
    for task in tasks:
        pairs = split_pairs(task, data, CROP.get(task, crop), split)
        conds = conditions(task, levels)
        log(f"{task}: {len(pairs)} {split} pairs x {len(conds)} conditions x {len(methods)} methods")
        for ic, (cname, side, deg, lv) in enumerate(conds):
            for ip, (name, a, b) in enumerate(pairs):
                da, db = a, b
                if side is not None:
                    rng = np.random.default_rng([ip, ic, lv])
                    if side == "a":
                        da = apply(a, deg, lv, seed=rng)
                    else:
                        db = apply(b, deg, lv, seed=rng)
                for m in methods:
                    key = f"{task}|{cname}|{name}|{m}"
                    if key in cache and m not in recompute:
                        continue
                    if (m == "restore+clean" and side is None) or (m in CLEAN_ONLY and side is not None):
                        continue  # nothing to restore: the clean model's row; copies only as clean references
                    f = fusers.fuse(m, task, da, db, {side: deg} if side else {})
                    cache[key] = rank_metrics(a * 255.0, b * 255.0, f * 255.0)
                if time.time() - t_save > 60:
                    _save(cache_path, cache)
                    t_save = time.time()
            log(f"  {task} {cname} done ({time.strftime('%H:%M:%S')})")
        _save(cache_path, cache)
    return cache


def _save(path: Path, cache: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache))
    tmp.replace(path)


def summarize(cache: dict, task: str, levels, methods=METHODS) -> dict:
    """Per condition: mean rank, SR, SCD and the metric means of every method; per method its drop."""
    from napari_derun.evaluation.metrics_extra import RANK_METRICS, REFERENCE_METRICS, mean_ranks

    out = {}
    for cname, side, deg, lv in conditions(task, levels):
        rows = {}
        for key, v in cache.items():
            t, c, name, m = key.split("|")
            if t == task and c == cname and m in methods:
                rows.setdefault(m, {})[name] = v
        if side is None and "clean" in rows:
            rows["restore+clean"] = rows["clean"]
        if not rows:
            continue
        if side is not None:
            rows = {m: r for m, r in rows.items() if m not in CLEAN_ONLY}
        names = sorted(set.intersection(*(set(r) for r in rows.values())))
        if not names:
            continue
        table = {m: [rows[m][n] for n in names] for m in rows}
        ranks = mean_ranks(table, RANK_METRICS if side is None else REFERENCE_METRICS)
        means = {m: {k: float(np.nanmean([r[k] for r in table[m]])) for k in table[m][0]} for m in table}
        out[cname] = {"n": len(names), "rank": ranks, "rank9": mean_ranks(table), "means": means}
    clean = out.get("clean", {}).get("means", {})
    for cname, entry in out.items():
        entry["drop"] = {m: float(np.mean([(clean[m][k] - entry["means"][m][k]) / abs(clean[m][k])
                                           for k in REFERENCE_METRICS if clean[m][k]])) * 100.0
                         for m in entry["means"] if m in clean}
    return out


def markdown(task: str, summ: dict, methods=METHODS, labels: dict | None = None, split: str = "test") -> str:
    conds = list(summ)
    lines = [f"### {task}", "",
             f"{summ['clean']['n']} {split} pairs. Mean rank among the methods (1 = best), scored against the clean "
             "sources: clean inputs over EN SD SF AG SSIM PSNR UIQI VIF Qabf; degraded inputs (column = input, "
             "degradation, level) over the five reference metrics SSIM PSNR UIQI VIF Qabf (EN, SD, SF and AG "
             "look at the fused image alone and rise with noise). Bold: best in the column.", ""]
    lines.append("| method | " + " | ".join(c.replace(":", " ") for c in conds) + " |")
    lines.append("|---|" + "---|" * len(conds))
    for m in methods:
        cells = []
        for c in conds:
            r = summ[c]["rank"].get(m)
            best = min(summ[c]["rank"].values())
            cells.append("" if r is None else (f"**{r:.2f}**" if r == best else f"{r:.2f}"))
        lines.append(f"| {(labels or {}).get(m, m)} | " + " | ".join(cells) + " |")
    lines += ["", "SR (share of b's contrast kept) and drop (mean relative loss of the five reference metrics "
              "from the method's own clean score, %):", ""]
    lines.append("| method | " + " | ".join(c.replace(":", " ") for c in conds) + " |")
    lines.append("|---|" + "---|" * len(conds))
    for m in methods:
        cells = []
        for c in conds:
            mm = summ[c]["means"].get(m)
            d = summ[c]["drop"].get(m)
            cells.append("" if mm is None else f"{mm['SR']:.2f}" + ("" if c == "clean" or d is None else f" / {d:+.1f}"))
        lines.append(f"| {(labels or {}).get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def checks(task: str, summ: dict, subject: str = "model") -> list[str]:
    """The acceptance checks of ``subject`` (a method), each with ok / NOT met."""
    out = []
    c = summ["clean"]
    r = c["rank"][subject]
    for other in ("max", "overlay", "copy_a", "copy_b"):
        out.append(f"clean: rank {r:.2f} vs {other} {c['rank'][other]:.2f}: {'ok' if r < c['rank'][other] else 'NOT met'}")
    sr = c["means"][subject]["SR"]
    out.append(f"clean: SR {sr:.2f} (>= 0.7): {'ok' if sr >= 0.7 else 'NOT met'}")
    for cname, e in summ.items():
        if cname == "clean":
            continue
        ranks, drops = e["rank"], dict(e["drop"])
        out.append(f"{cname}: best rank {_verdict(ranks, subject, '.2f')}; "
                   f"smallest drop {_verdict(drops, subject, '+.1f', ' %')}")
    return out


def _verdict(values: dict, subject: str, fmt: str, unit: str = "") -> str:
    """``best (value; subject value) ok / NOT met``; a tie with the best (methods that returned the same
    images, e.g. auto+clean and restore+clean when both denoise) counts as met and is named."""
    best = min((m for m in values if m != subject), key=values.get)
    v, b = values[subject], values[best]
    if abs(v - b) < 1e-9:
        return f"{subject} tied with {best} ({v:{fmt}}{unit}) ok"
    if v < b:
        return f"{subject} ({v:{fmt}}{unit}; next {best} {b:{fmt}}{unit}) ok"
    return f"{best} ({b:{fmt}}{unit}; {subject} {v:{fmt}}{unit}) NOT met"


#: the degraded case of each task's side-by-side figure
FIGURE_CASES = {"ivf": [("a", "haze", 4), ("a", "low_light", 4), ("b", "stripe_noise", 4)],
                "gfp_pc": [("b", "shot_noise", 4), ("a", "gaussian_noise", 4)],
                "pet_mri": [("b", "poisson_counts", 4), ("a", "rician", 4)],
                "spect_mri": [("b", "poisson_counts", 4)], "ct_mri": [("b", "ct_low_dose", 4)]}
FIGURE_METHODS = ("restore+clean", "max", "overlay", "clean", "model")


def figure(task: str, fusers, data: Path, crop: int, path: Path, index: int = 0, labels: dict | None = None,
           methods=FIGURE_METHODS, cases=None) -> Path:
    """Side by side, one row per degraded case (``cases``, default :data:`FIGURE_CASES`, as (side,
    degradation, level)): degraded a and b, then ``methods`` (test pair ``index``)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from napari_derun.data.degrade import apply

    name, a, b = split_pairs(task, data, CROP.get(task, crop))[index]
    cases = cases or FIGURE_CASES[task]
    methods = [m for m in methods if not (m == "model" and fusers.models[task] == fusers.clean[task])]
    cols = ["a", "b", *methods]
    fig = Figure(figsize=(1.9 * len(cols), 2.05 * len(cases) + 0.2), dpi=90)
    axs = fig.subplots(len(cases), len(cols), squeeze=False)
    for r, (side, deg, lv) in enumerate(cases):
        rng = np.random.default_rng([11, r])
        da = apply(a, deg, lv, seed=rng) if side == "a" else a
        db = apply(b, deg, lv, seed=rng) if side == "b" else b
        imgs = [da, db] + [fusers.fuse(m, task, da, db, {side: deg}) for m in methods]
        for c, (label, img) in enumerate(zip(cols, imgs)):
            ax = axs[r][c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title((labels or {}).get(label, label), fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{side}: {deg} {lv}", fontsize=8)
    fig.suptitle(f"{task} test pair {name}", fontsize=8, y=0.995)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASK_MODEL))
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--model", nargs="*", default=[], metavar="TASK=SPEC", help="model under test per task")
    p.add_argument("--clean", nargs="*", default=[], metavar="TASK=SPEC", help="clean-trained model per task")
    p.add_argument("--levels", nargs="+", type=int, default=[2, 4])
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="test: the untouched split, to report; val: the validation pairs, to decide between models")
    p.add_argument("--cache", default=None, help="default eval_robust/cache.json (test), cache_val.json (val)")
    p.add_argument("--recompute", nargs="*", default=[])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--subject", default="model", help="the method the checks are about (e.g. clean)")
    p.add_argument("--labels", nargs="*", default=[], metavar="METHOD=LABEL", help="row names in the tables")
    p.add_argument("--out", default=None, help="write <task>.md, <task>.json and checks.md here")
    p.add_argument("--figures", default=None, help="write robust_<task>.png side-by-side figures here")
    p.add_argument("--figures-only", action="store_true", help="only draw the figures")
    p.add_argument("--figure-methods", nargs="+", default=list(FIGURE_METHODS), help="the figures' columns")
    p.add_argument("--figure-cases", nargs="+", default=None, metavar="SIDE:DEGRADATION:LEVEL",
                   help="the figures' rows (default FIGURE_CASES of the task)")
    p.add_argument("--figure-name", default="robust_{task}.png", help="file name of each figure")
    p.add_argument("--from-json", default=None, metavar="DIR",
                   help="fuse nothing: rewrite the tables and checks (--out) from the <task>.json summaries in DIR")
    a = p.parse_args(argv)
    labels = dict(x.split("=", 1) for x in a.labels)
    if a.from_json:
        summs = {t: json.loads((Path(a.from_json) / f"{t}.json").read_text()) for t in a.tasks}
        write_reports(Path(a.out or a.from_json), summs, a.methods, labels, a.split, a.subject)
        return
    models = {t: TASK_MODEL[t] for t in a.tasks}
    models.update(dict(x.split("=", 1) for x in a.model))
    clean = {t: TASK_MODEL[t] for t in a.tasks}
    clean.update(dict(x.split("=", 1) for x in a.clean))
    fusers = Fusers(models, clean)
    if a.figures:
        for t in a.tasks:
            cases = [(c.split(":")[0], c.split(":")[1], int(c.split(":")[2])) for c in a.figure_cases or []]
            print(figure(t, fusers, Path(a.data), a.crop, Path(a.figures) / a.figure_name.format(task=t),
                         labels=labels, methods=a.figure_methods, cases=cases or None))
    if a.figures_only:
        return
    cache_path = Path(a.cache or ("eval_robust/cache.json" if a.split == "test" else "eval_robust/cache_val.json"))
    cache = run(a.tasks, fusers, Path(a.data), a.crop, a.levels, cache_path, set(a.recompute), a.methods,
                log=lambda s: print(s, flush=True), split=a.split)
    if a.out:
        summs = {t: summarize(cache, t, a.levels, a.methods) for t in a.tasks}
        write_reports(Path(a.out), summs, a.methods, labels, a.split, a.subject)
    print(f"models {json.dumps(models)}; clean {json.dumps(clean)}", file=sys.stderr)


def write_reports(out: Path, summs: dict, methods, labels: dict, split: str, subject: str):
    """<task>.json, <task>.md and checks.md (every task of ``summs``) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    allchecks = []
    for t, summ in summs.items():
        (out / f"{t}.json").write_text(json.dumps(summ, indent=1))
        (out / f"{t}.md").write_text(markdown(t, summ, methods, labels, split))
        allchecks += [f"## {t}", ""] + [f"- {c}" for c in checks(t, summ, subject)] + [""]
    (out / "checks.md").write_text("\n".join(allchecks))
    print("\n".join(allchecks))


if __name__ == "__main__":
    main()
