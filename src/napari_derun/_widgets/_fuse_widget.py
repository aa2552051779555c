"""Fuse widget: pick two image layers, a model and a device; fuse in a thread worker."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QProgressBar, QVBoxLayout, QWidget

from . import _fuse_job as job
from . import _pair
from ._pair import output_name, stage_layer_name
from ._common import JobWidgetMixin, ProgressRelay, copy_axis_labels, copy_units, image_layers, layer_picker
from ._common import disconnect_quietly as _disconnect
from ._prefs import default_model, load_prefs, save_pref  # noqa: F401  (default_model: used by scripts and tests)
from ..api import MODELS
from ..engine.tiling import FuseCancelled

AUTO = _pair.AUTO
#: the settings the Fuse widget remembers between sessions (preferences key ``fuse_widget``)
REMEMBERED = ("device", "stages", "eh", "align", "luminance")

CHECKPOINT = "Checkpoint file…"
DEVICES = ["auto", "cuda", "mps", "cpu"]
A_LABEL = "Structural (phase contrast / MRI / visible)"
B_LABEL = "Salient (GFP / PET / SPECT / infrared)"


from ._tips import FUSE_TIPS as TIPS  # noqa: E402  (one tooltip per control)
from ..data.restoration import OFFERED as RESTORE_CHOICES  # noqa: E402  (the restorations offered)


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
        self.swap_button = PushButton(text="Swap structural ↔ salient", tooltip=TIPS["swap"])
        self.model_combo = ComboBox(label="Model", choices=self._model_choices, tooltip=TIPS["model"])
        self.auto_label = Label(label="auto runs", value="", tooltip=TIPS["auto"])
        self.luminance_check = CheckBox(text="Plain luminance result (grey)", value=False, tooltip=TIPS["luminance"])
        self.ckpt_file = FileEdit(label="Checkpoint", mode="r", filter="*.safetensors *.zip *.yaml", visible=False,
                                  tooltip=TIPS["checkpoint"])
        self.device_combo = ComboBox(label="Device", choices=DEVICES, value="auto", tooltip=TIPS["device"])
        self.device_label = Label(label="In use", value="", tooltip=TIPS["in_use"])
        self.stages_check = CheckBox(text="Add per-stage layers", value=False, tooltip=TIPS["stages"])
        self.eh_check = CheckBox(text="E/H maps (per stage and filter)", value=False, tooltip=TIPS["eh"])
        self.align_check = CheckBox(text="Align b to a first (shift salient onto structural)", value=False,
                                    tooltip=TIPS["align"])
        self.restore_a_combo, self.restore_b_combo = (
            ComboBox(label=f"Restore {k} first", choices=RESTORE_CHOICES, value="none", tooltip=TIPS["restore"])
            for k in "ab")
        self.run_button = PushButton(text="Run", tooltip=TIPS["run"])
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip=TIPS["cancel"])
        self.status_label = Label(value="Pick two image layers and press Run.")
        self.metrics_label = Label(value="", tooltip=TIPS["metrics"])
        self.all_metrics_button = PushButton(text="All eight metrics", enabled=False, tooltip=TIPS["all_metrics"])
        self.form = Container(
            widgets=[
                self.a_combo, self.b_combo, self.swap_button, self.model_combo, self.auto_label, self.ckpt_file,
                self.device_combo, self.device_label, self.luminance_check, self.stages_check, self.eh_check,
                self.align_check, self.restore_a_combo, self.restore_b_combo,
            ]
        )
        self.buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        from ._folder import FolderFuse

        self.folder = FolderFuse(self)
        lay = QVBoxLayout(self)
        for w in (self.form.native, self.buttons.native, self.progress, self.status_label.native,
                  self.metrics_label.native, self.all_metrics_button.native, self.folder.native):
            lay.addWidget(w)
        lay.addStretch(1)
        for label in (self.status_label, self.metrics_label):
            label.native.setWordWrap(True)

        self.model_combo.changed.connect(self._on_model_changed)
        self.device_combo.changed.connect(self._update_device_label)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.all_metrics_button.clicked.connect(self.compute_all_metrics)
        self.swap_button.clicked.connect(self.swap)
        self._roles_touched = False
        self._setting_roles = False
        self._warned: set[tuple[str, ...]] = set()
        for c in (self.a_combo, self.b_combo):
            c.changed.connect(self._on_role_picked)
        # napari also calls reset_choices once the widget is docked (a layer added, removed, moved or
        # renamed); these keep an undocked widget (console, scripts) in step too
        for ev in ("inserted", "removed", "renamed"):
            getattr(self.viewer.layers.events, ev).connect(self._refresh_layers)
        MODELS.changed.connect(self._on_model_registered)
        self.destroyed.connect(lambda *_: _disconnect(MODELS.changed, self._on_model_registered))
        self._refresh_layers()
        self.model_combo.value = AUTO
        self._restore_settings()
        self._update_device_label()
        self._update_auto_label()

    # ---------------------------------------------------------------- choices
    def reset_choices(self, *_) -> None:
        """Refresh the layer and model pickers (napari calls this on layer-list changes)."""
        self._refresh_layers()
        self.refresh_models()

    def _model_choices(self, _w=None):
        from .. import api

        return [AUTO] + api.list_models() + [CHECKPOINT]

    def _refresh_layers(self, *_):
        a, b = self.a_combo.value, self.b_combo.value
        self._setting_roles = True
        try:
            self.a_combo.reset_choices()
            self.b_combo.reset_choices()
            layers = image_layers(self.viewer)
            if a not in layers or b not in layers or a is None or b is None:
                # first two image layers, in the roles their content says (not "the first grey layer")
                da, db = _pair.default_pair(layers)
                keep_a = a is not None and a in layers
                keep_b = b is not None and b in layers and b is not a
                if keep_a and not keep_b:
                    rest = [ly for ly in layers if ly is not a]
                    da, db = _pair.default_pair([a] + rest)
                elif keep_b and not keep_a:
                    rest = [ly for ly in layers if ly is not b]
                    da, db = _pair.default_pair([b] + rest)
                self.a_combo.value, self.b_combo.value = da, db
        finally:
            self._setting_roles = False
        if hasattr(self, "auto_label"):
            self._update_auto_label()

    def _on_role_picked(self, *_):
        if not self._setting_roles:
            self._roles_touched = True  # the user's roles: never swapped behind their back
        self._update_auto_label()

    def swap(self) -> None:
        """Exchange the structural and the salient layer (the Swap button)."""
        a, b = self.a_combo.value, self.b_combo.value
        self._setting_roles = True
        try:
            self.a_combo.value, self.b_combo.value = b, a
        finally:
            self._setting_roles = False
        self._roles_touched = True
        self._update_auto_label()

    def _auto(self):
        """(model, message, guess) of ``auto`` for the picked layers, or None."""
        a, b = self.a_combo.value, self.b_combo.value
        if a is None or b is None or a is b:
            return None
        available = [m for m in self.model_combo.choices if m not in (AUTO, CHECKPOINT)]
        last = load_prefs().get("model")
        return _pair.auto_choice(a, b, available, remembered=last if isinstance(last, str) else None)

    def _update_auto_label(self, *_):
        if not hasattr(self, "auto_label"):
            return
        self.auto_label.visible = self.model_combo.value == AUTO
        try:
            choice = self._auto()
        except Exception:  # noqa: BLE001 - the label is a hint
            choice = None
        if choice is None:
            self.auto_label.value = "(pick two image layers)"
            self.auto_label.tooltip = TIPS["auto"]
            return
        model, msg, g = choice
        self.auto_label.value = f"{model} ({g.task})" + ("; roles look swapped" if g.swapped else "")
        self.auto_label.tooltip = f"{msg}\n\n{TIPS['auto']}"

    def _restore_settings(self) -> None:
        saved = load_prefs().get("fuse_widget")
        if not isinstance(saved, dict):
            return
        widgets = {"device": self.device_combo, "stages": self.stages_check, "eh": self.eh_check,
                   "align": self.align_check, "luminance": self.luminance_check}
        for key, w in widgets.items():
            v = saved.get(key)
            try:
                if v is not None and (key != "device" or v in DEVICES):
                    w.value = v
            except Exception:  # noqa: BLE001 - a stale preference is ignored
                pass

    def _save_settings(self) -> None:
        save_pref("fuse_widget", {"device": self.device_combo.value, "stages": bool(self.stages_check.value),
                                  "eh": bool(self.eh_check.value), "align": bool(self.align_check.value),
                                  "luminance": bool(self.luminance_check.value)})

    def refresh_models(self, select: str | None = None) -> None:
        cur = select or self.model_combo.value
        with self.model_combo.changed.blocked():
            # magicgui appends new choices after the old ones: start from an empty list so that a model
            # registered later is listed among the models, before "Checkpoint file…"
            self.model_combo.native.clear()
            self.model_combo.reset_choices()
            self.model_combo.value = cur if cur in self.model_combo.choices else AUTO

    def _on_model_registered(self, name: str) -> None:
        try:
            self.refresh_models()
        except RuntimeError:  # this widget's Qt side is gone (viewer closed)
            _disconnect(MODELS.changed, self._on_model_registered)

    def showEvent(self, event):  # noqa: N802 (Qt name)
        self.refresh_models()
        super().showEvent(event)

    def _on_model_changed(self, value):
        self.ckpt_file.visible = value == CHECKPOINT
        if hasattr(self, "auto_label"):
            self.auto_label.visible = value == AUTO

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
        auto = None
        g = _pair.guess_for(a, b)
        if g is not None and g.swapped:
            if self._roles_touched:
                show_warning(f"'{a.name}' and '{b.name}' look the wrong way round: {g.role_reason}. "
                             "Press 'Swap' if they are.")
            else:
                self.swap()
                self._roles_touched = False  # swapped from the content: still not the user's choice
                a, b = b, a
                show_info(f"Swapped the roles: '{a.name}' is now the structural and '{b.name}' the salient image "
                          f"({g.role_reason}). Press 'Swap' to undo.")
        if model == AUTO:
            model, msg, guess = self._auto()
            auto = {"model": model, "task": guess.task, "reason": msg}
            show_info(f"{msg} Pick another model in the Model list to override.")
        shift = self._alignment(a, b)
        hint = job.noise_hint(a.data, b.data, a.rgb, b.rgb, (a.name, b.name), (self.restore_a_combo.value,
                                                                                self.restore_b_combo.value))
        if hint and (a.name, b.name, "noise") not in self._warned:  # once per pair of layers
            self._warned.add((a.name, b.name, "noise"))
            show_info(hint)
        if self.model_combo.value not in (CHECKPOINT, AUTO):
            save_pref("model", self.model_combo.value)  # a hint for 'auto' when the content is unclear
        self._save_settings()
        colour = "luminance" if self.luminance_check.value else "overlay"
        cmap = _pair.colormap_table(b)
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
        restore = {k: c.value for k, c in (("a", self.restore_a_combo), ("b", self.restore_b_combo))
                   if c.value != "none"}
        options = job.FuseOptions(model, device, with_stages=self._opts["with_stages"], with_eh=self._opts["with_eh"],
                                  align_shift=shift, colour=colour, b_colormap=cmap, auto=auto,
                                  restore=restore or None)

        def work():
            from .._runtime import gui_threads

            try:
                with gui_threads():  # leave a core for napari's GUI
                    return job.run_fusion(
                        a.data, b.data, options, a_rgb=a.rgb, b_rgb=b.rgb, names=(a.name, b.name),
                        callback=lambda d, t: relay.progress.emit(d, t, f"stage work {d}/{t}"), cancel=cancel,
                    )
            except FuseCancelled:
                return None

        self._start_worker(work)

    def _alignment(self, a, b):
        """The shift to apply to ``b`` (when 'Align b to a first' is ticked), else None; warns (once per pair)
        when the layers look misaligned."""
        try:
            est = job.estimate_shift(a.data, b.data, a.rgb, b.rgb)
        except Exception:  # the check is advisory only
            est = (0.0, 0.0)
        self.estimated_shift = est
        if self.align_check.value:
            return est
        if (job.looks_misaligned(est, job.spatial_shape(a.data, a.rgb)) and (a.name, b.name) not in self._warned
                and job.shift_is_consistent(a.data, b.data, a.rgb, b.rgb, est)):
            self._warned.add((a.name, b.name))  # once per pair of layers, not on every run
            show_warning(
                f"'{b.name}' looks shifted by about ({est[0]:.1f}, {est[1]:.1f}) px relative to '{a.name}'. "
                "Tick 'Align b to a first' and run again to shift it before fusing, or register the images first."
            )
        return None

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
            kw["colormap"] = "gray"
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
        from ..evaluation.metrics import MIN_METRIC_SIDE

        if min(f_l.shape) < MIN_METRIC_SIDE:
            show_warning(f"All eight metrics need planes of at least {MIN_METRIC_SIDE} x {MIN_METRIC_SIDE} pixels "
                         "(VIF uses four scales).")
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
