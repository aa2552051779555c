"""Crafted hostile and broken files for the reliability tests and tools/reliability_report.py.

Every file is tiny and made in milliseconds: sizes are *declared* (zip directories, TIFF and PNG
headers), never written out.
"""
from __future__ import annotations

import json
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

GOOD_RDF = "name: DeRUN test\ntype: model\nformat_version: 0.5.4\n"


def real_checkpoint_bytes() -> bytes:
    from napari_derun.core.model import DeRUN
    from napari_derun.io.checkpoint import save_checkpoint

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = save_checkpoint(Path(d) / "m.safetensors", DeRUN.from_hifm(), {"name": "test"})
        return p.read_bytes()


def package(path: Path, rdf: str | bytes = GOOD_RDF, checkpoint: bytes | None = None,
            compression=zipfile.ZIP_DEFLATED) -> Path:
    """A zip package with rdf.yaml and (optionally) the napari-derun checkpoint member."""
    with zipfile.ZipFile(path, "w", compression) as z:
        z.writestr("rdf.yaml", rdf)
        if checkpoint is not None:
            z.writestr("napari_derun.safetensors", checkpoint)
    return path


def _patch_entry(path: Path, name: str, *, file_size: int | None = None, flag_bits: int | None = None,
                 compress_type: int | None = None, crc: int | None = None) -> Path:
    """Rewrite fields of ``name``'s local header and central-directory entry in place (a lying zip)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    loc = info.header_offset
    assert data[loc : loc + 4] == b"PK\x03\x04"
    # the central entry whose local-header offset is ``loc``
    pos = 0
    while True:
        cen = data.index(b"PK\x01\x02", pos)
        if struct.unpack_from("<I", data, cen + 42)[0] == loc:
            break
        pos = cen + 4
    for base, off in ((loc, 0), (cen, 2)):  # the central entry has 2 more bytes (version made by) first
        if flag_bits is not None:
            struct.pack_into("<H", data, base + 6 + off, flag_bits)
        if compress_type is not None:
            struct.pack_into("<H", data, base + 8 + off, compress_type)
        if crc is not None:
            struct.pack_into("<I", data, base + 14 + off, crc)
        if file_size is not None:
            struct.pack_into("<I", data, base + 22 + off, file_size)
    path.write_bytes(bytes(data))
    return path


def zip_bomb(path: Path, declared: int = 3 << 30) -> Path:
    """A package whose checkpoint member declares ``declared`` bytes (the 3 GiB member of the audit)."""
    package(path, checkpoint=b"\0" * 1000)
    return _patch_entry(path, "napari_derun.safetensors", file_size=declared)


def rdf_bomb(path: Path, mb: int = 50) -> Path:
    """A package whose rdf.yaml is ``mb`` MB of comments (compressed to a few kB)."""
    line = b"# " + b"c" * 77 + b"\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("rdf.yaml", "w", force_zip64=True) as fh:
            fh.write(GOOD_RDF.encode())
            block = line * 13000  # ~1 MB
            for _ in range(mb):
                fh.write(block)
    return path


def yaml_alias_bomb(levels: int = 9) -> str:
    """The "billion laughs" rdf.yaml: 9 levels of 9 aliases, 9**9 (387 million) strings once expanded."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    lines.append(f"name: *l{levels - 1}")
    lines.append("type: model")
    return "\n".join(lines) + "\n"


def symlink_member(path: Path, member: str = "rdf.yaml", target: str = "/etc/passwd") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        info = zipfile.ZipInfo(member)
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, target)
        if member != "rdf.yaml":
            z.writestr("rdf.yaml", GOOD_RDF)
    return path


def bad_crc(path: Path) -> Path:
    package(path, checkpoint=b"\1" * 2000, compression=zipfile.ZIP_STORED)
    return _patch_entry(path, "napari_derun.safetensors", crc=0x12345678)


def encrypted(path: Path) -> Path:
    package(path, checkpoint=b"\1" * 100)
    return _patch_entry(path, "napari_derun.safetensors", flag_bits=0x1)


def unknown_compression(path: Path) -> Path:
    package(path, checkpoint=b"\1" * 100)
    return _patch_entry(path, "napari_derun.safetensors", compress_type=99)  # 99: WinZip AES


def tiff_header(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A 200-byte little-endian TIFF whose one IFD declares ``width × height`` uint8 (one strip of 16 bytes)."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 16)]
    ifd_off = 8
    data_off = ifd_off + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_off) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        if tag == 273:
            value = data_off
        fmt = "<HHIH2x" if typ == 3 else "<HHII"
        out += struct.pack(fmt, tag, typ, count, value)
    out += struct.pack("<I", 0) + b"\0" * 16
    path.write_bytes(bytes(out))
    return path


def png_header(path: Path, width: int = 14_000, height: int = 14_000) -> Path:
    """A PNG that declares ``width × height`` grey pixels (IHDR, an empty IDAT, IEND): Pillow opens it lazily."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


def tiled_zlib_tiff(path: Path, side: int = 30_000, tile: int = 256) -> Path:
    """A real tiled, zlib-compressed ``side²`` uint8 TIFF of zeros (about 1 MB for 30000²; written tile by tile)."""
    import tifffile

    n = -(-side // tile)
    z = np.zeros((tile, tile), np.uint8)
    tifffile.imwrite(path, (z for _ in range(n * n)), shape=(side, side), dtype=np.uint8, tile=(tile, tile),
                     compression="zlib")
    return path


def fake_checkpoint(path: Path, metadata: str, tensors=None) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file(tensors or {"x": torch.zeros(1)}, str(path), metadata={"napari_derun": metadata})
    return path


def uint8_checkpoint(path: Path) -> Path:
    """A checkpoint with the right names, shapes and config whose weights are uint8."""
    from napari_derun.core.model import DeRUN

    net = DeRUN.from_hifm()
    doc = {"format": "napari-derun", "format_version": 1, "config": net.config.to_dict()}
    state = {k: (v.detach() * 10).clamp(0, 255).to(__import__("torch").uint8) for k, v in net.state_dict().items()}
    return fake_checkpoint(path, json.dumps(doc), state)
