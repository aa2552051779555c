"""Drive the Fuse and Fine-tune widgets through a real napari viewer (headless under Xvfb)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import napari  # noqa: F401  (the testing extra installs napari and pytest-qt)
import pytestqt  # noqa: F401

import napari_derun as nd  # noqa: E402
from napari_derun.data import sample_data  # noqa: E402

from helpers import forget_model, smooth_pair  # noqa: E402

pytestmark = pytest.mark.qt

WAIT = 60_000


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (fixture in conftest.py)."""


def _pair_u8(h=64, w=56, seed=0):
    a, b = smooth_pair(h, w, seed)
    return (a * 255).astype(np.uint8), (b * 255).astype(np.uint8)


def _gfp_small():
    a, b = sample_data.gfp_pc(size=64, n_cells=4, seed=1)
    return a, b


def _fuse_widget(viewer, a_layer, b_layer):
    from napari_derun._widgets import FuseWidget

    w = FuseWidget(viewer)
    viewer.window.add_dock_widget(w, name="Fuse images (DeRUN)")
    w.a_combo.value = a_layer
    w.b_combo.value = b_layer
    w.model_combo.value = "admm"
    w.device_combo.value = "cpu"
    return w


def _run(qtbot, w):
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT)


def _notifications():
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


def test_fuse_widget_rgb_matches_api_and_reruns_in_place(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    a, b = _gfp_small()
    la = viewer.add_image(a, name="pc", scale=(0.5, 0.25), translate=(3.0, -2.0))
    lb = viewer.add_image(b, name="gfp", rgb=True, scale=(0.5, 0.25), translate=(3.0, -2.0))
    w = _fuse_widget(viewer, la, lb)
    assert w.device_label.value == "cpu"
    w.stages_check.value = True
    w.eh_check.value = True
    _run(qtbot, w)
    assert w.status.state == "done", w.status.message
    out = viewer.layers["gfp_pc_derun"]
    _, st = nd.fuse(a, b, model="admm", device="cpu", return_stages=True)
    ref = nd.fuse(a, b, model="admm", device="cpu", colour="overlay")  # what the widget shows: the overlay colours
    assert out.rgb and out.data.shape == (64, 64, 3)
    np.testing.assert_allclose(out.data, ref, atol=1e-6)
    np.testing.assert_allclose(out.scale, la.scale)
    np.testing.assert_allclose(out.translate, la.translate)
    prov = out.metadata["derun"]
    assert prov["model"] == "admm" and prov["device"] == "cpu"
    assert prov["inputs"] == {"structural": "pc", "salient": "gfp"} and "time" in prov
    n = st["X"].shape[0]
    xs = viewer.layers[f"gfp_pc_derun stages (X, stage 1–{n})"]
    np.testing.assert_allclose(xs.data, st["X"], atol=1e-6)
    assert tuple(xs.scale) == (1.0, 0.5, 0.25)
    ne, nf = st["E"].shape[:2]
    es = viewer.layers[f"gfp_pc_derun stages (E, filter 1–{nf} × stage 1–{ne})"]
    np.testing.assert_allclose(es.data, np.moveaxis(st["E"], 1, 0), atol=1e-6)  # (filter, stage, Y, X)
    assert f"gfp_pc_derun stages (H, filter 1–{nf} × stage 1–{ne})" in viewer.layers
    # sliders named by what they move; the stage axis of X and of E/H is the same viewer axis
    assert tuple(xs.axis_labels)[0] == "stage" and tuple(es.axis_labels)[:2] == ("filter", "stage")
    assert tuple(viewer.dims.axis_labels)[-4:-2] == ("filter", "stage")
    assert tuple(xs.axis_labels) == tuple(viewer.dims.axis_labels)[-3:]
    # live metrics of the result: the fast subset, against napari_derun.evaluation.metrics directly
    from napari_derun.evaluation import metrics
    from napari_derun.data import preprocess

    ya = preprocess.split_luma(preprocess.to_float01(a))[0]
    yb = preprocess.split_luma(preprocess.to_float01(b))[0]
    f_l = np.clip(nd.fuse(a, b, model="admm", device="cpu", return_stages=True)[1]["X"][-1], 0, 1)
    assert set(w.last_metrics) == {"EN", "AG", "SSIM", "PSNR", "SR"}
    assert w.last_metrics["SSIM"] == pytest.approx(metrics.ssim(ya, yb, f_l, data_range=1.0), rel=1e-5)
    # SR by its definition: b's contrast (top 5 % vs darker half of b) as it appears in the result
    hi, lo = yb >= np.quantile(yb, 0.95), yb <= np.quantile(yb, 0.5)
    sr = (f_l[hi].mean() - f_l[lo].mean()) / (yb[hi].mean() - yb[lo].mean())
    assert w.last_metrics["SR"] == pytest.approx(sr, rel=1e-4)
    assert "SSIM" in w.metrics_label.value

    # re-run: same layer objects updated in place, no new layers
    n_layers = len(viewer.layers)
    out.metadata["note"] = "kept"
    _run(qtbot, w)
    assert len(viewer.layers) == n_layers
    assert viewer.layers["gfp_pc_derun"] is out and out.metadata["note"] == "kept"
    np.testing.assert_allclose(out.data, ref, atol=1e-6)

    # all eight metrics in a worker
    w.compute_all_metrics()
    qtbot.waitUntil(lambda: w.metrics_worker is None, timeout=WAIT)
    assert list(w.last_metrics) == list(metrics.METRIC_NAMES)


def test_zstack_plane_by_plane_and_dask(make_napari_viewer, qtbot):
    import dask.array as da

    viewer = make_napari_viewer()
    pairs = [_pair_u8(40, 36, seed=s) for s in range(3)]
    a = np.stack([p[0] for p in pairs])
    b = np.stack([p[1] for p in pairs])
    la = viewer.add_image(a, name="mri", scale=(2.0, 1.0, 1.0))
    lb = viewer.add_image(da.from_array(b, chunks=(1, 40, 36)), name="pet")
    w = _fuse_widget(viewer, la, lb)
    seen = []
    w._relay.progress.connect(lambda d, t, m: seen.append((d, t)))
    _run(qtbot, w)
    assert w.status.state == "done", w.status.message
    out = viewer.layers["pet_mri_derun"]
    ref = np.stack([nd.fuse(a[z], b[z], model="admm", device="cpu") for z in range(3)])
    assert out.data.shape == (3, 40, 36)
    np.testing.assert_allclose(out.data, ref, atol=1e-6)
    assert tuple(out.scale) == (2.0, 1.0, 1.0)
    qtbot.waitUntil(lambda: len(seen) > 0, timeout=5000)
    assert seen[-1][1] == 3 * 9  # progress counted per plane and stage
    assert out.metadata["derun"]["parameters"]["planes"] == 3


def test_cancel_leaves_viewer_unchanged(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    a = np.stack([_pair_u8(48, 48, seed=s)[0] for s in range(6)])
    b = np.stack([_pair_u8(48, 48, seed=s)[1] for s in range(6)])
    la, lb = viewer.add_image(a, name="a"), viewer.add_image(b, name="b")
    w = _fuse_widget(viewer, la, lb)
    w._relay.progress.connect(lambda d, t, m: w.cancel())
    names = [ly.name for ly in viewer.layers]
    w.run()
    assert not w.run_button.enabled and w.cancel_button.enabled
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT)
    assert w.status.state == "cancelled"
    assert [ly.name for ly in viewer.layers] == names
    assert w.run_button.enabled and not w.cancel_button.enabled


def test_bad_pair_notifies_and_adds_nothing(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    la = viewer.add_image(np.zeros((40, 40), np.uint8), name="a")
    lb = viewer.add_image(np.zeros((40, 32), np.uint8), name="b")
    w = _fuse_widget(viewer, la, lb)
    w.run()
    assert not w.running and w.status.state == "error"
    assert "differ in shape" in w.status.message and "resample or crop" in w.status.message
    assert any("differ in shape" in m for m in _notifications())
    assert [ly.name for ly in viewer.layers] == ["a", "b"]


def test_misaligned_pair_warns_and_aligns(make_napari_viewer, qtbot):
    from scipy import ndimage as ndi

    from napari_derun._widgets import _fuse_job as job

    viewer = make_napari_viewer()
    a, b = _gfp_small()
    b_shift = ndi.shift(b, (4, -3, 0), order=1, mode="nearest")
    dy, dx = job.estimate_shift(a, b_shift, False, True)
    assert abs(dy + 4) <= 1 and abs(dx - 3) <= 1
    la, lb = viewer.add_image(a, name="pc"), viewer.add_image(b_shift, name="gfp", rgb=True)
    w = _fuse_widget(viewer, la, lb)
    _run(qtbot, w)
    assert any("looks shifted" in m for m in _notifications())
    assert viewer.layers["gfp_pc_derun"].metadata["derun"]["parameters"]["align_shift"] is None
    w.align_check.value = True
    _run(qtbot, w)
    shift = viewer.layers["gfp_pc_derun"].metadata["derun"]["parameters"]["align_shift"]
    assert shift == pytest.approx([dy, dx])
    ref = nd.fuse(a, job.shift_plane(b_shift, (dy, dx), True), model="admm", device="cpu", colour="overlay")
    np.testing.assert_allclose(viewer.layers["gfp_pc_derun"].data, ref, atol=1e-6)


def test_sample_data_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-derun", "gfp_pc")
    viewer.open_sample("napari-derun", "pet_mri")
    names = [ly.name for ly in viewer.layers]
    assert names == ["phase contrast", "GFP", "MRI", "PET"]
    a, b = sample_data.pet_mri()
    np.testing.assert_array_equal(viewer.layers["PET"].data, b)
    assert viewer.layers["GFP"].rgb
    # a sample for every task, each guessed as its task (issue 19: "a bundled sample pair for each task")
    from napari_derun.data.task_guess import guess_task

    for key in ("spect_mri", "ct_mri", "ivf"):
        n = len(viewer.layers)
        viewer.open_sample("napari-derun", key)
        la, lb = viewer.layers[n], viewer.layers[n + 1]
        assert guess_task(la.data, lb.data)[0] == key


def _finetune_widget(viewer, qtbot, epochs, steps):
    from napari_derun._widgets import FinetuneWidget

    w = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(w, name="Fine-tune DeRUN")
    w.start_model.value = "admm"
    w.epochs.value = epochs
    w.steps.value = steps
    w.batch.value = 1
    w.patch.value = 32
    w.lr.value = 1e-3
    return w


@pytest.mark.slow  # ~17 s / ~7 s: keeps the default suite under 2 minutes
def test_finetune_plots_registers_saves_and_reloads(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_derun import api
    from napari_derun._widgets import FuseWidget

    viewer = make_napari_viewer()
    (a0, b0), (a1, b1) = _pair_u8(48, 48, 0), _pair_u8(48, 48, 1)
    la0, lb0 = viewer.add_image(a0, name="a0"), viewer.add_image(b0, name="b0")
    la1, lb1 = viewer.add_image(a1, name="a1"), viewer.add_image(b1, name="b1")
    fw = FuseWidget(viewer)
    from qtpy.QtCore import Qt

    w = _finetune_widget(viewer, qtbot, epochs=2, steps=2)
    # driven through Qt, as a user would: pick the layers, click "Add pair", click "Start"
    w.a_combo.value, w.b_combo.value = la0, lb0
    qtbot.mouseClick(w.add_button.native, Qt.LeftButton)
    assert w.pair_list.count() == 1 and w.pairs == [(la0, lb0)]
    w.val_a.value, w.val_b.value = la1, lb1
    w.name.value = "tuned-test"
    status_seen = []
    w._relay.payload.connect(lambda ev: status_seen.append(w.status_label.value))
    qtbot.mouseClick(w.start_button.native, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT)
    assert w.status.state == "done", w.status.message
    assert any(t.startswith("Epoch 1, step 1/4") for t in status_seen), status_seen[:3]  # 1-based epochs
    assert w.plot.steps == [1, 2, 3, 4] and len(w.plot.losses) == 4
    assert w.result.info["training"]["objective"] == "fusion"
    assert np.all(np.isfinite(w.plot.losses))
    assert len(w.plot.val_losses) == 2
    name = w.registered_name
    assert name in api.list_models()
    assert name in fw.model_combo.choices  # appears at once in the Fuse widget
    path = w.save(str(tmp_path / "tuned.safetensors"))
    fz = nd.load_model(str(path), device="cpu")
    assert fz.kind == "derun"
    f_file = nd.fuse(a1, b1, model=str(path), device="cpu")
    f_mem = nd.fuse(a1, b1, model=name, device="cpu")
    np.testing.assert_allclose(f_file, f_mem, atol=1e-5)
    # "Export for bioimage.io…" through Qt (the file dialog answered): a package that loads back
    from qtpy.QtWidgets import QFileDialog

    pkg = tmp_path / "tuned.zip"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(pkg), ""))
    assert w.export_button.enabled
    # the export runs in a worker: the Qt event loop keeps running (a 20 ms timer never waits long)
    import time

    from qtpy.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    t0 = time.perf_counter()
    qtbot.mouseClick(w.export_button.native, Qt.LeftButton)
    click_s = time.perf_counter() - t0
    assert w.io_worker is not None  # the click returned while the export runs
    qtbot.waitUntil(lambda: w.io_worker is None, timeout=120_000)
    timer.stop()
    gaps = np.diff([t0] + ticks)
    export_s = ticks[-1] - t0
    assert pkg.is_file() and "bioimage.io" in w.status_label.value
    # relative bounds (no absolute timing on a shared machine): an export on the GUI thread would stall
    # the loop for the whole export; here neither the click nor any gap takes a third of it
    assert export_s > 0.5 and len(ticks) > 10, (export_s, len(ticks))
    assert click_s < export_s / 3 and gaps.max() < max(1.0, export_s / 3), (click_s, export_s, gaps.max())
    print(f"export {export_s:.1f} s, {len(ticks)} timer ticks, longest event-loop gap {gaps.max() * 1000:.0f} ms")
    np.testing.assert_array_equal(nd.fuse(a1, b1, model=str(pkg), device="cpu"), f_mem)
    forget_model(name, None)


def test_finetune_start_from_and_roles_follow_the_content(make_napari_viewer):
    """Issue 19 item 7: 'Start from' is the model the Fuse widget's auto picks (gfp_pc for GFP/PC layers with
    camera names, in either order), and the roles are the content's."""
    from napari_derun._widgets import FinetuneWidget

    viewer = make_napari_viewer()
    a, b = sample_data.gfp_pc(size=96)
    lb = viewer.add_image(b, name="03-A03", rgb=True)
    la = viewer.add_image(np.repeat(a[..., None], 3, -1), name="03-A03 [1]", rgb=True)
    w = FinetuneWidget(viewer)
    assert (w.a_combo.value, w.b_combo.value) == (la, lb)
    assert w.start_model.value == "gfp_pc"
    w.swap()
    assert (w.a_combo.value, w.b_combo.value) == (lb, la)
    w.start_model.value = "admm"  # the user's choice stays
    w.add_pair(la, lb)
    assert w.start_model.value == "admm"


def test_finetune_stop_keeps_best(make_napari_viewer, qtbot):
    from napari_derun import api

    viewer = make_napari_viewer()
    a0, b0 = _pair_u8(48, 48, 2)
    la, lb = viewer.add_image(a0, name="a"), viewer.add_image(b0, name="b")
    w = _finetune_widget(viewer, qtbot, epochs=500, steps=2)
    w.add_pair(la, lb)
    w.name.value = "tuned-stop"
    w._relay.payload.connect(lambda ev: w.stop() if ev.kind == "step" else None)
    w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT)
    assert w.status.state == "done", w.status.message
    assert 1 <= len(w.plot.losses) < 10
    assert w.result is not None and w.result.best_model is not None
    forget_model(w.registered_name, None)


@pytest.mark.parametrize("tile", [1024, 64])
def test_widget_console_and_cli_give_bit_identical_results(tmp_path, capsys, tile):
    """One pipeline (napari_derun.fuse -> engine.stacks.fuse_stack): the Fuse widget's job, the console and
    ``napari-derun fuse`` give bit-identical results on a uint16 z-stack, whole planes and tiled (96 x 80
    planes, tile 64); the widget's stage layers are the library's stages, on a stack too."""
    import dask.array as da
    import tifffile

    from napari_derun._widgets._fuse_job import FuseOptions, FusionResult, run_fusion
    from napari_derun.cli import main

    planes = [smooth_pair(96, 80, seed=s) for s in range(3)]
    a = np.stack([(300 + p[0] * (20000 + 900 * i)).astype(np.uint16) for i, p in enumerate(planes)])
    b = np.stack([(100 + p[1] * 30000).astype(np.uint16) for p in planes])
    console = nd.fuse(a, b, model="admm", device="cpu", axes="ZYX", tile=tile)
    calls = []
    widget = run_fusion(da.from_array(a, chunks=(1, 96, 80)), b, FuseOptions("admm", "cpu", tile=tile, colour="chroma"),
                        callback=lambda d, t: calls.append((d, t)))
    for name, x in (("a", a), ("b", b)):
        tifffile.imwrite(tmp_path / f"{name}.tif", x, imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "f.tif"
    assert main(["fuse", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "-o", str(out), "--model", "admm",
                 "--device", "cpu", "--tile", str(tile), "-q"]) == 0
    capsys.readouterr()
    assert isinstance(widget, FusionResult) and widget.n_stages == 9
    np.testing.assert_array_equal(widget.fused, console)
    np.testing.assert_array_equal(tifffile.imread(out), console)
    assert widget.provenance["parameters"]["tile"] == (64 if tile == 64 else None)
    assert calls and calls[-1][0] == calls[-1][1]
    if tile != 64:
        return
    # the colours the widget shows (an RGB salient image over grey structure) and the stage layers of a stack
    ga, gb = _gfp_small()
    np.testing.assert_array_equal(run_fusion(ga, gb, FuseOptions("admm", "cpu"), b_rgb=True).fused,
                                  nd.fuse(ga, gb, model="admm", device="cpu", colour="overlay"))
    res = run_fusion(a[:, :40, :36], b[:, :40, :36],
                     FuseOptions("admm", "cpu", with_stages=True, with_eh=True, colour="chroma"))
    f, st = nd.fuse(a[:, :40, :36], b[:, :40, :36], model="admm", device="cpu", axes="ZYX", return_stages=True)
    np.testing.assert_array_equal(res.fused, f)
    assert res.stages["X"].shape == (9, 3, 40, 36) and res.stages["E"].shape[:3] == (8, 4, 3)
    for k in ("X", "E", "H"):
        np.testing.assert_array_equal(res.stages[k], st[k])
    # more than two leading axes: the same planes, folded into one axis on the way through
    a5, b5 = a[:, :40, :36].reshape(3, 1, 1, 40, 36), b[:, :40, :36].reshape(3, 1, 1, 40, 36)
    res5 = run_fusion(a5, b5, FuseOptions("admm", "cpu", with_stages=True, colour="chroma"))
    np.testing.assert_array_equal(res5.fused, f.reshape(3, 1, 1, 40, 36))
    np.testing.assert_array_equal(res5.stages["X"], st["X"].reshape(9, 3, 1, 1, 40, 36))


def test_grey_gfp_with_green_colormap_stays_visible(make_napari_viewer, qtbot):
    """A grey GFP layer shown in green (the usual microscopy case) fused with the shipped gfp_pc
    model: an RGB layer with the structure in grey and the GFP in green: the green excess G - (R + B) / 2
    sits on the GFP-positive cells; the 'Plain luminance' box gives the grey brightness instead."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    a, b_rgb = sample_data.gfp_pc(size=128, n_cells=8, seed=2)
    b = b_rgb[..., 1]  # the green channel as a grey GFP image
    la = viewer.add_image(a, name="pc")
    lb = viewer.add_image(b, name="gfp", colormap="green", blending="additive")
    w = _fuse_widget(viewer, la, lb)
    w.model_combo.value = "gfp_pc"
    qtbot.mouseClick(w.run_button.native, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT)
    assert w.status.state == "done", w.status.message
    out = viewer.layers["gfp_pc_derun"]
    assert out.rgb and out.metadata["derun"]["parameters"]["colour"] == "overlay"
    f = np.asarray(out.data)
    excess = f[..., 1] - 0.5 * (f[..., 0] + f[..., 2])
    cells = b > 0.2 * b.max()
    assert cells.mean() < 0.15 and excess[cells].sum() > 0.8 * excess.sum()
    assert excess[cells].mean() > 0.2 and abs(excess[~cells].mean()) < 0.02
    w.luminance_check.value = True
    qtbot.mouseClick(w.run_button.native, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT)
    out = viewer.layers["gfp_pc_derun"]
    assert not out.rgb
    lum = np.asarray(out.data)
    pos, neg = b > 0.5 * b.max(), b <= np.median(b)
    assert lum[pos].mean() > lum[neg].mean() + 0.1
    np.testing.assert_allclose(lum, f[..., 1], atol=1e-5)  # the colour result's green channel is the brightness


def test_nd_fuse_in_napari_shows_progress_and_the_choice(make_napari_viewer, monkeypatch):
    """nd.fuse from napari's console: a napari progress bar and a notification of what 'auto' chose."""
    from napari_derun._widgets import _console

    viewer = make_napari_viewer()
    a, b = sample_data.pet_mri(size=64)
    viewer.add_image(a, name="mri")
    seen = []
    real = _console.progress

    import contextlib

    @contextlib.contextmanager
    def recording(desc):
        with real(desc) as cb:
            yield lambda d, t: (seen.append((d, t)), cb(d, t))

    monkeypatch.setattr(_console, "progress", recording)
    f = nd.fuse(a, b, device="cpu")
    assert f.shape == (64, 64, 3) and seen and seen[-1][0] == seen[-1][1]
    assert any(m.startswith("auto: medical, because") for m in _notifications())


def test_model_registered_from_the_console_appears_at_once(make_napari_viewer):
    from napari_derun import api
    from napari_derun._widgets import FuseWidget
    from napari_derun.core.model import DeRUN

    viewer = make_napari_viewer()
    fw = FuseWidget(viewer)
    viewer.window.add_dock_widget(fw)
    try:
        api.register_model("from-console", DeRUN.from_hifm())  # what a user types in napari's console
        assert "from-console" in fw.model_combo.choices
        # listed among the models, before "Checkpoint file…" (issue 19, item 11)
        assert fw.model_combo.choices[-1] == "Checkpoint file…" and fw.model_combo.choices[0] == "auto"
    finally:
        forget_model("from-console", None)


def test_auto_is_the_default_and_settings_are_remembered(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt

    from napari_derun._widgets import FuseWidget
    from napari_derun._widgets._prefs import load_prefs

    viewer = make_napari_viewer()
    a, b = sample_data.pet_mri(size=96)
    viewer.add_image(a, name="x")
    viewer.add_image(b, name="y", rgb=True)
    w = FuseWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.model_combo.value == "auto" and w.model_combo.choices[0] == "auto"
    assert w.auto_label.value.startswith("medical") and "medical slice" in w.auto_label.tooltip
    w.model_combo.value = "admm"  # an explicit choice is used, and kept as a hint for unclear content
    w.device_combo.value = "cpu"
    w.align_check.value = True
    qtbot.mouseClick(w.run_button.native, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT)
    assert viewer.layers["y_x_derun"].metadata["derun"]["model"] == "admm"
    prefs = load_prefs()
    assert prefs["model"] == "admm" and prefs["fuse_widget"]["device"] == "cpu" and prefs["fuse_widget"]["align"]
    w2 = FuseWidget(viewer)  # a new widget (or a new session): auto again, the settings as left
    assert w2.model_combo.value == "auto" and w2.device_combo.value == "cpu" and w2.align_check.value


def _open_like_file_open(viewer, a, b, first="a"):
    """Two layers named as napari names two files opened with File > Open from a camera."""
    pair = [("03-A03", a), ("03-A03 [1]", b)] if first == "a" else [("03-A03", b), ("03-A03 [1]", a)]
    for name, x in pair:
        viewer.add_image(x, name=name, rgb=x.ndim == 3)


@pytest.mark.parametrize("task,first", [("gfp_pc", "b"), ("pet_mri", "a"), ("ivf", "b")])
def test_run_with_no_other_click_gives_the_right_model_roles_and_result(make_napari_viewer, qtbot, task, first):
    """Done-when of issue 19 on the bundled samples: camera names, layers in either order; Run alone gives
    the task's shipped model, the right roles, b's bright regions brighter than their surroundings and a's
    structure visible."""
    from qtpy.QtCore import Qt

    from napari_derun._widgets import FuseWidget
    from napari_derun.data.task_guess import MODEL_OF_TASK

    a, b = sample_data.SAMPLES[task]()
    if task == "gfp_pc":
        a = np.repeat(a[..., None], 3, -1)  # phase contrast exported as RGB with equal channels
    viewer = make_napari_viewer()
    _open_like_file_open(viewer, a, b, first)
    w = FuseWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.device_combo.value = "cpu"
    qtbot.mouseClick(w.run_button.native, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT)
    assert w.status.state == "done", w.status.message
    assert np.array_equal(np.asarray(w.a_combo.value.data), a) and np.array_equal(np.asarray(w.b_combo.value.data), b)
    out = [ly for ly in viewer.layers if ly.name.endswith("_derun")][0]
    prov = out.metadata["derun"]
    assert prov["model"] == MODEL_OF_TASK[task] and prov["auto"]["task"] == task and "because" in prov["auto"]["reason"]
    _check_result(np.asarray(out.data), a, b)
    notes = _notifications()
    assert any(m.startswith(f"auto: {MODEL_OF_TASK[task]}, because") for m in notes)


def _check_result(f, a, b):
    """b's bright regions brighter than their surroundings; a's structure visible (correlation)."""
    from scipy import ndimage as ndi

    lum = lambda x: x[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114] if x.ndim == 3 else x.astype(np.float64)  # noqa: E731
    fl, al, bl = lum(f), lum(a), lum(b)
    bright = bl > np.percentile(bl, 95)
    ring = ndi.binary_dilation(bright, iterations=6) & ~ndi.binary_dilation(bright, iterations=2)
    assert fl[bright].mean() > fl[ring].mean() + 0.03, (fl[bright].mean(), fl[ring].mean())
    rest = bl <= np.percentile(bl, 50)
    ga = np.hypot(*np.gradient(ndi.gaussian_filter(al, 1)))
    gf = np.hypot(*np.gradient(ndi.gaussian_filter(fl, 1)))
    assert np.corrcoef(ga[rest], gf[rest])[0, 1] > 0.5  # a's edges are where the result's are


@pytest.mark.slow  # subprocesses / real pairs: the slow suite (the default one stays under 2 minutes)
def test_real_pairs_with_camera_names(shared_data, make_napari_viewer, qtbot):  # skip before a viewer exists
    """The same on real GFP/PC, PET/MRI and infrared/visible pairs (skips without ../shared/data)."""
    from qtpy.QtCore import Qt

    from napari_derun._widgets import FuseWidget
    from napari_derun.io.planes import read_image
    from napari_derun.data.task_guess import MODEL_OF_TASK

    for task, name in (("gfp_pc", "02-A02.jpg"), ("pet_mri", "11.png"), ("ivf", "VIFB_walking.jpg")):
        a, b = read_image(shared_data / task / "a" / name), read_image(shared_data / task / "b" / name)
        viewer = make_napari_viewer()
        _open_like_file_open(viewer, a, b, "b")
        w = FuseWidget(viewer)
        w.device_combo.value = "cpu"
        qtbot.mouseClick(w.run_button.native, Qt.LeftButton)
        qtbot.waitUntil(lambda: not w.running, timeout=WAIT)
        assert w.status.state == "done", w.status.message
        out = [ly for ly in viewer.layers if ly.name.endswith("_derun")][0]
        assert out.metadata["derun"]["model"] == MODEL_OF_TASK[task], task
        assert np.array_equal(np.asarray(w.a_combo.value.data), a), task
        _check_result(np.asarray(out.data), a, b)


def test_swap_button_and_user_roles_are_kept(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt

    from napari_derun._widgets import FuseWidget

    viewer = make_napari_viewer()
    a, b = sample_data.gfp_pc(size=64, n_cells=4, seed=1)
    la, lb = viewer.add_image(a, name="pc"), viewer.add_image(b, name="gfp", rgb=True)
    w = FuseWidget(viewer)
    assert (w.a_combo.value, w.b_combo.value) == (la, lb)
    qtbot.mouseClick(w.swap_button.native, Qt.LeftButton)
    assert (w.a_combo.value, w.b_combo.value) == (lb, la) and "swapped" in w.auto_label.value
    w.device_combo.value = "cpu"
    w.model_combo.value = "admm"
    qtbot.mouseClick(w.run_button.native, Qt.LeftButton)  # the user's roles: warned, not changed
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT)
    assert (w.a_combo.value, w.b_combo.value) == (lb, la)
    assert any("look the wrong way round" in m for m in _notifications())


def test_fuse_a_folder_with_progress_and_cancel(make_napari_viewer, qtbot, tmp_path):
    from PIL import Image
    from qtpy.QtCore import Qt

    from napari_derun._widgets import FuseWidget
    from napari_derun.io.images import read_provenance

    for sub in ("a", "b"):
        (tmp_path / "pairs" / sub).mkdir(parents=True)
    for i in range(3):
        a, b = sample_data.gfp_pc(size=64, n_cells=4, seed=i)
        Image.fromarray(a).save(tmp_path / "pairs" / "a" / f"p{i}.png")
        Image.fromarray(b).save(tmp_path / "pairs" / "b" / f"p{i}.png")
    viewer = make_napari_viewer()
    w = FuseWidget(viewer)
    w.device_combo.value = "cpu"
    w.folder.folder.value = str(tmp_path / "pairs")
    seen = []
    w.folder._relay.progress.connect(lambda d, t, n: seen.append((d, t)))
    qtbot.mouseClick(w.folder.run_button.native, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.folder.running, timeout=WAIT)
    out = tmp_path / "pairs_derun"
    assert sorted(p.name for p in out.iterdir()) == ["p0_derun.tif", "p1_derun.tif", "p2_derun.tif"]
    assert read_provenance(out / "p1_derun.tif")["model"] == "gfp_pc"
    assert seen[-1] == (3, 3) and w.folder.summary["models"] == {"gfp_pc": 3}
    # cancel after the first pair: the rest is not written
    for p in out.iterdir():
        p.unlink()
    w.folder._relay.progress.connect(lambda d, t, n: w.folder.cancel() if d == 1 else None)
    qtbot.mouseClick(w.folder.run_button.native, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.folder.running, timeout=WAIT)
    assert w.folder.summary["cancelled"] and len(list(out.iterdir())) < 3


def _controls(container):
    from magicgui.widgets import Container, Label

    for wdg in container:
        if isinstance(wdg, Container):
            yield from _controls(wdg)
        elif not isinstance(wdg, Label) or wdg.label:
            yield wdg


def test_layer_pickers_follow_the_layer_list_and_every_control_has_a_tooltip(make_napari_viewer):
    import napari

    from napari_derun._widgets import FinetuneWidget, FuseWidget

    viewer = make_napari_viewer()
    a, b = _pair_u8(32, 32)
    viewer.add_image(a, name="pc")
    lb = viewer.add_image(b, name="gfp")
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="labels")  # not an image: never offered
    fw, tw = FuseWidget(viewer), FinetuneWidget(viewer)
    viewer.window.add_dock_widget(fw)
    viewer.window.add_dock_widget(tw)
    for picker in (fw.a_combo, fw.b_combo, tw.a_combo, tw.b_combo, tw.val_a, tw.val_b):
        assert picker.annotation is napari.layers.Image  # napari's own layer picker widget
        assert [n for n in picker.choices if n is not None] == [viewer.layers["pc"], lb]
    # napari keeps them in step: a new layer, a renamed one, a removed one
    lc = viewer.add_image(a, name="dapi")
    assert lc in fw.b_combo.choices and lc in tw.val_b.choices
    lb.name = "GFP channel"
    assert fw.b_combo.native.findText("GFP channel") >= 0
    assert tw.a_combo.native.findText("GFP channel") >= 0
    viewer.layers.remove(lc)
    assert lc not in fw.a_combo.choices and lc not in tw.b_combo.choices
    # tooltips on every control of both widgets (form fields and buttons)
    missing = [w.label or w.text for c in (fw.form, fw.buttons, fw.folder, tw.form1, tw.pair_buttons, tw.form2,
                                           tw.buttons)
               for w in _controls(c) if not w.tooltip]
    assert not missing, f"controls without a tooltip: {missing}"
    assert fw.metrics_label.tooltip and "SR" in fw.metrics_label.tooltip and tw.pair_list.toolTip()
