"""Run the reliability audit (bad inputs, hostile files, interruptions) and write docs/reliability.md.

    OMP_NUM_THREADS=1 python tools/reliability_report.py [--out docs/reliability.md] [--only WORD]

Each case records what a user sees (the error message's first line, or what was written), its wall
time and the growth of the process's peak memory while it ran (Linux: the peak RSS, ``VmHWM``, is reset
through ``/proc/self/clear_refs`` before each case). Round 1 is below, round 2 (issue 22) in
tools/reliability_cases2.py; the regression tests are tests/test_reliability.py and
tests/test_reliability2.py. This page is for reading.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _pair(d: Path):
    import tifffile

    rng = np.random.default_rng(0)
    a = (rng.uniform(0, 1, (48, 44)) * 255).astype(np.uint8)
    b = (rng.uniform(0, 1, (48, 44)) * 255).astype(np.uint8)
    tifffile.imwrite(d / "A.tif", a)
    tifffile.imwrite(d / "B.tif", b)
    for sub in ("a", "b"):
        (d / "data" / sub).mkdir(parents=True, exist_ok=True)
    from PIL import Image

    for i in range(2):
        Image.fromarray(a).save(d / "data" / "a" / f"p{i}.png")
        Image.fromarray(b).save(d / "data" / "b" / f"p{i}.png")
    return a, b


def cli(*argv) -> str:
    from napari_derun.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(x) for x in argv])
    lines = [ln for ln in err.getvalue().splitlines() if "error" in ln or "interrupted" in ln] or [""]
    return f"exit {rc}: {lines[-1].strip()}" if rc else "exit 0"


def fake_ckpt(path: Path, change: dict | str, version=1):
    import torch
    from safetensors.torch import save_file

    from napari_derun.core.model import DeRUN

    cfg = {**DeRUN.from_hifm().config.to_dict(), **change} if isinstance(change, dict) else change
    doc = {"format": "napari-derun", "format_version": version, "config": cfg}
    save_file({"x": torch.zeros(1)}, str(path), metadata={"napari_derun": json.dumps(doc)})
    return path


def cases(d: Path):
    import torch

    import napari_derun as nd
    from napari_derun.io.checkpoint import load_checkpoint
    from napari_derun.core.model import DeRUN
    from napari_derun.training.config import TrainConfig
    from napari_derun.training.loop import train

    a, b = _pair(d)
    af = a.astype(np.float64) / 255
    victim = d / "victim.txt"
    victim.write_text("precious")
    (d / "out").mkdir()
    os.symlink(victim, d / "out" / "fused.tif.part")
    blocker = d / "afile"
    blocker.write_text("x")
    (d / "existing.safetensors").write_bytes(b"mine")

    def symlink():
        r = cli("fuse", d / "A.tif", d / "B.tif", "-o", d / "out" / "fused.tif", "--model", "admm", "-q")
        return f"{r}; victim file {'unchanged' if victim.read_text() == 'precious' else 'OVERWRITTEN'}"

    def diverge():
        try:
            train([(af, af)], config=TrainConfig(epochs=1, steps_per_epoch=2, batch=1, patch=32, lr=1e9, device="cpu",
                                                 val_metrics=False, val_initial=False))
        except FloatingPointError as e:
            return f"FloatingPointError: {e}"
        return "trained (!)"

    def nan_weights():
        m = DeRUN.from_hifm()
        with torch.no_grad():
            m.stages[2].raw_rho.fill_(float("nan"))
        nd.fuse(a, b, model=m, device="cpu")

    def shared_fuser():
        fz = nd.load_model("admm", device="cpu")
        nd.fuse(a, b, model=fz, device="cpu", precision="bf16")
        return f"caller's Fuser precision after a bf16 call: {fz.precision}"

    def big_ckpt():
        t0 = time.perf_counter()
        try:
            load_checkpoint(fake_ckpt(d / "huge.safetensors", {"n_stages": 10_000_000}))
        except ValueError as e:
            return f"{type(e).__name__} after {time.perf_counter() - t0:.2f} s: {str(e).split(': ', 1)[-1]}"

    def stale_tmp():
        from napari_derun._files import atomic_write_bytes

        t = d / "target.bin"
        stale = d / ".target.bin.abc.tmp"
        stale.write_bytes(b"left by kill -9")
        old = time.time() - 7200
        os.utime(stale, (old, old))
        atomic_write_bytes(t, b"x")
        return f"temporary file of a killed writer {'removed' if not stale.exists() else 'KEPT'}"

    def no_val():
        res = train([(af, af)], init=DeRUN.from_hifm(), config=TrainConfig(
            epochs=2, steps_per_epoch=1, batch=1, patch=32, device="cpu", val_metrics=False, val_initial=False))
        return f"kept: {res.info['metrics']['best']['selected_by']}, epoch {res.info['metrics']['best']['epoch']}"

    api = [
        ("files", "stale temporary file of a killed writer (older than 1 h)", stale_tmp),
        ("training", "no validation pairs: which weights are kept", no_val),
        ("files", "planted symlink at the old `<out>.part` name", symlink),
        ("files", "`fuse -o` under a path whose parent is a file", lambda: cli("fuse", d / "A.tif", d / "B.tif", "-o", blocker / "o.tif", "-q")),
        ("files", "`train --out` an existing file, no `--overwrite`", lambda: cli("train", d / "data", "--out", d / "existing.safetensors")),
        ("files", "`evaluate -o` under a file", lambda: cli("evaluate", d / "data", "-o", blocker / "ev", "-q")),
        ("files", "`demo --out` under a file", lambda: cli("demo", "--out", blocker / "demo")),
        ("checkpoint", "config n_stages = 10,000,000", big_ckpt),
        ("checkpoint", "config n_knots = -1", lambda: load_checkpoint(fake_ckpt(d / "k.safetensors", {"n_knots": -1}))),
        ("checkpoint", "config pad = -100", lambda: load_checkpoint(fake_ckpt(d / "p.safetensors", {"pad": -100}))),
        ("checkpoint", "format_version \"abc\"", lambda: load_checkpoint(fake_ckpt(d / "v.safetensors", {}, "abc"))),
        ("checkpoint", "config is not a mapping", lambda: load_checkpoint(fake_ckpt(d / "c.safetensors", "oops"))),
        ("checkpoint", "right config, foreign tensors", lambda: load_checkpoint(fake_ckpt(d / "f.safetensors", {}))),
        ("training", "lr 1e9 (divergence)", diverge),
        ("training", "`train --lr 1e9` from the CLI", lambda: cli("train", d / "data", "--out", d / "m1.safetensors", "--lr", "1e9", "--epochs", "1", "--steps-per-epoch", "2", "--patch", "32", "--batch", "1", "--no-val-metrics", "-q", "--device", "cpu")),
        ("training", "`train --epochs 0`", lambda: cli("train", d / "data", "--out", d / "m2.safetensors", "--epochs", "0")),
        ("training", "`train --batch 0`", lambda: cli("train", d / "data", "--out", d / "m3.safetensors", "--batch", "0")),
        ("training", "`train --patch 2`", lambda: cli("train", d / "data", "--out", d / "m4.safetensors", "--patch", "2")),
        ("fusion", "NaN weights", nan_weights),
        ("fusion", "`fuse(model=fuser, precision='bf16')` on a shared Fuser", shared_fuser),
        ("fusion", "overlap = -5", lambda: nd.fuse(a, b, model="admm", overlap=-5, device="cpu")),
        ("fusion", "`--overlap -5` (CLI)", lambda: cli("fuse", d / "A.tif", d / "B.tif", "-o", d / "o5.tif", "--model", "admm", "--overlap", "-5", "-q")),
        ("fusion", "tile = 2", lambda: nd.fuse(a, b, model="admm", tile=2, device="cpu")),
        ("fusion", "tile = -5", lambda: nd.fuse(a, b, model="admm", tile=-5, device="cpu")),
        ("fusion", "float64 input × 1e39 (beyond float32)", lambda: f"max {float(nd.fuse(af * 1e39, b, model='admm', device='cpu').max()):.3f}, no NaN"),
        ("fusion", "reversed percentiles (99.9, 0.1)", lambda: nd.fuse(a.astype(np.uint16), b, model="admm", percentiles=(99.9, 0.1), device="cpu")),
        ("fusion", "NaN in `ranges`", lambda: nd.fuse(af, af, model="admm", ranges=((np.nan, 1), (0, 1)), device="cpu")),
        ("fusion", "NaN pixels in the input", lambda: nd.fuse(np.where(af > 0.5, np.nan, af), af, model="admm", device="cpu")),
        ("fusion", "0-d input", lambda: nd.fuse(np.float32(1), np.float32(2), model="admm", device="cpu")),
        ("fusion", "(Y, X, 2) image", lambda: nd.fuse(np.stack([af, af], -1), np.stack([af, af], -1), model="admm", device="cpu")),
        ("fusion", "axes = 123", lambda: nd.fuse(a, b, model="admm", axes=123, device="cpu")),
        ("fusion", "model = \".\" (a folder)", lambda: nd.fuse(a, b, model=".", device="cpu")),
        ("fusion", "masked array with masked pixels", lambda: nd.fuse(np.ma.masked_array(af, af > 0.5), af, model="admm", device="cpu")),
        ("fusion", "`return_stages` on a dask stack", lambda: nd.fuse(_dask(np.stack([a, a])), np.stack([b, b]), model="admm", return_stages=True, axes="ZYX", device="cpu")),
        ("commands", "`robustness --levels a,b`", lambda: cli("robustness", d / "data", "--levels", "a,b", "-o", d / "r")),
        ("commands", "`profile --repeats 0`", lambda: cli("profile", "--repeats", "0")),
    ]
    return api


def run_case(fn) -> str:
    try:
        r = fn()
    except Exception as e:  # what the user sees
        return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    if isinstance(r, str):
        return r
    return "returned a result"


def _status_kib(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measured(fn, limit_s: float = 300.0) -> tuple[str, float, float | None]:
    """(outcome, seconds, peak RSS growth in MiB or None) of one case, run in a thread with a time limit."""
    import gc
    import threading

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        rss0 = _status_kib("VmRSS")
    except OSError:
        rss0 = None
    box = {}
    t0 = time.perf_counter()
    th = threading.Thread(target=lambda: box.update(out=run_case(fn)), daemon=True)
    th.start()
    th.join(limit_s)
    secs = time.perf_counter() - t0
    out = box.get("out", f"STILL RUNNING after {limit_s:.0f} s (a hang)")
    peak = (_status_kib("VmHWM") - rss0) / 1024 if rss0 else None
    return out, secs, peak


def _cell(text: str, td: str) -> str:
    text = text.replace(td, "TMP").replace(str(Path(td).resolve()), "TMP").replace("|", "\\|")
    return text if len(text) <= 400 else text[:400] + " …"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "reliability.md"))
    ap.add_argument("--only", default=None, help="run only the cases whose name contains this (no page written)")
    a = ap.parse_args(argv)
    os.environ.setdefault("NAPARI_DERUN_THREADS", "1")
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import reliability_cases2

    torch.set_num_threads(1)
    import napari_derun  # noqa: F401  (imported before the baseline is read)

    rows = []
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        todo = [("1", area, case, fn, False) for area, case, fn in cases(d)]
        todo += [("2", area, case, fn, hostile) for area, case, fn, hostile in reliability_cases2.cases(d, cli)]
        baseline = _status_kib("VmRSS") / 1024
        for rnd, area, case, fn, hostile in todo:
            if a.only and a.only.lower() not in case.lower():
                continue
            out, secs, peak = measured(fn)
            rows.append((rnd, area, case, _cell(out, td), secs, peak, hostile))
            print(f"{secs:7.2f} s {peak if peak is not None else float('nan'):8.1f} MiB  {case}: {rows[-1][3]}",
                  flush=True)
    if a.only:
        return
    hostile = [r for r in rows if r[6] is True]
    services = [r for r in rows if r[6] == "service"]
    worst_t = max(hostile, key=lambda r: r[4])
    worst_m = max(hostile, key=lambda r: r[5] or 0)
    fmt_m = lambda v: "n/a" if v is None else f"{max(0.0, v):.0f}"  # noqa: E731
    lines = ["# Reliability: what happens on bad input, hostile files and interruptions", "",
             "Generated by `OMP_NUM_THREADS=1 python tools/reliability_report.py` (every case below is run; the "
             "regression tests are `tests/test_reliability.py` (round 1) and `tests/test_reliability2.py` (round 2, "
             "issue 22); the hostile files are crafted by `tests/hostile.py`). TMP is a scratch folder. *time*: wall "
             "seconds of the case; *peak*: growth of the process's peak resident memory during the case, in MiB, "
             f"over a process that holds about {baseline:.0f} MiB with torch and napari-derun imported. Measured on "
             "a 2-core machine that was running two other jobs.", "",
             f"**Hostile files** ({len(hostile)} cases, marked ⚑): the slowest took {worst_t[4]:.2f} s "
             f"({worst_t[2]}), the largest peak growth was {fmt_m(worst_m[5])} MiB ({worst_m[2]}). "
             f"**Hostile network peers** ({len(services)} cases, marked ⚐): at most "
             f"{max(r[4] for r in services):.1f} s (the promised limit is 10 s).", ""]
    for rnd, title in (("1", "Round 1"), ("2", "Round 2 (issue 22)")):
        lines += [f"## {title}", "", "| area | case | outcome | time (s) | peak (MiB) |", "|---|---|---|---:|---:|"]
        lines += [f"| {area} | {'⚑ ' if h is True else '⚐ ' if h == 'service' else ''}{case} | {out} | {secs:.2f} "
                  f"| {fmt_m(peak)} |"
                  for r_, area, case, out, secs, peak, h in rows if r_ == rnd]
        lines.append("")
    lines += [
        "Notes:",
        "",
        "* *Images*: a file's declared size is checked before decoding against the memory available at that "
        "moment (the decoded pixels plus a float32 result; `--max-image-mb` / `NAPARI_DERUN_MAX_IMAGE_MB` set the "
        "limit instead, 0 = none). Without an explicit limit, a file declaring over 128 MiB of pixels at over 100 "
        "times its own size is refused as a decompression bomb (the 30000² TIFF and the 12000² PNG would fit in "
        "this machine's memory, but would take hours to fuse on 2 cores). A real image that large is read by giving "
        "the limit (row *read as a real image*).",
        "* *Large planes* are converted to float tile by tile and fused straight into the result: beyond the "
        "inputs, fusion holds the float32 result (plus a float32 luminance plane for colour) and a few tiles "
        "(the *engine memory* rows use a stand-in model so that only the engine is measured).",
        "* *dask*: the workers of a folder batch must see the same files at the same absolute paths (docs/scripting.md).",
        "* Also covered elsewhere: corrupt / truncated / pickle checkpoint files are refused without unpickling "
        "(tests/test_fuse_api.py); `kill -9` then `--resume` continues bit-identically (tests/test_training.py); "
        "Ctrl-C in `train` stops after the step and writes the best model so far.", ""]
    Path(a.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()


def _dask(x):
    import dask.array as da

    return da.from_array(x)
