"""Reading bioimage.io packages written by :func:`napari_derun.engine.bioimage_io.export_bioimageio`, without
``bioimageio.spec`` and without unpickling (below the model registry, which loads packages by path)."""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINT_NAME", "is_bioimageio_package", "load_bioimageio"]

#: the attachment that holds the napari-derun checkpoint inside a package
CHECKPOINT_NAME = "napari_derun.safetensors"
_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


def _rdf_location(path: Path) -> tuple[str, Path | None]:
    """("zip"|"dir", folder or None) of a package path, or raise ValueError."""
    if path.is_file() and zipfile.is_zipfile(path):
        return "zip", None
    if path.is_dir():
        return "dir", path
    if path.is_file() and path.name in _RDF_NAMES:
        return "dir", path.parent
    raise ValueError(f"{path} is not a bioimage.io model package (a .zip, a folder or its rdf.yaml)")


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """True for a ``.zip``/folder/``rdf.yaml`` that holds a bioimage.io description."""
    p = Path(path)
    try:
        kind, folder = _rdf_location(p)
    except ValueError:
        return False
    if kind == "zip":
        with zipfile.ZipFile(p) as z:
            return any(n in z.namelist() for n in _RDF_NAMES)
    return any((folder / n).is_file() for n in _RDF_NAMES)


def load_bioimageio(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """The :class:`~napari_derun.core.model.DeRUN` and its provenance from a package written by
    :func:`export_bioimageio`.

    Reads the attached napari-derun ``.safetensors`` checkpoint (no pickle). Raises ``ValueError``
    with what to do for a package of another model.
    """
    import yaml

    from .checkpoint import load_checkpoint

    p = Path(path)
    kind, folder = _rdf_location(p)
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "zip":
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
                rdf_name = next((n for n in _RDF_NAMES if n in names), None)
                if rdf_name is None:
                    raise ValueError(f"{p} is a zip file without rdf.yaml: not a bioimage.io model package")
                rdf = yaml.safe_load(z.read(rdf_name))
                if CHECKPOINT_NAME not in names:
                    raise ValueError(_foreign(p, rdf))
                ck = Path(tmp) / CHECKPOINT_NAME
                ck.write_bytes(z.read(CHECKPOINT_NAME))
        else:
            rdf_path = next((folder / n for n in _RDF_NAMES if (folder / n).is_file()), None)
            if rdf_path is None:
                raise ValueError(f"{folder} holds no rdf.yaml: not a bioimage.io model package")
            rdf = yaml.safe_load(rdf_path.read_text(encoding="utf-8"))
            ck = folder / CHECKPOINT_NAME
            if not ck.is_file():
                raise ValueError(_foreign(p, rdf))
        net, info, _ = load_checkpoint(ck)
    info = dict(info)
    info["bioimageio"] = {"package": str(p), "name": (rdf or {}).get("name"), "version": (rdf or {}).get("version")}
    return net, info


def _foreign(p: Path, rdf: Any) -> str:
    name = (rdf or {}).get("name", "?") if isinstance(rdf, dict) else "?"
    return (f"{p} is a bioimage.io package ({name!r}) without a napari-derun checkpoint ({CHECKPOINT_NAME}); "
            "napari-derun runs DeRUN packages it exported (napari-derun export). Run other models with "
            "bioimageio.core.")
