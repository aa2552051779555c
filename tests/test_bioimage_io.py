"""bioimage.io model packages: export with bioimageio.spec, pass bioimageio.core's own model test,
and load back into napari-derun without unpickling."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

import napari_derun as nd
from napari_derun.engine import bmz_export as bioimage_io
from napari_derun.data import sample_data


def test_foreign_or_broken_packages_get_clear_messages(tmp_path):
    plain = tmp_path / "not_a_package.zip"
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("notes.txt", "hello")
    assert not bioimage_io.is_bioimageio_package(plain)
    with pytest.raises(ValueError, match="not a readable safetensors file.*written by napari-derun"):
        nd.load_model(str(plain))
    other = tmp_path / "unet.zip"  # a bioimage.io package of some other network: no napari-derun checkpoint
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("rdf.yaml", "name: some-unet\ntype: model\nformat_version: 0.5.4\n")
        z.writestr("weights.pt", b"\x80\x04not really")
    assert bioimage_io.is_bioimageio_package(other)
    with pytest.raises(ValueError, match="without a napari-derun checkpoint.*bioimageio.core"):
        nd.load_model(str(other))
    folder = tmp_path / "empty_dir"
    folder.mkdir()
    with pytest.raises(ValueError, match="folder without a bioimage.io package"):
        nd.load_model(str(folder))


def test_admm_has_no_weights_to_export(tmp_path):
    with pytest.raises(ValueError, match="no weights to export"):
        bioimage_io.export_bioimageio("admm", tmp_path / "x.zip")


@pytest.mark.slow  # ~30-60 s: builds a package, runs bioimageio.core's model test (state dict + TorchScript)
def test_export_passes_bioimageio_core_and_loads_back(tmp_path, capsys):
    from bioimageio.core import test_model

    from napari_derun.cli import main

    pkg = tmp_path / "gfp_pc.zip"
    assert main(["export", "gfp_pc", "-o", str(pkg)]) == 0
    summary = test_model(str(pkg))
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    names = {d.name for d in summary.details}
    assert any("torchscript" in n for n in names) and any("pytorch_state_dict" in n for n in names)
    with zipfile.ZipFile(pkg) as z:
        assert {"rdf.yaml", "cover.png", "README.md", bioimage_io.CHECKPOINT_NAME} <= set(z.namelist())
        rdf = z.read("rdf.yaml").decode()
    assert "napari_derun.core.model" in rdf and "DeRUNPair" in rdf and "Degradation-Resistant" in rdf
    # napari-derun loads the package back (from its safetensors attachment): the same fusion as the model
    a, b = sample_data.pet_mri(96)
    np.testing.assert_array_equal(nd.fuse(a, b, model=str(pkg), device="cpu"),
                                  nd.fuse(a, b, model="gfp_pc", device="cpu"))
    fz = nd.load_model(str(pkg), "cpu")
    assert fz.info["bioimageio"]["name"] == "DeRUN gfp_pc" and fz.info.get("training")
    # an existing package is not replaced without --overwrite; a folder package loads the same
    before = pkg.read_bytes()
    assert main(["export", "gfp_pc", "-o", str(pkg)]) != 0
    assert "--overwrite" in capsys.readouterr().err and pkg.read_bytes() == before
    folder = tmp_path / "gfp_pc_pkg"
    assert main(["export", "gfp_pc", "-o", str(folder)]) == 0
    np.testing.assert_array_equal(nd.fuse(a, b, model=str(folder / "rdf.yaml"), device="cpu"),
                                  nd.fuse(a, b, model="gfp_pc", device="cpu"))
