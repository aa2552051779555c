"""Fuse a whole folder of pairs (``DIR/a``, ``DIR/b``) from the Fuse widget: in a worker, with progress
and cancel, through the function the ``napari-derun fuse DIR`` command uses
(:func:`~napari_derun.file_fusion.fuse_files`)."""
from __future__ import annotations

import threading
from pathlib import Path

from magicgui.widgets import Container, FileEdit, Label, PushButton
from napari.utils.notifications import show_error, show_info

from ._common import ProgressRelay

TIPS = {
    "folder": "A folder with a/ (structural) and b/ (salient) sub-folders holding pairs with the same file names "
              "(PNG, JPEG, TIFF; stacks too). Every pair is fused with the model chosen above ('auto': per pair).",
    "run": "Fuse every pair into '<folder>_derun/<name>_derun.tif' (TIFF metadata and provenance kept; results of "
           "an earlier run are replaced, inputs never).",
    "cancel": "Stop after the current pair; the pairs already written stay.",
}


class FolderFuse(Container):
    """The 'Fuse a folder' row of the Fuse widget."""

    def __init__(self, owner):
        self.owner = owner
        self.folder = FileEdit(label="Folder of pairs", mode="d", value="", tooltip=TIPS["folder"])
        self.run_button = PushButton(text="Fuse folder", tooltip=TIPS["run"])
        self.cancel_button = PushButton(text="Cancel folder", enabled=False, tooltip=TIPS["cancel"])
        self.status = Label(value="")
        super().__init__(widgets=[self.folder, self.run_button, self.cancel_button, self.status])
        self.status.native.setWordWrap(True)
        self.worker = None
        self.summary: dict | None = None
        self._cancel = threading.Event()
        self._relay = ProgressRelay()
        self._relay.progress.connect(self._on_progress)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def output_folder(self, root: Path) -> Path:
        """Where the results go: ``<folder>_derun`` beside the input folder."""
        return root.parent / f"{root.name}_derun"

    def start(self, *_) -> None:
        """Check the folder and fuse its pairs in a worker thread."""
        if self.running:
            return
        from ..io.planes import find_pairs

        root = Path(str(self.folder.value or "")).expanduser()
        if not str(self.folder.value or "").strip() or not root.is_dir():
            show_error("Choose a folder with a/ and b/ sub-folders first.")
            return
        pairs, problems = find_pairs(root)
        if not pairs:
            show_error(f"No image pairs in {root}: expected {root}/a and {root}/b with the same file names.")
            return
        from .. import api

        try:
            device = api.resolve_device(self.owner.device_combo.value)
            model = self.owner._model_arg()
        except ValueError as e:
            show_error(f"Cannot fuse the folder: {e}")
            return
        out = self.output_folder(root)
        restore = {k: c.value for k, c in (("a", self.owner.restore_a_combo), ("b", self.owner.restore_b_combo))
                   if c.value != "none"} or None
        self._cancel.clear()
        relay, cancel = self._relay, self._cancel

        def work():
            from .._runtime import gui_threads
            from ..file_fusion import AutoModel, fuse_files
            from ..engine.tiling import FuseCancelled

            fuser = AutoModel(device, None) if model == "auto" else api.load_model(model, device)
            opts = {"tile": 1024, "overlap": None, "batch_size": None, "axes": None, "dtype": "float32",
                    "overwrite": True, "max_mb": None, "restore": restore}
            done, failed, models = [], [], {}
            out.mkdir(parents=True, exist_ok=True)

            def cb(d, t):
                if cancel.is_set():
                    raise FuseCancelled("folder fusion cancelled")

            with gui_threads():
                for i, (name, pa, pb) in enumerate(pairs):
                    if cancel.is_set():
                        break
                    relay.progress.emit(i, len(pairs), name)
                    try:
                        res = fuse_files(pa, pb, out / f"{name}_derun.tif", fuser, opts, callback=cb)
                        done.append(name)
                        models[res["model"]] = models.get(res["model"], 0) + 1
                    except FuseCancelled:
                        break
                    except Exception as e:  # noqa: BLE001 - reported, the batch goes on
                        failed.append(f"{name}: {type(e).__name__}: {e}")
            relay.progress.emit(len(done) + len(failed), len(pairs), "")
            return {"out": str(out), "done": done, "failed": failed, "models": models, "problems": problems,
                    "cancelled": cancel.is_set(), "total": len(pairs)}

        from napari.qt.threading import create_worker

        self.worker = create_worker(work, _start_thread=False)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(lambda e: show_error(f"Folder fusion failed: {e}"))
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"Fusing {len(pairs)} pairs into {out}…"
        self.worker.start()

    def cancel(self, *_) -> None:
        """Stop after the current pair."""
        if self.running:
            self._cancel.set()
            self.status.value = "Cancelling after this pair…"

    def _on_progress(self, done: int, total: int, name: str) -> None:
        bar = self.owner.progress
        bar.setRange(0, total)
        bar.setValue(done)
        if name and not self._cancel.is_set():
            self.status.value = f"Folder: pair {done + 1}/{total} ({name})"

    def _on_returned(self, summary: dict) -> None:
        self.summary = summary
        models = ", ".join(f"{m} × {n}" for m, n in summary["models"].items())
        msg = (f"{'Cancelled: ' if summary['cancelled'] else ''}fused {len(summary['done'])} of {summary['total']} "
               f"pairs into {summary['out']}" + (f" ({models})" if models else ""))
        if summary["failed"]:
            msg += f"; {len(summary['failed'])} failed: " + "; ".join(summary["failed"][:3])
        self.status.value = msg
        show_info(msg)

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
