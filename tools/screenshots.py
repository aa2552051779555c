"""Regenerate docs/images/{fuse-widget,gfp-pc-fusion,finetune-widget}.png from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python tools/screenshots.py docs/images
"""
import sys, torch
torch.set_num_threads(1)
import napari
from qtpy.QtWidgets import QApplication
from napari_derun._widgets import FuseWidget, FinetuneWidget

out = sys.argv[1]
napari.settings.get_settings().application.gui_notification_level = "none"
v = napari.Viewer(show=True)
v.window.resize(1400, 900)
v.open_sample("napari-derun", "gfp_pc")
fw = FuseWidget(v)
v.window.add_dock_widget(fw, name="Fuse images (DeRUN)", area="right")
fw.a_combo.value = v.layers["phase contrast"]; fw.b_combo.value = v.layers["GFP"]
fw.stages_check.value = True
fw.model_combo.value = "gfp_pc"
fw.run()
app = QApplication.instance()
import time
t = time.time()
while fw.running and time.time() - t < 120:
    app.processEvents(); time.sleep(0.05)
for _ in range(20):
    app.processEvents(); time.sleep(0.02)
print(fw.status.message, fw.metrics_label.value)
st = [ly for ly in v.layers if "stages (X" in ly.name][0]
st.visible = True
v.layers["GFP"].blending = "translucent"; v.layers["GFP"].opacity = 1.0
v.dims.set_current_step(0, 0)
v.grid.enabled = True
v.grid.shape = (2, 2)
v.reset_view()
for _ in range(10):
    app.processEvents(); time.sleep(0.02)
fw.grab().save(f"{out}/fuse-widget.png")
v.screenshot(f"{out}/gfp-pc-fusion.png", canvas_only=False, flash=False)
v.grid.enabled = False
ft = FinetuneWidget(v)
v.window.add_dock_widget(ft, name="Fine-tune DeRUN", area="right")
ft.add_pair(v.layers["phase contrast"], v.layers["GFP"])
ft.start_model.value = "gfp_pc"; ft.epochs.value = 3; ft.steps.value = 4; ft.batch.value = 2; ft.patch.value = 64
ft.lr.value = 1e-4
ft.val_a.value = v.layers["phase contrast"]; ft.val_b.value = v.layers["GFP"]
ft.extra_config = {"val_metrics": False}
ft.start()
t = time.time()
while ft.running and time.time() - t < 300:
    app.processEvents(); time.sleep(0.05)
for _ in range(20):
    app.processEvents(); time.sleep(0.02)
print(ft.status.message)
ft.grab().save(f"{out}/finetune-widget.png")
v.close()
