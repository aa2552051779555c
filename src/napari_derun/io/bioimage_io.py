"""Reading bioimage.io packages written by :func:`napari_derun.engine.bmz_export.export_bioimageio`, without
``bioimageio.spec`` and without unpickling (below the model registry, which loads packages by path).

A package comes from elsewhere, so nothing in it is trusted: sizes are checked from the zip directory
before anything is read (rdf.yaml at most :data:`MAX_RDF_BYTES`, the checkpoint at most
:func:`max_checkpoint_bytes`, ``NAPARI_DERUN_MAX_CHECKPOINT_MB`` to raise it), members are read by
streaming with a cap, symbolic-link, encrypted and unknown-compression members are refused, and rdf.yaml
is parsed with the safe YAML loader and refused when its aliases expand beyond :data:`MAX_YAML_NODES`
nodes (a "billion laughs" document). Every problem is a ``ValueError`` that says what the package is.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINT_NAME", "is_bioimageio_package", "load_bioimageio", "MAX_RDF_BYTES", "MAX_YAML_NODES",
           "max_checkpoint_bytes", "safe_yaml"]

#: the attachment that holds the napari-derun checkpoint inside a package
CHECKPOINT_NAME = "napari_derun.safetensors"
_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: rdf.yaml of an exported package is about 11 kB
MAX_RDF_BYTES = 1 << 20
#: nodes of rdf.yaml with every alias expanded (an exported one has about a thousand)
MAX_YAML_NODES = 200_000
#: the environment variable that raises the checkpoint limit (MiB)
CHECKPOINT_ENV = "NAPARI_DERUN_MAX_CHECKPOINT_MB"
_DEFAULT_CHECKPOINT_MB = 256  # the shipped checkpoints are about 0.1 MB
#: longest package name copied into a model's provenance
MAX_NAME = 200


def max_checkpoint_bytes() -> int:
    """The largest checkpoint member read from a package: ``NAPARI_DERUN_MAX_CHECKPOINT_MB`` or 256 MiB."""
    raw = os.environ.get(CHECKPOINT_ENV)
    if not raw:
        return _DEFAULT_CHECKPOINT_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"{CHECKPOINT_ENV} must be a number of MiB, got {raw!r}") from None
    return int(mb * (1 << 20))


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
        if kind == "zip":
            with zipfile.ZipFile(p) as z:
                return any(n in z.namelist() for n in _RDF_NAMES)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, NotImplementedError):
        return False
    return any((folder / n).is_file() for n in _RDF_NAMES)


# ----------------------------------------------------------------------------------------- YAML
def _expanded_nodes(root: Any, limit: int, where: str) -> int:
    """Nodes of a composed YAML graph with every alias expanded (shared nodes counted each time they are
    used), without expanding anything; ``ValueError`` beyond ``limit`` or for a recursive alias."""
    import yaml

    size: dict[int, int] = {}
    busy: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [x for kv in node.value for x in kv]
        else:
            kids = []
        if done:
            busy.discard(key)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            if size[key] > limit:
                raise ValueError(f"{where} expands to more than {limit:,} YAML nodes (aliases repeating aliases: a "
                                 "'billion laughs' document); refused. An exported package has about a thousand")
            continue
        if key in size:
            continue
        busy.add(key)
        stack.append((node, True))
        for k in kids:
            if id(k) in busy:
                raise ValueError(f"{where} has a recursive YAML alias (a node that contains itself); refused")
            if id(k) not in size:
                stack.append((k, False))
    return size[id(root)]


def safe_yaml(data: bytes, where: str, max_nodes: int = MAX_YAML_NODES) -> Any:
    """Parse YAML ``data`` with the safe loader (no ``!!python`` tags), refusing alias bombs, deep nesting,
    bad UTF-8 and syntax errors as ``ValueError`` naming ``where``."""
    import yaml

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where} is not UTF-8 text (byte {e.start}: {e.reason}); not a bioimage.io "
                         "description") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_nodes(node, max_nodes, where)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())[:300]
        raise ValueError(f"{where} is not valid YAML for a bioimage.io description ({msg})") from None
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply; refused") from None
    finally:
        loader.dispose()


# ----------------------------------------------------------------------------------------- zip members
def _member(z: zipfile.ZipFile, name: str, limit: int, p: Path, what: str) -> zipfile.ZipInfo:
    """The directory entry of ``name``, checked before reading: a regular file, not encrypted, a known
    compression, at most ``limit`` bytes uncompressed."""
    info = z.getinfo(name)
    kind = stat.S_IFMT(info.external_attr >> 16)  # Unix file type bits (0 when the writer set none)
    if info.create_system == 3 and kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise ValueError(f"{p}: {name} is a symbolic link or special file inside the zip, not a file; refused "
                         "(napari-derun export writes plain files)")
    if info.flag_bits & 0x1:
        raise ValueError(f"{p}: {name} is encrypted; napari-derun reads unencrypted packages (napari-derun export)")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        raise ValueError(f"{p}: {name} uses an unsupported zip compression (method {info.compress_type}); "
                         "re-zip the package with plain deflate")
    if info.file_size > limit:
        hint = f"; if it is genuine, raise the limit with {CHECKPOINT_ENV}=MiB" if what == "checkpoint" else ""
        raise ValueError(f"{p}: {name} would unpack to {info.file_size:,} bytes, more than the {limit:,} allowed for "
                         f"the {what} ({info.compress_size:,} bytes compressed); refused{hint}")
    return info


def _copy_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, p: Path, out) -> str:
    """Stream a member into ``out`` (a binary file or a list of chunks), at most ``limit`` bytes; returns
    its SHA-256. Bad CRC, truncated or undecodable data is a ``ValueError``."""
    h = hashlib.sha256()
    n = 0
    try:
        with z.open(info) as src:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                n += len(chunk)
                if n > limit:
                    raise ValueError(f"{p}: {info.filename} unpacks to more than the {limit:,} bytes allowed; refused")
                h.update(chunk)
                out.append(chunk) if isinstance(out, list) else out.write(chunk)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - decompressors raise their own types (zlib.error, lzma.LZMAError…)
        raise ValueError(f"{p}: {info.filename} cannot be unpacked ({type(e).__name__}: {e}); the package is "
                         "damaged: export or download it again") from None
    return h.hexdigest()


def _read_rdf_zip(z: zipfile.ZipFile, p: Path) -> Any:
    names = z.namelist()
    rdf_name = next((n for n in _RDF_NAMES if n in names), None)
    if rdf_name is None:
        raise ValueError(f"{p} is a zip file without rdf.yaml: not a bioimage.io model package")
    chunks: list[bytes] = []
    _copy_member(z, _member(z, rdf_name, MAX_RDF_BYTES, p, "description"), MAX_RDF_BYTES, p, chunks)
    return safe_yaml(b"".join(chunks), f"{p}: {rdf_name}")


def _check_rdf(p: Path, rdf: Any) -> dict:
    if not isinstance(rdf, dict):
        raise ValueError(f"{p}: rdf.yaml holds a {type(rdf).__name__}, not a bioimage.io description (a mapping "
                         "with name, type, inputs, weights…)")
    return rdf


def _short(x: Any) -> Any:
    """A name or version from rdf.yaml as a short string (never a large or nested object)."""
    if x is None:
        return None
    if isinstance(x, str):
        s = x
    elif isinstance(x, (bool, int, float)):
        s = repr(x)
    else:
        s = f"<{type(x).__name__}>"
    return s if len(s) <= MAX_NAME else s[:MAX_NAME] + "…"


def load_bioimageio(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """The :class:`~napari_derun.core.model.DeRUN` and its provenance from a package written by
    :func:`export_bioimageio`.

    Reads the attached napari-derun ``.safetensors`` checkpoint (no pickle). Raises ``ValueError``
    with what to do for a package of another model, and for a damaged or crafted one (see the module).
    ``info["bioimageio"]["sha256"]`` is the SHA-256 of the zip file, or of the checkpoint of a folder package.
    """
    from .._files import read_bounded
    from .checkpoint import file_sha256, load_checkpoint

    p = Path(path)
    kind, folder = _rdf_location(p)
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "zip":
            try:
                with zipfile.ZipFile(p) as z:
                    rdf = _check_rdf(p, _read_rdf_zip(z, p))
                    if CHECKPOINT_NAME not in z.namelist():
                        raise ValueError(_foreign(p, rdf))
                    limit = max_checkpoint_bytes()
                    info = _member(z, CHECKPOINT_NAME, limit, p, "checkpoint")
                    ck = Path(tmp) / CHECKPOINT_NAME
                    with open(ck, "wb") as fh:
                        _copy_member(z, info, limit, p, fh)
            except (zipfile.BadZipFile, EOFError, NotImplementedError) as e:
                raise ValueError(f"{p} is a damaged zip file ({e}); export or download the package again") from None
            sha = file_sha256(p)
        else:
            rdf_path = next((folder / n for n in _RDF_NAMES if (folder / n).is_file()), None)
            if rdf_path is None:
                raise ValueError(f"{folder} holds no rdf.yaml: not a bioimage.io model package")
            rdf = _check_rdf(p, safe_yaml(read_bounded(rdf_path, MAX_RDF_BYTES, "rdf.yaml"), str(rdf_path)))
            ck = folder / CHECKPOINT_NAME
            if not ck.is_file():
                raise ValueError(_foreign(p, rdf))
            sha = file_sha256(ck)
        net, info, _ = load_checkpoint(ck)
    info = dict(info)
    info["bioimageio"] = {"package": str(p), "name": _short(rdf.get("name")), "version": _short(rdf.get("version")),
                          "sha256": sha}
    return net, info


def _foreign(p: Path, rdf: Any) -> str:
    name = _short((rdf or {}).get("name", "?")) if isinstance(rdf, dict) else "?"
    return (f"{p} is a bioimage.io package ({name!r}) without a napari-derun checkpoint ({CHECKPOINT_NAME}); "
            "napari-derun runs DeRUN packages it exported (napari-derun export). Run other models with "
            "bioimageio.core.")
