"""Fine-tune widget: train DeRUN briefly on open layer pairs and/or a folder, with a live loss plot."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, PushButton, SpinBox
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QListWidget, QProgressBar, QVBoxLayout, QWidget

from . import _pair
from ._common import JobWidgetMixin, ProgressRelay, image_layers, layer_picker
from ._fuse_widget import A_LABEL, B_LABEL

#: the Objective picker: first entry = keep the start model's own objective
OBJECTIVE_CHOICES: tuple[str, ...] = ("as the start model", "fusion", "paper")


#: tooltips, one per control
TIPS = {
    "a": "Structural image of a training pair (phase contrast, MRI, visible).",
    "b": "Salient image of the same pair (GFP, PET, SPECT, infrared); same shape as the structural one.",
    "add": "Add the two layers above as a training pair (z-stacks and time series add every plane).",
    "remove": "Remove the pairs selected in the list.",
    "pairs": "Training pairs taken from open layers.",
    "folder": "A folder with a/ (structural) and b/ (salient) sub-folders holding pairs with the same file names.",
    "val": "Optional held-back pair: with it, the epoch with the best validation mean rank over the fusion "
           "metrics is kept; without it, the last epoch.",
    "start": "The model to start from: a shipped model of the same kind of data is the usual choice. It starts "
             "as the model the Fuse widget's 'auto' picks for the pair above (decided from the images).",
    "swap": "Exchange the structural and the salient layer.",
    "objective": "What training minimises. 'as the start model' continues with the objective the model was "
                 "trained with (the shipped models: the fusion objective). 'fusion' keeps both images "
                 "(intensity, max gradient, SSIM, LGDE); 'paper' is Eq. 14 of the DeRUN paper, which prefers a "
                 "copy of the structural image.",
    "epochs": "Passes over the training patches; validation after each.",
    "steps": "Optimiser steps per epoch; 0 picks enough to see every pair.",
    "batch": "Patches per step (more: smoother, slower).",
    "lr": "Adam learning rate; 1e-4 is gentle enough to fine-tune a shipped model.",
    "patch": "Side of the random square patches cut from the pairs (pixels).",
    "name": "The tuned model is registered under this name: it appears in the Fuse widget and in "
            "napari_derun.list_models().",
    "start_button": "Train in the background; the plot shows the loss as it goes.",
    "stop": "Stop after the current step and keep the best model so far.",
    "save": "Write the tuned model as a .safetensors file (weights, settings and training history; no code).",
    "export": "Write the tuned model as a bioimage.io model package (.zip) that bioimage.io tools run and "
              "napari-derun loads back (needs pip install 'napari-derun[bioimageio]').",
}


def layer_planes(layer) -> list[np.ndarray]:
    """The (Y, X[, C]) planes of an image layer (leading axes flattened; dask computed)."""
    data = layer.data
    lead = data.shape[: data.ndim - 2 - int(layer.rgb)]
    return [np.asarray(data[idx] if idx else data) for idx in (np.ndindex(*lead) if lead else [()])]


def _warm_up_torch_imports() -> None:
    """See :func:`napari_derun._runtime.hide_triton_without_cuda` (the one place for it)."""
    from .._runtime import hide_triton_without_cuda

    hide_triton_without_cuda()


class LossPlot(QWidget):
    """Training loss per step and validation loss per epoch (matplotlib, embedded)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.6, 2.4), dpi=90, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.setMinimumHeight(180)
        self.clear()

    def clear(self):
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        self.redraw()

    def redraw(self):
        ax = self.ax
        ax.clear()
        ax.plot(self.steps, self.losses, "-", color="tab:blue", lw=1, label="train loss (step)")
        if self.val_losses:
            ax.plot(self.val_steps, self.val_losses, "o-", color="tab:orange", ms=3, label="validation loss")
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        if self.losses:
            ax.legend(fontsize=7, loc="upper right")
        self.canvas.draw_idle()


class FinetuneWidget(JobWidgetMixin, QWidget):
    """Fine-tune DeRUN on registered (structural, salient) pairs and register the result."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._init_job()
        self.result = None
        self.registered_name: str | None = None
        self.events: list[dict] = []
        self.extra_config: dict[str, Any] = {}  # further TrainConfig fields (e.g. num_threads)
        self.pairs: list[tuple[Any, Any]] = []  # (structural layer, salient layer)
        self._stop = threading.Event()
        self._relay = ProgressRelay(self)
        self._relay.payload.connect(self._on_event)

        self.a_combo = layer_picker(self.viewer, A_LABEL, TIPS["a"])
        self.b_combo = layer_picker(self.viewer, B_LABEL, TIPS["b"])
        self.swap_button = PushButton(text="Swap ↔", tooltip=TIPS["swap"])
        self.add_button = PushButton(text="Add pair", tooltip=TIPS["add"])
        self.remove_button = PushButton(text="Remove selected", tooltip=TIPS["remove"])
        self.pair_list = QListWidget()
        self.pair_list.setMaximumHeight(90)
        self.pair_list.setToolTip(TIPS["pairs"])
        self.folder = FileEdit(label="and/or folder (a/, b/)", mode="d", value="", tooltip=TIPS["folder"])
        self.val_a = layer_picker(self.viewer, "Validation structural", TIPS["val"])
        self.val_b = layer_picker(self.viewer, "Validation salient", TIPS["val"])
        self.val_a.value = self.val_b.value = None
        self.start_model = ComboBox(label="Start from", choices=self._start_choices, tooltip=TIPS["start"])
        self.objective = ComboBox(label="Objective", choices=list(OBJECTIVE_CHOICES), value=OBJECTIVE_CHOICES[0],
                                  tooltip=TIPS["objective"])
        self.epochs = SpinBox(label="Epochs", value=10, min=1, max=10000, tooltip=TIPS["epochs"])
        self.steps = SpinBox(label="Steps per epoch (0 = auto)", value=0, min=0, max=100000, tooltip=TIPS["steps"])
        self.batch = SpinBox(label="Batch", value=4, min=1, max=64, tooltip=TIPS["batch"])
        self.lr = FloatSpinBox(label="Learning rate", value=1e-4, min=1e-7, max=1.0, step=1e-5, tooltip=TIPS["lr"])
        self.lr.native.setDecimals(6)
        self.patch = SpinBox(label="Patch size", value=128, min=16, max=1024, step=16, tooltip=TIPS["patch"])
        self.name = LineEdit(label="Name of the tuned model", value="finetuned-1", tooltip=TIPS["name"])
        self.start_button = PushButton(text="Start", tooltip=TIPS["start_button"])
        self.stop_button = PushButton(text="Stop (keep best)", enabled=False, tooltip=TIPS["stop"])
        self.save_button = PushButton(text="Save…", enabled=False, tooltip=TIPS["save"])
        self.export_button = PushButton(text="Export for bioimage.io…", enabled=False, tooltip=TIPS["export"])
        self.status_label = Label(value="Add training pairs, then press Start.")
        self.status_label.native.setWordWrap(True)
        self.form1 = Container(widgets=[self.a_combo, self.b_combo])
        self.pair_buttons = Container(widgets=[self.swap_button, self.add_button, self.remove_button],
                                      layout="horizontal", labels=False)
        self.form2 = Container(widgets=[self.folder, self.val_a, self.val_b, self.start_model, self.objective, self.epochs,
                                        self.steps, self.batch, self.lr, self.patch, self.name])
        self.buttons = Container(widgets=[self.start_button, self.stop_button, self.save_button],
                                 layout="horizontal", labels=False)
        self.export_row = Container(widgets=[self.export_button], layout="horizontal", labels=False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.plot = LossPlot()
        lay = QVBoxLayout(self)
        for w in (self.form1.native, self.pair_buttons.native, self.pair_list, self.form2.native,
                  self.buttons.native, self.export_row.native, self.progress, self.status_label.native, self.plot):
            lay.addWidget(w)

        self.io_worker = None  # save / export in the background
        self._start_touched = False
        self.start_model.changed.connect(self._mark_start_touched)
        self.swap_button.clicked.connect(self.swap)
        self.add_button.clicked.connect(lambda *_: self.add_pair())  # clicked passes `checked`
        self.remove_button.clicked.connect(self._remove_selected)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(lambda: self.save())
        self.export_button.clicked.connect(lambda: self.export())
        for ev in ("inserted", "removed", "renamed"):  # napari also calls reset_choices once docked
            getattr(self.viewer.layers.events, ev).connect(self._refresh)
        self._refresh()

    def reset_choices(self, *_) -> None:
        """Refresh the layer and model pickers (napari calls this on layer-list changes)."""
        self._refresh()
        self.start_model.reset_choices()

    def _start_choices(self, _w=None):
        from .. import api

        return api.list_models()

    def _refresh(self, *_):
        for c in (self.a_combo, self.b_combo, self.val_a, self.val_b):
            c.reset_choices()
        layers = image_layers(self.viewer)
        if self.a_combo.value is None or self.b_combo.value is None:
            # the first two image layers in the roles their content says (as in the Fuse widget)
            self.a_combo.value, self.b_combo.value = _pair.default_pair(layers)
        self.pairs = [(a, b) for a, b in self.pairs if a in layers and b in layers]
        self._update_list()
        self._suggest_start()

    def _mark_start_touched(self, *_):
        if not getattr(self, "_suggesting", False):
            self._start_touched = True

    def _suggest_start(self) -> None:
        """Start from the model the Fuse widget's ``auto`` picks for the first pair (until the user picks one)."""
        if getattr(self, "_start_touched", True):
            return
        a, b = self.pairs[0] if self.pairs else (self.a_combo.value, self.b_combo.value)
        if a is None or b is None or a is b:
            return
        try:
            model, _, _ = _pair.auto_choice(a, b, [m for m in self.start_model.choices])
        except Exception:  # noqa: BLE001 - a suggestion only
            return
        if model in self.start_model.choices and model != self.start_model.value:
            self._suggesting = True
            try:
                self.start_model.value = model
            finally:
                self._suggesting = False

    def swap(self) -> None:
        """Exchange the structural and the salient layer pickers."""
        self.a_combo.value, self.b_combo.value = self.b_combo.value, self.a_combo.value

    def _update_list(self):
        self.pair_list.clear()
        for a, b in self.pairs:
            self.pair_list.addItem(f"{a.name}  ↔  {b.name}")

    def add_pair(self, a=None, b=None) -> None:
        """Add a (structural, salient) layer pair (default: the two pickers)."""
        a = a if a is not None else self.a_combo.value
        b = b if b is not None else self.b_combo.value
        if a is None or b is None or a is b:
            show_error("Pick two different image layers (structural and salient) before adding a pair.")
            return
        from ._fuse_job import check_pair

        try:
            check_pair(a.data, b.data, a.rgb, b.rgb, a.name, b.name)
        except ValueError as e:
            show_error(f"Cannot use this pair: {e}")
            return
        g = _pair.guess_for(a, b)
        if g is not None and g.swapped:
            show_info(f"'{a.name}' and '{b.name}' look the wrong way round ({g.role_reason}); if they are, remove "
                      "the pair, press 'Swap' and add it again.")
        self.pairs.append((a, b))
        self._update_list()
        self._suggest_start()

    def _remove_selected(self):
        rows = sorted({i.row() for i in self.pair_list.selectedIndexes()}, reverse=True)
        for r in rows:
            del self.pairs[r]
        self._update_list()

    def _collect(self):
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        for a, b in self.pairs:
            pairs.extend(zip(layer_planes(a), layer_planes(b)))
        train: Any = pairs
        folder = self.folder.value
        if folder is not None and str(folder).strip() not in ("", "."):
            from ..training.loop import PairDataset

            ds = PairDataset(str(folder))
            train = PairDataset.concat([PairDataset(pairs), ds], ["layers", "folder"]) if pairs else ds
        elif not pairs:
            raise ValueError("add at least one (structural, salient) layer pair, or choose a folder with a/ and b/")
        val = None
        va, vb = self.val_a.value, self.val_b.value
        if va is not None and vb is not None:
            val = list(zip(layer_planes(va), layer_planes(vb)))
        return train, val

    def start(self) -> None:
        """Start fine-tuning in a background thread."""
        if self.running:
            return
        try:
            from ..training import loop as training
        except ImportError as e:  # pragma: no cover
            show_error(f"Training is not available: {e}")
            return
        try:
            train, val = self._collect()
        except (ValueError, FileNotFoundError) as e:
            self._set_status("error", f"Cannot start: {e}")
            show_error(f"Cannot start: {e}")
            return
        self._stop.clear()
        self.events = []
        self.plot.clear()
        self.result = None
        kwargs = dict(model=self.start_model.value, epochs=int(self.epochs.value), lr=float(self.lr.value),
                      patch=int(self.patch.value), val_pairs=val, batch=int(self.batch.value))
        if self.steps.value:
            kwargs["steps_per_epoch"] = int(self.steps.value)
        if self.objective.value != OBJECTIVE_CHOICES[0]:
            kwargs["objective"] = self.objective.value
        kwargs.update(self.extra_config)
        relay, stop = self._relay, self._stop
        _warm_up_torch_imports()

        def work():
            from .._runtime import gui_threads

            with gui_threads():  # leave a core for napari's GUI
                return training.finetune(train, callback=relay.payload.emit, stop=stop, **kwargs)

        self.start_button.enabled = False
        self.stop_button.enabled = True
        self.save_button.enabled = False
        self.export_button.enabled = False
        self.progress.setRange(0, 0)
        self._set_status("running", "Preparing…")
        self._start_worker(work)

    def stop(self) -> None:
        """Stop at the next step; the best model so far is kept."""
        if self.running:
            self._stop.set()
            self._set_status("running", "Stopping after this step…")

    def _on_event(self, ev) -> None:
        self.events.append(ev)
        if ev.kind == "step":
            self.plot.steps.append(int(ev.step))
            self.plot.losses.append(float(ev.loss))
            self.progress.setRange(0, int(ev.total_steps))
            self.progress.setValue(int(ev.step))
            if not self._stop.is_set():
                self.status_label.value = (f"Epoch {ev.epoch}, step {ev.step}/{ev.total_steps}: "
                                           f"loss {ev.loss:.4g}")
        elif ev.kind == "epoch" and ev.val_loss is not None:
            self.plot.val_steps.append(self.plot.steps[-1] if self.plot.steps else 0)
            self.plot.val_losses.append(float(ev.val_loss))
        self.plot.redraw()

    def _on_errored(self, exc):
        self._set_status("error", f"Training failed: {exc}")
        show_error(f"Training failed: {exc}. Check the pairs (same size, registered) and the settings.")

    def _on_finished(self):
        self.worker = None
        self.start_button.enabled = True
        self.stop_button.enabled = False
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self.result is not None else 0)

    def _on_returned(self, result) -> None:
        from .. import api

        self.result = result
        name = (self.name.value or "finetuned").strip()
        if name in api.list_models() and name not in (self.registered_name,):
            base, i = name, 2
            while f"{base}-{i}" in api.list_models():
                i += 1
            name = f"{base}-{i}"
        info = dict(result.info)
        info["name"] = name
        try:
            api.register_model(name, result.best_model, info)
        except ValueError as e:
            show_error(str(e))
            return
        self.registered_name = name  # register_model emitted MODELS.changed: the Fuse widget lists it
        self.save_button.enabled = True
        self.export_button.enabled = True
        stopped = " (stopped early: best so far)" if getattr(result, "stopped", False) else ""
        best = (result.info.get("metrics") or {}).get("best") or {}
        kept = (" No epoch validated better than the start model, so it is kept unchanged."
                if best.get("epoch") == 0 else "")
        self._set_status("done", f"Done{stopped}: model '{name}' is now in the Fuse widget's model list.{kept}")
        show_info(f"Fine-tuned model '{name}' is ready in 'Fuse images (DeRUN)'.")

    def save(self, path: str | None = None) -> Path | None:
        """Write the best model as a checkpoint (asks for a file when ``path`` is None)."""
        asked = path is None
        path = self._output_path(path, "save", "Save fine-tuned DeRUN", ".safetensors", "DeRUN checkpoint (*.safetensors)")
        if path is None:
            return None
        if asked:
            return self._in_background("Saving", lambda: self._save_now(path), "Saved to {}")
        out = self._save_now(path)
        self._set_status("done", f"Saved to {out}")
        return out

    def _output_path(self, path: str | None, verb: str, title: str, suffix: str, filter_: str) -> str | None:
        """``path``, or one asked for in a file dialog (None: nothing tuned yet, or the dialog was cancelled)."""
        if self.result is None or self.registered_name is None:
            show_error(f"Nothing to {verb} yet: fine-tune first.")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, title, f"{self.registered_name}{suffix}", filter_)
        return path or None

    def _save_now(self, path) -> Path:
        from ..io.checkpoint import save_checkpoint

        info = dict(self.result.info)
        info["name"] = self.registered_name
        return Path(save_checkpoint(path, self.result.best_model, info))

    def _in_background(self, what: str, fn, done: str) -> None:
        """Run a long action (export, save) in a worker thread: busy progress bar, the other buttons
        disabled, the viewer responsive; ``done`` (formatted with the result) in the status line."""
        from napari.qt.threading import create_worker

        if self.io_worker is not None or self.running:
            show_error("Wait for the running action to finish.")
            return None
        for btn in (self.save_button, self.export_button, self.start_button):
            btn.enabled = False
        self.progress.setRange(0, 0)
        self.status_label.value = f"{what}…"
        w = create_worker(fn, _start_thread=False)

        def returned(out):
            if out is not None:
                self._set_status("done", done.format(out))
                show_info(done.format(out))

        def finished():
            self.io_worker = None
            for btn in (self.save_button, self.export_button, self.start_button):
                btn.enabled = True
            self.progress.setRange(0, 1)
            self.progress.setValue(1)

        w.returned.connect(returned)
        w.errored.connect(lambda e: (self._set_status("error", f"{what} failed: {e}"), show_error(f"{what} failed: {e}")))
        w.finished.connect(finished)
        self.io_worker = w
        w.start()
        return None

    def export(self, path: str | None = None) -> None:
        """Write the tuned model as a bioimage.io package in the background (asks for a file when ``path`` is
        None); the status line says when it is written (``io_worker`` is None again)."""
        path = self._output_path(path, "export", "Export for bioimage.io", ".zip", "bioimage.io model package (*.zip)")
        if path is None:
            return None
        from ..engine.bmz_export import export_bioimageio

        name = self.registered_name

        def work():
            from .._runtime import gui_threads

            with gui_threads():  # leave a core for napari's GUI
                return Path(export_bioimageio(name, path, overwrite=True))

        return self._in_background("Exporting for bioimage.io", work, "Exported the bioimage.io package {}")
