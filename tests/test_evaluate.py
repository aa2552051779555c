"""Tests of napari_derun.evaluation and the evaluate / robustness / profile commands."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_derun.evaluation import baselines, metrics
from napari_derun.evaluation.runner import EVAL_METRICS, evaluate, markdown_table, method_ranks, resolve_methods, summarize
from napari_derun.evaluation.profiling import _baseline_macs, _count_torch_macs
from napari_derun.evaluation.robust import robustness

from helpers import smooth_pair

S = 48


def _u8(x):
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """8-bit grey PNG pair, 16-bit TIFF pair, RGB JPEG/PNG pair, one unpaired and one corrupt file."""
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    a, b = smooth_pair(S, S, seed=1)
    Image.fromarray(_u8(a)).save(root / "a" / "grey8.png")
    Image.fromarray(_u8(b)).save(root / "b" / "grey8.png")
    a2, b2 = smooth_pair(S, S, seed=2)
    tifffile.imwrite(root / "a" / "t16.tif", (a2 * 60000 + 1000).astype(np.uint16))
    tifffile.imwrite(root / "b" / "t16.tif", (b2 * 40000).astype(np.uint16))
    a3, b3 = smooth_pair(S, S, seed=3)
    rgb = np.stack([b3, 0.5 * b3, 1 - b3], -1)
    Image.fromarray(_u8(np.stack([a3] * 3, -1))).save(root / "a" / "rgb.png")
    Image.fromarray(_u8(rgb)).save(root / "b" / "rgb.png")
    Image.fromarray(_u8(a)).save(root / "a" / "lonely.png")  # no partner
    (root / "a" / "broken.png").write_bytes(b"this is not a png")
    Image.fromarray(_u8(b)).save(root / "b" / "broken.png")
    return root


def test_evaluate_folder(data_dir, tmp_path):
    out = tmp_path / "out"
    methods = ("admm", "average", "max", "laplacian")
    rows, summary = evaluate(data_dir, methods=methods, out_dir=out, device="cpu", progress=False)
    good = {"grey8", "t16", "rgb"}
    assert {(r["name"], r["method"]) for r in rows} == {(n, m) for n in good for m in methods}
    assert len(rows) == len(good) * len(methods)
    probs = "\n".join(summary["problems"])
    assert "lonely" in probs and "broken" in probs
    assert summary["n_pairs"] == 3
    # the derun method was not requested, so no message about it
    assert not any("derun" in m for m in summary["messages"])

    # independent recomputation of one row: average of the 8-bit grey pair
    a = np.asarray(Image.open(data_dir / "a" / "grey8.png"), dtype=np.float64)
    b = np.asarray(Image.open(data_dir / "b" / "grey8.png"), dtype=np.float64)
    f = baselines.average(a / 255, b / 255)
    ref = metrics.all_metrics(a, b, f.astype(np.float64) * 255)
    row = next(r for r in rows if r["name"] == "grey8" and r["method"] == "average")
    for k in metrics.METRIC_NAMES:
        # EN bins round(F): F has half-integer values here, float32 vs float64 rounding moves a few
        assert row[k] == pytest.approx(ref[k], rel=1e-4, abs=0.2 if k == "EN" else 1e-6), k
    # RGB b: scored on its BT.601 luminance
    b3 = np.asarray(Image.open(data_dir / "b" / "rgb.png"), dtype=np.float64) / 255
    yb = 0.299 * b3[..., 0] + 0.587 * b3[..., 1] + 0.114 * b3[..., 2]
    a3 = np.asarray(Image.open(data_dir / "a" / "rgb.png"), dtype=np.float64)[..., 0] / 255
    f3 = baselines.max_abs(a3, yb)
    ref3 = metrics.all_metrics(a3 * 255, yb * 255, f3.astype(np.float64) * 255)
    row3 = next(r for r in rows if r["name"] == "rgb" and r["method"] == "max")
    assert row3["SSIM"] == pytest.approx(ref3["SSIM"], rel=1e-3)
    assert row3["EN"] == pytest.approx(ref3["EN"], abs=0.05)

    # CSV
    with open(out / "per_image.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == len(rows)
    assert list(csv_rows[0]) == ["name", "method", *EVAL_METRICS, "seconds"]
    assert float(csv_rows[0]["SSIM"]) == pytest.approx(rows[0]["SSIM"], rel=1e-5)
    # Markdown: all methods, 8 metric columns, mean over images, problems listed
    md = (out / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")][1:1 + len(EVAL_METRICS)] == list(EVAL_METRICS)
    assert header.rstrip().endswith("Rank |")
    for m in methods:
        assert f"| {m} |" in md
    assert "lonely.png" in md and "broken" in md
    mean_ssim = np.mean([r["SSIM"] for r in rows if r["method"] == "admm"])
    assert f"{mean_ssim:.3f} ±" in md
    assert md.count("**") >= 2 * len(metrics.METRIC_NAMES)


def test_summarize_and_bold():
    rows = [
        {"method": "x", **{k: 1.0 for k in metrics.METRIC_NAMES}, "seconds": 0.1},
        {"method": "x", **{k: 3.0 for k in metrics.METRIC_NAMES}, "seconds": 0.3},
        {"method": "y", **{k: 0.5 for k in metrics.METRIC_NAMES}, "seconds": 0.2},
    ]
    s = summarize(rows)
    assert s["x"]["SSIM"]["mean"] == 2.0
    assert s["x"]["SSIM"]["std"] == pytest.approx(np.std([1.0, 3.0], ddof=1))
    assert s["y"]["PSNR"]["std"] == 0.0 and s["y"]["PSNR"]["n"] == 1
    md = markdown_table(s)
    line_x = next(line for line in md.splitlines() if line.startswith("| x |"))
    line_y = next(line for line in md.splitlines() if line.startswith("| y |"))
    assert line_x.count("**") == 2 * 8 and "**" not in line_y


def test_resolve_methods(tmp_path):
    from napari_derun import api

    shipped = [m for m in api.list_models() if m != "admm"]
    meths, msgs = resolve_methods("derun,admm,average", source=tmp_path / "gfp_pc")
    labels = [m.label for m in meths]
    if shipped:
        assert labels == ["derun", "admm", "average"]
    else:
        assert labels == ["admm", "average"]
        assert any("derun" in m and "skipped" in m for m in msgs)
    with pytest.raises(ValueError, match="unknown method"):
        resolve_methods(["nonsense"])
    with pytest.raises(ValueError, match="no fusion method"):
        resolve_methods([]) if shipped else resolve_methods(["derun"])


def test_evaluate_arrays_and_small_images():
    a, b = smooth_pair(S, S, seed=4)
    small = smooth_pair(32, 32, seed=5)
    rows, summary = evaluate([("ok", a, b), ("tiny", *small)], methods="average,laplacian", progress=False)
    assert [r["name"] for r in rows] == ["ok", "ok"]
    assert any("tiny" in p and "41" in p for p in summary["problems"])
    f = baselines.laplacian_pyramid(a.astype(np.float32), b.astype(np.float32))
    ref = metrics.all_metrics(a * 255, b * 255, f * 255.0)
    assert rows[1]["Qp"] == pytest.approx(ref["Qp"], rel=1e-4, abs=1e-6)


@pytest.mark.slow  # several seconds: the slow suite (the default one stays under 2 minutes)
def test_robustness_rows_and_level0(data_dir, tmp_path):
    rows, summary = robustness(data_dir, input="b", degradations="noise,blur", levels=[0, 3],
                               methods=("average", "max"), limit=2, out_dir=tmp_path / "rob", progress=False)
    names = {"grey8", "rgb"}  # first two pairs by name: broken is unreadable (listed), grey8, lonely unpaired
    got = {(r["degradation"], r["level"], r["method"], r["name"]) for r in rows}
    assert len(rows) == len(got)
    assert got == {(d, lv, m, n) for d in ("noise", "blur") for lv in (0, 3) for m in ("average", "max")
                   for n in {r["name"] for r in rows}}
    assert {r["name"] for r in rows} <= names | {"t16"}
    # level 0 is the clean input: identical to evaluate on the same pair
    ev_rows, _ = evaluate(data_dir, methods=("average",), progress=False, limit=2)
    for er in ev_rows:
        rr = next(r for r in rows if r["level"] == 0 and r["method"] == "average" and r["name"] == er["name"]
                  and r["degradation"] == "noise")
        assert rr["SSIM"] == pytest.approx(er["SSIM"], rel=1e-6)
    # blur at level 3 lowers the average gradient of the average fusion
    for n in {r["name"] for r in rows}:
        ag0 = next(r["AG"] for r in rows if (r["degradation"], r["level"], r["method"], r["name"]) == ("blur", 0, "average", n))
        ag3 = next(r["AG"] for r in rows if (r["degradation"], r["level"], r["method"], r["name"]) == ("blur", 3, "average", n))
        assert ag3 < ag0
    assert (tmp_path / "rob" / "robustness.png").stat().st_size > 1000
    # deterministic
    rows2, _ = robustness(data_dir, degradations="noise", levels=[3], methods=("average",), limit=2, progress=False)
    for r2 in rows2:
        r1 = next(r for r in rows if (r["degradation"], r["level"], r["method"], r["name"]) == ("noise", 3, "average", r2["name"]))
        assert r1["PSNR"] == r2["PSNR"]
    with pytest.raises(ValueError, match="unknown degradation"):
        robustness(data_dir, degradations="fog", levels=[0], methods=("average",), progress=False)


def test_mac_counter_against_analytic():
    import torch
    import torch.nn.functional as F

    x = torch.zeros(1, 3, 20, 30)
    w = torch.zeros(5, 3, 3, 3)
    c = _count_torch_macs(lambda: F.conv2d(x, w, padding=1))
    assert c["conv"] == 5 * 20 * 30 * 3 * 9
    c = _count_torch_macs(lambda: torch.fft.irfft2(torch.fft.rfft2(torch.zeros(2, 64, 32)), s=(64, 32)))
    n = 64 * 32
    assert c["fft"] == 2 * 2 * int(n * np.log2(n))
    assert _baseline_macs("average", 10, 20) == 200


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "napari_derun.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow  # subprocesses / real pairs: the slow suite (the default one stays under 2 minutes)
def test_cli_evaluate_robustness_profile(data_dir, tmp_path):
    out = tmp_path / "ev"
    r = _cli("evaluate", str(data_dir), "--methods", "average,max", "--out", str(out), "--device", "cpu",
             "--limit", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "| average |" in r.stdout and "| max |" in r.stdout and "lonely" in r.stderr
    with open(out / "per_image.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 2  # broken, grey8, lonely(unpaired) -> 2 readable of 3
    assert (out / "summary.md").is_file()

    rob = tmp_path / "rob"
    r = _cli("robustness", str(data_dir), "--degradations", "haze,noise", "--levels", "0,2", "--methods",
             "average,max", "--limit", "2", "--out", str(rob), "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    with open(rob / "robustness.csv") as fh:
        rr = list(csv.DictReader(fh))
    n_img = len({x["name"] for x in rr})
    assert len(rr) == 2 * 2 * 2 * n_img and n_img >= 1
    assert (rob / "robustness.png").is_file()

    r = _cli("profile", "--size", "64", "--repeats", "1", "--device", "cpu", "--methods", "admm,average")
    assert r.returncode == 0, r.stderr
    assert "| admm |" in r.stdout and "| average |" in r.stdout and "Multiply-adds" in r.stdout

    r = _cli("evaluate", str(tmp_path / "nope"), "--methods", "average")
    assert r.returncode == 1 and "no such data folder" in r.stderr


def test_lazy_package_attribute():
    import napari_derun

    assert callable(napari_derun.evaluate)
    rows, _ = napari_derun.evaluate([("x", *smooth_pair(S, S))], methods="average", progress=False)
    assert len(rows) == 1


@pytest.mark.slow
def test_profile_counts():
    from napari_derun import api
    from napari_derun.evaluation.profiling import profile
    from napari_derun.core.model import DeRUN

    rows = {r["method"]: r for r in profile(size=32, methods="derun,admm,laplacian", device="cpu", repeats=1)}
    if not [m for m in api.list_models() if m != "admm"]:
        assert rows["derun"]["params"] == DeRUN.from_hifm().num_parameters()
    assert rows["derun"]["macs"] > rows["admm"]["macs"] > 0
    assert rows["admm"]["fft_macs"] > 0 and rows["admm"]["params"] == 0
    assert rows["laplacian"]["macs"] == _baseline_macs("laplacian", 32, 32) > 0


def test_reference_methods_extra_columns_and_rank():
    from napari_derun.evaluation import metrics_extra as mx

    rng = np.random.default_rng(0)
    a = rng.uniform(0.2, 0.8, (48, 48)).astype(np.float32)
    b = np.zeros((48, 48), np.float32)
    b[10:20, 10:20] = 0.9
    rows, summary = evaluate([("p", a, b)], methods="copy_a,copy_b,overlay,pixel_max,average",
                             progress=False, verbose=False)
    by = {r["method"]: r for r in rows}
    # the references are what they say
    ov = np.clip(a + (b - np.median(b)), 0, 1)
    assert by["overlay"]["SD"] == pytest.approx(float(np.std(ov * 255.0)), rel=1e-5)
    assert by["copy_b"]["SR"] == pytest.approx(1.0)
    assert by["copy_a"]["SSIM"] == pytest.approx(by["copy_b"]["SSIM"])  # SSIM(a, a) = SSIM(b, b) = 1
    f = np.maximum(a, b).astype(np.float64) * 255
    assert by["pixel_max"]["Qabf"] == pytest.approx(mx.qabf(a * 255.0, b * 255.0, f), rel=1e-6)
    assert by["pixel_max"]["SCD"] == pytest.approx(mx.scd(a * 255.0, b * 255.0, f), rel=1e-6)
    ranks = summary["ranks"]
    assert set(ranks) == {"copy_a", "copy_b", "overlay", "pixel_max", "average"}
    assert ranks == method_ranks(rows)
    assert sum(ranks.values()) == pytest.approx(1 + 2 + 3 + 4 + 5)  # ranks of 5 methods average to 3
    assert "Rank" in summary["markdown"]


def test_metric_subset():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, (48, 48)).astype(np.float32)
    b = rng.uniform(0, 1, (48, 48)).astype(np.float32)
    rows, s = evaluate([("p", a, b)], methods="average,copy_a", progress=False, verbose=False,
                       metrics="SSIM,Qabf,SR")
    assert set(rows[0]) == {"name", "method", "SSIM", "Qabf", "SR", "seconds"}
    full, _ = evaluate([("p", a, b)], methods="average,copy_a", progress=False, verbose=False)
    assert rows[0]["Qabf"] == pytest.approx(full[0]["Qabf"]) and rows[0]["SSIM"] == pytest.approx(full[0]["SSIM"])
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate([("p", a, b)], methods="average", progress=False, verbose=False, metrics="SSIM,nope")
