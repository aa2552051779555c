"""Fuse widget: pick two image layers, a model and a device; fuse in a thread worker."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtWidgets import QProgressBar, QVBoxLayout, QWidget

from . import _fuse_job as job
from ._common import JobWidgetMixin, ProgressRelay, copy_axis_labels, copy_units, image_layers, layer_picker
from ._prefs import default_model, save_pref
from ._state import MODEL_BUS

CHECKPOINT = "Checkpoint file…"
DEVICES = ["auto", "cuda", "mps", "cpu"]
A_LABEL = "Structural (phase contrast / MRI / visible)"
B_LABEL = "Salient (GFP / PET / SPECT / infrared)"


#: tooltips, one per control
TIPS = {
    "a": "The image that carries the structure: phase contrast, MRI, visible light. "
         "Grey or RGB, 2D or nD (z, t); the same shape as the salient layer.",
    "b": "The image whose bright signal must survive: GFP or another fluorescence channel, PET, SPECT, infrared.",
    "model": "gfp_pc: fluorescence on phase contrast; medical: PET/SPECT/CT with MRI; ivf: infrared with visible; "
             "admm: the training-free solver. Models registered from the console or the Fine-tune widget appear "
             "here. See 'Which model, which metric' in the docs.",
    "checkpoint": "A .safetensors model written by napari-derun (train, Fine-tune → Save), or a bioimage.io "
                  "package it exported (.zip or rdf.yaml). Loaded without unpickling code.",
    "device": "auto: a CUDA or Apple GPU when there is one, else the CPU.",
    "in_use": "The device the next run will use.",
    "stages": "Also add one layer per unfolding stage (the fused image after each of the 9 stages), to see "
              "how the network gets there.",
    "eh": "Also add the extracted feature maps E and H of every stage and filter (large: stages × filters planes).",
    "align": "Estimate a translation of the salient image onto the structural one (phase correlation) and "
             "apply it before fusing. For pairs that are nearly, but not exactly, registered.",
    "run": "Fuse in the background; the result is a new layer '<salient>_<structural>_derun', updated in "
           "place when you run again.",
    "cancel": "Stop after the current plane or tile; nothing is added.",
    "metrics": "Of the middle plane. EN: information (entropy); AG: sharpness (average gradient); SSIM: "
               "structure kept from both inputs; PSNR: closeness to both; "
               "SR: share of the salient image's contrast kept (1 = all). A copy of one input scores well on "
               "several metrics, so read them together (docs: 'Which model, which metric').",
    "all_metrics": "Compute all eight fusion metrics of the paper (EN, SSIM, PSNR, AG, FMI, VIF, UIQI, Qp) "
                   "for the last result, in the background.",
}


def output_name(a_name: str, b_name: str) -> str:
    return f"{b_name}_{a_name}_derun"


def stage_layer_name(out: str, key: str, n: int, n_filters: int | None = None) -> str:
    """Names that say what the leading axes are: ``(X, stage 1–9)``; ``(E, filter 1–4 × stage 1–8)``."""
    if n_filters:
        return f"{out} stages ({key}, filter 1–{n_filters} × stage 1–{n})"
    return f"{out} stages ({key}, stage 1–{n})"


def _disconnect(signal, slot) -> None:
    try:
        signal.disconnect(slot)
    except Exception:
        pass




class FuseWidget(JobWidgetMixin, QWidget):
    """Fuse a structural and a salient image layer with DeRUN (or the training-free solver)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._init_job()
        self.metrics_worker = None
        self.last_result: job.FusionResult | None = None
        self.last_metrics: dict[str, float] = {}
        self._cancel = threading.Event()
        self._relay = ProgressRelay(self)
        self._relay.progress.connect(self._on_progress)

        self.a_combo = layer_picker(self.viewer, A_LABEL, TIPS["a"])
        self.b_combo = layer_picker(self.viewer, B_LABEL, TIPS["b"])
        self.model_combo = ComboBox(label="Model", choices=self._model_choices, tooltip=TIPS["model"])
        self.ckpt_file = FileEdit(label="Checkpoint", mode="r", filter="*.safetensors *.zip *.yaml", visible=False,
                                  tooltip=TIPS["checkpoint"])
        self.device_combo = ComboBox(label="Device", choices=DEVICES, value="auto", tooltip=TIPS["device"])
        self.device_label = Label(label="In use", value="", tooltip=TIPS["in_use"])
        self.stages_check = CheckBox(text="Add per-stage layers", value=False, tooltip=TIPS["stages"])
        self.eh_check = CheckBox(text="E/H maps (per stage and filter)", value=False, tooltip=TIPS["eh"])
        self.align_check = CheckBox(text="Align b to a first (shift salient onto structural)", value=False,
                                    tooltip=TIPS["align"])
        self.run_button = PushButton(text="Run", tooltip=TIPS["run"])
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip=TIPS["cancel"])
        self.status_label = Label(value="Pick two image layers and press Run.")
        self.metrics_label = Label(value="", tooltip=TIPS["metrics"])
        self.all_metrics_button = PushButton(text="All eight metrics", enabled=False, tooltip=TIPS["all_metrics"])
        self.form = Container(
            widgets=[
                self.a_combo, self.b_combo, self.model_combo, self.ckpt_file, self.device_combo,
                self.device_label, self.stages_check, self.eh_check, self.align_check,
            ]
        )
        self.buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        lay = QVBoxLayout(self)
        lay.addWidget(self.form.native)
        lay.addWidget(self.buttons.native)
        lay.addWidget(self.progress)
        lay.addWidget(self.status_label.native)
        lay.addWidget(self.metrics_label.native)
        lay.addWidget(self.all_metrics_button.native)
        lay.addStretch(1)
        self.status_label.native.setWordWrap(True)
        self.metrics_label.native.setWordWrap(True)

        self.model_combo.changed.connect(self._on_model_changed)
        self.device_combo.changed.connect(self._update_device_label)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.all_metrics_button.clicked.connect(self.compute_all_metrics)
        # napari also calls reset_choices once the widget is docked (a layer added, removed, moved or
        # renamed); these keep an undocked widget (console, scripts) in step too
        for ev in ("inserted", "removed", "renamed"):
            getattr(self.viewer.layers.events, ev).connect(self._refresh_layers)
        MODEL_BUS.changed.connect(self._on_model_registered)
        self.destroyed.connect(lambda *_: _disconnect(MODEL_BUS.changed, self._on_model_registered))
        self._model_touched = False
        self._refresh_layers()
        self._suggest_model()
        self.model_combo.changed.connect(self._mark_model_touched)
        self._update_device_label()

    # ---------------------------------------------------------------- choices
    def reset_choices(self, *_) -> None:
        """Refresh the layer and model pickers (napari calls this on layer-list changes)."""
        self._refresh_layers()
        self.refresh_models()

    def _model_choices(self, _w=None):
        from .. import api

        return api.list_models() + [CHECKPOINT]

    def _refresh_layers(self, *_):
        a, b = self.a_combo.value, self.b_combo.value
        self.a_combo.reset_choices()
        self.b_combo.reset_choices()
        layers = image_layers(self.viewer)
        # sensible defaults: first grey layer as structural, an RGB/other layer as salient
        if a is None or a not in layers:
            grey = [ly for ly in layers if not ly.rgb]
            self.a_combo.value = (grey or layers or [None])[0]
        if b is None or b not in layers:
            rest = [ly for ly in layers if ly is not self.a_combo.value]
            self.b_combo.value = (rest or [None])[0]
        if hasattr(self, "_model_touched"):
            self._suggest_model()

    def _mark_model_touched(self, *_):
        self._model_touched = True

    def _suggest_model(self) -> None:
        """Offer the model that fits the picked layers (until the user picks one)."""
        if self._model_touched:
            return
        names = [ly.name for ly in (self.a_combo.value, self.b_combo.value) if ly is not None]
        pick = default_model(names, list(self.model_combo.choices))
        if pick in self.model_combo.choices and pick != self.model_combo.value:
            blocker = self.model_combo.changed.blocked()
            with blocker:
                self.model_combo.value = pick
            self._on_model_changed(pick)

    def refresh_models(self, select: str | None = None) -> None:
        cur = select or self.model_combo.value
        self.model_combo.reset_choices()
        if cur in self.model_combo.choices:
            self.model_combo.value = cur

    def _on_model_registered(self, name: str) -> None:
        try:
            self.refresh_models()
        except RuntimeError:  # this widget's Qt side is gone (viewer closed)
            _disconnect(MODEL_BUS.changed, self._on_model_registered)

    def showEvent(self, event):  # noqa: N802 (Qt name)
        self.refresh_models()
        super().showEvent(event)

    def _on_model_changed(self, value):
        self.ckpt_file.visible = value == CHECKPOINT

    def _update_device_label(self, *_):
        from .. import api

        try:
            self.device_label.value = api.resolve_device(self.device_combo.value)
        except ValueError:
            self.device_label.value = f"{self.device_combo.value} not available here: use auto or cpu"

    # ---------------------------------------------------------------- run
    def _fail(self, message: str, warn: bool = False) -> None:
        self._set_status("error", message)
        (show_warning if warn else show_error)(message)

    def _model_arg(self):
        m = self.model_combo.value
        if m == CHECKPOINT:
            path = self.ckpt_file.value
            if not path or not str(path).strip() or not path.is_file():
                raise ValueError("choose a checkpoint file (.safetensors) with the file picker, or another model")
            return str(path)
        return m

    def run(self) -> None:
        """Check the inputs and start fusing in a background thread."""
        if self.running:
            return
        a, b = self.a_combo.value, self.b_combo.value
        if a is None or b is None:
            self._fail("Pick a structural and a salient image layer first (File > Open, or File > Open Sample).")
            return
        if a is b:
            self._fail("Structural and salient are the same layer: pick two different image layers.")
            return
        try:
            job.check_pair(a.data, b.data, a.rgb, b.rgb, a.name, b.name)
            model = self._model_arg()
            from .. import api

            device = api.resolve_device(self.device_combo.value)
        except ValueError as e:
            self._fail(f"Cannot fuse: {e}")
            return
        shift = None
        try:
            est = job.estimate_shift(a.data, b.data, a.rgb, b.rgb)
        except Exception:  # the check is advisory only
            est = (0.0, 0.0)
        self.estimated_shift = est
        if self.align_check.value:
            shift = est
        elif job.looks_misaligned(est, job.spatial_shape(a.data, a.rgb)):
            show_warning(
                f"'{b.name}' looks shifted by about ({est[0]:.1f}, {est[1]:.1f}) px relative to '{a.name}'. "
                "Tick 'Align b to a first' and run again to shift it before fusing, or register the images first."
            )
        if self.model_combo.value != CHECKPOINT:
            save_pref("model", self.model_combo.value)  # the next Fuse widget starts with it, in any session
        self._cancel.clear()
        self._layers = (a, b)
        self._opts = {"with_stages": self.stages_check.value, "with_eh": self.eh_check.value}
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.all_metrics_button.enabled = False
        self.progress.setRange(0, 0)
        self._set_status("running", "Loading the model…")

        relay = self._relay
        cancel = self._cancel

        def work():
            from .._runtime import gui_threads

            try:
                with gui_threads():  # leave a core for napari's GUI
                    return job.run_fusion(
                        a.data, b.data, model, device, a_rgb=a.rgb, b_rgb=b.rgb,
                        with_stages=self._opts["with_stages"], with_eh=self._opts["with_eh"], align_shift=shift,
                        callback=lambda d, t, m: relay.progress.emit(d, t, m), cancel=cancel, names=(a.name, b.name),
                    )
            except job.Cancelled:
                return None

        self._start_worker(work)

    def cancel(self) -> None:
        """Stop the running fusion at the next stage or plane; nothing in the viewer changes."""
        if self.running:
            self._cancel.set()
            self._set_status("running", "Cancelling…")

    def _on_progress(self, done: int, total: int, msg: str) -> None:
        if self.worker is None:
            return
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.status.done, self.status.total = done, total
        self.status_label.value = f"Fusing: {msg}"

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self.status.state == "done" else 0)

    def _on_errored(self, exc: Exception) -> None:
        self._fail(f"Fusion failed: {exc}. Check the inputs and the model, or try device 'cpu'.")

    def _on_returned(self, result) -> None:
        if result is None:
            self._set_status("cancelled", "Cancelled: nothing was changed.")
            return
        a, b = self._layers
        try:
            self._write_layers(a, b, result)
        except Exception as e:  # pragma: no cover (defensive)
            self._fail(f"Could not add the result layer: {e}")
            return
        self.last_result = result
        self.last_metrics = dict(result.metrics)
        self._show_metrics(self.last_metrics, "middle plane")
        self.all_metrics_button.enabled = result.middle is not None
        prov = result.provenance
        self._set_status(
            "done", f"Done in {result.seconds:.1f} s with {prov['model']} on {prov['device']}: "
                    f"layer '{output_name(a.name, b.name)}'."
        )

    # ---------------------------------------------------------------- layers
    def _upsert(self, name: str, data: np.ndarray, **kwargs):
        """Replace ``data``/metadata of layer ``name`` in place, or add a new image layer."""
        if name in self.viewer.layers:
            ly = self.viewer.layers[name]
            compatible = (
                ly.__class__.__name__ == "Image"
                and ly.rgb == kwargs.get("rgb", False)
                and ly.data.ndim == data.ndim
            )
            if compatible:
                ly.data = data
                for key in ("scale", "translate", "units", "axis_labels", "contrast_limits", "colormap"):
                    if key in kwargs:
                        try:
                            setattr(ly, key, kwargs[key])
                        except Exception:
                            pass
                md = dict(ly.metadata)
                md.update(kwargs.get("metadata", {}))
                ly.metadata = md
                return ly
            idx = self.viewer.layers.index(ly)
            self.viewer.layers.remove(ly)
            new = self.viewer.add_image(data, name=name, **kwargs)
            self.viewer.layers.move(self.viewer.layers.index(new), idx)
            return new
        return self.viewer.add_image(data, name=name, **kwargs)

    def _write_layers(self, a, b, result) -> None:
        out = output_name(a.name, b.name)
        scale, translate = tuple(a.scale), tuple(a.translate)
        prov = result.provenance
        kw: dict[str, Any] = {"scale": scale, "translate": translate, "rgb": result.rgb, "metadata": {"derun": prov}}
        if not result.rgb:
            kw["contrast_limits"] = (0.0, 1.0)
            # a grey salient layer shown with a colour map (GFP in green): the fused layer keeps it
            cmap = getattr(b, "colormap", None)
            if not b.rgb and cmap is not None and cmap.name not in ("gray", "grey", "gray_r", "I Forest"):
                kw["colormap"] = cmap
        copy_units(a, kw)
        copy_axis_labels(a, kw)
        self._upsert(out, result.fused, **kw)
        stages = result.stages
        if "X" in stages:
            x = stages["X"]
            kw = {"scale": (1.0,) + scale, "translate": (0.0,) + translate, "contrast_limits": (0.0, 1.0),
                  "visible": False, "metadata": {"derun": {**prov, "stage_axis": 0, "what": "X per stage"}}}
            copy_units(a, kw, 1)
            copy_axis_labels(a, kw, ("stage",))
            self._upsert(stage_layer_name(out, "X", x.shape[0]), x, **kw)
        for key in ("E", "H"):
            if key in stages:
                # (filter, stage, ..., Y, X): napari aligns layers by their last axes, so the stage axis
                # sits where the X-per-stage layer has it and one "stage" slider drives both
                v = np.moveaxis(stages[key], 1, 0)
                lim = float(np.percentile(np.abs(v), 99.5)) or 1.0
                kw = {"scale": (1.0, 1.0) + scale, "translate": (0.0, 0.0) + translate,
                      "contrast_limits": (-lim, lim), "colormap": "PiYG", "visible": False,
                      "metadata": {"derun": {**prov, "filter_axis": 0, "stage_axis": 1, "what": f"{key} per stage"}}}
                copy_units(a, kw, 2)
                copy_axis_labels(a, kw, ("filter", "stage"))
                self._upsert(stage_layer_name(out, key, v.shape[1], v.shape[0]), v, **kw)
        self.viewer.layers.selection.active = self.viewer.layers[out]

    # ---------------------------------------------------------------- metrics
    def _show_metrics(self, mets: dict[str, float], where: str) -> None:
        txt = "  ".join(f"{k} {v:.3g}" for k, v in mets.items())
        self.metrics_label.value = f"Metrics ({where}): {txt}" if txt else ""

    def compute_all_metrics(self) -> None:
        """All eight fusion metrics of the middle plane, in a worker."""
        if self.last_result is None or self.last_result.middle is None or self.metrics_worker is not None:
            return
        a_l, b_l, f_l = self.last_result.middle
        if min(f_l.shape) < 41:
            show_warning("All eight metrics need planes of at least 41 x 41 pixels (VIF uses four scales).")
            return
        self.all_metrics_button.enabled = False
        self.metrics_label.value = "Computing all eight metrics…"
        w = create_worker(job.full_metrics, a_l, b_l, f_l, _start_thread=False)

        def done(m):
            self.last_metrics = m
            self._show_metrics(m, "middle plane, all eight")

        def finished():
            self.metrics_worker = None
            self.all_metrics_button.enabled = True

        w.returned.connect(done)
        w.errored.connect(lambda e: show_error(f"Metrics failed: {e}"))
        w.finished.connect(finished)
        self.metrics_worker = w
        w.start()
