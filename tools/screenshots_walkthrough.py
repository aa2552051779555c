"""Screenshots of the 5-minute walk-through in docs/user-guide.md, from a real napari window:

    xvfb-run -a -s "-screen 0 1600x1000x24" python tools/screenshots_walkthrough.py docs/images

For each of three bundled samples (GFP + phase contrast, PET + MRI, infrared + visible): open it, dock the
Fuse widget, press Run with no other click, and save the viewer (walkthrough-<task>.png) and, for GFP,
the widget (walkthrough-widget.png).
"""
import sys
import time

import torch

torch.set_num_threads(1)
import napari  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_derun._widgets import FuseWidget  # noqa: E402

out = sys.argv[1]
napari.settings.get_settings().application.gui_notification_level = "none"
app = None


def settle(n=20):
    for _ in range(n):
        app.processEvents()
        time.sleep(0.02)


for key in ("gfp_pc", "pet_mri", "ivf"):
    v = napari.Viewer(show=True)
    app = QApplication.instance()
    v.window.resize(1400, 850)
    v.open_sample("napari-derun", key)
    fw = FuseWidget(v)
    v.window.add_dock_widget(fw, name="Fuse images (DeRUN)", area="right")
    fw.device_combo.value = "cpu"
    fw.run_button.native.click()  # Run, nothing else
    t = time.time()
    while fw.running and time.time() - t < 300:
        app.processEvents()
        time.sleep(0.05)
    settle()
    print(key, "|", fw.status.message, "|", fw.auto_label.value)
    v.grid.enabled = True
    v.grid.shape = (1, 3)
    for ly in v.layers:
        ly.visible = True
        ly.blending = "translucent"
        ly.opacity = 1.0
    v.reset_view()
    settle()
    v.screenshot(f"{out}/walkthrough-{key}.png", canvas_only=False, flash=False)
    if key == "gfp_pc":
        fw.grab().save(f"{out}/walkthrough-widget.png")
    v.close()
