"""Issue 19, items 5-11: each with a test that would have caught it (no Qt here; the widget items are in
test_widgets.py)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_derun.data import sample_data


def _folder(root, task, n=2, size=64):
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        f = sample_data.SAMPLES[task]
        a, b = f(size, seed=i) if task != "ivf" else f(size, size + 16, seed=i)
        Image.fromarray(a).save(root / "a" / f"p{i}.png")
        Image.fromarray(b).save(root / "b" / f"p{i}.png")
    return root


def test_item5_train_init_keeps_the_models_objective(tmp_path, capsys):
    """`train --init gfp_pc` continues with gfp_pc's target (lift), as the widget does; --target overrides."""
    from napari_derun.cli import main
    from napari_derun.io.checkpoint import read_checkpoint_info

    data = _folder(tmp_path / "d", "gfp_pc", n=2, size=48)
    common = ["--epochs", "1", "--steps-per-epoch", "1", "--batch", "1", "--patch", "32", "--no-val-metrics", "-q",
              "--device", "cpu", "--threads", "1"]
    assert main(["train", str(data), "--out", str(tmp_path / "m.safetensors"), "--init", "gfp_pc", *common]) == 0
    assert "keeping its objective" in capsys.readouterr().out
    cfg = read_checkpoint_info(tmp_path / "m.safetensors")["training"]["config"]
    assert cfg["target"] == "lift" and cfg["objective"] == "fusion"
    assert main(["train", str(data), "--out", str(tmp_path / "n.safetensors"), "--init", "gfp_pc", "--target", "max",
                 *common]) == 0
    assert read_checkpoint_info(tmp_path / "n.safetensors")["training"]["config"]["target"] == "max"


@pytest.mark.parametrize("folder,task,model", [("ivf3", "gfp_pc", "gfp_pc"), ("gfp3", "ivf", "medical"),
                                               ("gfp_pc", "pet_mri", "medical")])
def test_item6_evaluate_picks_the_model_from_the_content_not_the_folder_name(tmp_path, folder, task, model):
    from napari_derun.evaluation.runner import resolve_methods

    root = _folder(tmp_path / folder, task, size=128)
    methods, messages = resolve_methods(["derun"], source=root)
    assert methods[0].target == model and model in messages[0]


def test_item8_no_misalignment_warning_on_registered_real_gfp_pairs(shared_data):
    """The warning's test (looks_misaligned and three estimates that agree) stays quiet on registered real
    GFP/PC pairs (it fired on 4 of the first 10 before), and still finds a real shift of the sample."""
    from scipy import ndimage as ndi

    from napari_derun._widgets import _fuse_job as job
    from napari_derun.io.planes import find_pairs, read_image

    warned = 0
    for _, pa, pb in find_pairs(shared_data / "gfp_pc")[0][:10]:
        a, b = read_image(pa), read_image(pb)
        est = job.estimate_shift(a, b, a.ndim == 3, b.ndim == 3)
        warned += job.looks_misaligned(est, a.shape[:2]) and job.shift_is_consistent(a, b, a.ndim == 3, b.ndim == 3,
                                                                                     est)
    assert warned <= 1
    a, b = sample_data.gfp_pc(size=128)
    bs = ndi.shift(b, (5, -4, 0), order=1, mode="nearest")
    est = job.estimate_shift(a, bs, False, True)
    assert job.looks_misaligned(est, a.shape) and job.shift_is_consistent(a, bs, False, True, est)


def test_item9_bioimageio_sample_follows_the_model_and_cover_is_not_washed_out(tmp_path):
    from napari_derun.engine import bmz_export as bio

    a, b, text = bio._sample_for({"name": "finetuned-1", "training": {"init": "gfp_pc"}})
    assert "GFP" in text and np.array_equal(a, sample_data.gfp_pc()[0])
    assert "infrared" in bio._sample_for({"name": "x", "data": {"tasks": ["ivf"]}})[2]
    f = np.clip(np.linspace(-0.5, 1.6, a.size).reshape(a.shape), None, None)  # out of range on both sides
    bio._cover(a / 255.0, b[..., 1] / 255.0, f, tmp_path / "c.png")
    img = np.asarray(Image.open(tmp_path / "c.png"), np.float64) / 255
    right = img[:, img.shape[1] // 2:]
    assert right.max() <= 1.0 and (right[..., 1] > 0.99).mean() < 0.5  # clipped, not wrapped, not all white


@pytest.mark.slow
def test_item9_exported_gfp_model_uses_the_gfp_sample(tmp_path):
    import zipfile

    from helpers import forget_model

    from napari_derun import api
    from napari_derun.core.model import DeRUN
    from napari_derun.engine.bmz_export import export_bioimageio

    api.register_model("tuned-gfp", DeRUN.from_hifm(), {"training": {"init": "gfp_pc"}})
    try:
        out = export_bioimageio("tuned-gfp", tmp_path / "p.zip")
    finally:
        forget_model("tuned-gfp", None)
    with zipfile.ZipFile(out) as z:
        assert "GFP" in z.read("README.md").decode()
        cover = np.asarray(Image.open(z.open("cover.png")), np.float64) / 255
    right = cover[:, cover.shape[1] // 2:]
    assert right.mean() < 0.8 and right.std() > 0.05


def test_item11_help_texts_and_quiet_export():
    from napari_derun.cli import build_parser

    p = build_parser()
    sub = p._subparsers._group_actions[0].choices
    assert "14 metrics" in sub["evaluate"].description and "8 fusion metrics" not in sub["evaluate"].format_help()
    assert "data's task" not in sub["profile"].format_help()
    assert any("--quiet" in a.option_strings for a in sub["export"]._actions)


def test_item11_progress_bar_starts_at_its_real_total_and_failures_print_once(tmp_path, capsys, monkeypatch):
    import tqdm

    from napari_derun.cli import main

    totals = []
    real = tqdm.tqdm

    class Recording(real):
        def __init__(self, *a, **k):
            totals.append(k.get("total"))
            super().__init__(*a, **k)

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    root = _folder(tmp_path / "d", "gfp_pc", n=2, size=48)
    rc = main(["fuse", str(root / "a" / "p0.png"), str(root / "b" / "p0.png"), "-o", str(tmp_path / "f.tif"),
               "--model", "admm", "--device", "cpu"])
    assert rc == 0 and totals and totals[0] == 9  # 9 stages from the start, not 0/1 then 1/9
    (root / "a" / "p1.png").write_bytes(b"not a png")
    (root / "b" / "p1.png").write_bytes(b"not a png")
    capsys.readouterr()
    rc = main(["fuse", str(root), "-o", str(tmp_path / "out"), "--model", "admm", "--device", "cpu", "-q"])
    out = capsys.readouterr()
    assert rc == 1 and (out.out + out.err).count("cannot") <= 1 + (out.out + out.err).count("FAILED p1")
    assert (out.out + out.err).count("FAILED p1") == 1 and "1 failed (see above): p1" in out.out
