"""The npe2 manifest is valid, discoverable, and its contributions import without Qt errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import npe2

MANIFEST = Path(__file__).resolve().parents[1] / "src" / "napari_derun" / "napari.yaml"


def test_manifest_validates():
    pm = npe2.PluginManifest.from_file(MANIFEST)
    assert pm.name == "napari-derun"
    widgets = {w.display_name for w in pm.contributions.widgets}
    assert widgets == {"Fuse images (DeRUN)", "Fine-tune DeRUN"}
    samples = {s.display_name: s.key for s in pm.contributions.sample_data}
    assert samples == {"GFP + phase contrast (synthetic)": "gfp_pc", "PET + MRI (synthetic)": "pet_mri",
                       "SPECT + MRI (synthetic)": "spect_mri", "CT + MRI (synthetic)": "ct_mri",
                       "Infrared + visible (synthetic)": "ivf"}
    # every command points to an importable python_name
    for cmd in pm.contributions.commands:
        mod, attr = cmd.python_name.split(":")
        assert callable(getattr(__import__(mod, fromlist=[attr]), attr)), cmd.python_name


def test_npe2_validate_cli():
    exe = Path(sys.executable).with_name("npe2")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "npe2"]
    r = subprocess.run(cmd + ["validate", "napari-derun"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid" in (r.stdout + r.stderr).lower()


def test_discovered_by_plugin_manager():
    pm = npe2.PluginManager.instance()
    pm.discover()
    assert "napari-derun" in pm._manifests
    assert pm.get_manifest("napari-derun").display_name == "DeRUN image fusion"


def test_sample_functions_return_layer_tuples():
    from napari_derun.data import sample_data
    from napari_derun._sample import make_gfp_pc, make_pet_mri

    for fn, ref in ((make_gfp_pc, sample_data.gfp_pc), (make_pet_mri, sample_data.pet_mri)):
        out = fn()
        a, b = ref()
        assert [t[2] for t in out] == ["image", "image"]
        np.testing.assert_array_equal(out[0][0], a)
        np.testing.assert_array_equal(out[1][0], b)
        assert out[1][1]["rgb"] is True and out[0][1]["name"] != out[1][1]["name"]


def test_core_import_stays_qt_free():
    code = (
        "import sys, napari_derun, napari_derun._sample, napari_derun._widgets._fuse_job as j; "
        "bad=[m for m in ('qtpy','PyQt5','napari','magicgui','torch') if m in sys.modules]; print(bad)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
