"""Size limits checked before an image is decoded: a small file may declare a huge image.

A compressed TIFF or PNG of a few hundred kilobytes can declare 30000 × 30000 pixels or more; decoding
it, then fusing it, needs the decoded image plus a float32 result. :func:`check_declared_size` compares
that with the memory available now (``MemAvailable`` of ``/proc/meminfo``, or psutil) and refuses the
file *before* decoding, with what to do. The limit can be raised (or switched off with 0) by
``--max-image-mb`` on the command line or ``NAPARI_DERUN_MAX_IMAGE_MB`` in the environment, for a
machine where the memory will be there (swap, memory freed by then).

Without such an explicit limit, a *decompression bomb* is refused too: a file that declares more than
:data:`BOMB_BYTES` of pixels at more than :data:`BOMB_RATIO` times its own size (a 1 MB TIFF declaring
30000 × 30000 pixels: 720 times). Real images compress far less; fusing such a file would take hours
whatever the memory. A real one is read by giving the limit explicitly.

numpy only.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["ENV", "BOMB_BYTES", "BOMB_RATIO", "available_memory", "image_limit", "check_declared_size",
           "fusion_bytes"]

#: the environment variable that sets the limit in MiB (0: no limit)
ENV = "NAPARI_DERUN_MAX_IMAGE_MB"
_MB = 1 << 20
#: decoded bytes above which a file's compression ratio is checked (without an explicit limit)
BOMB_BYTES = 128 * _MB
#: decoded size / file size above which such a file is refused as a decompression bomb
BOMB_RATIO = 100


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (Linux ``MemAvailable``, else psutil), or ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform: no limit known
        return None


def image_limit(max_mb: float | None = None) -> tuple[int | None, str]:
    """``(bytes, where it comes from)``: ``max_mb`` if given, else ``NAPARI_DERUN_MAX_IMAGE_MB``, else
    the available memory; ``None`` bytes for no limit (0 given, or the memory cannot be read)."""
    if max_mb is None and os.environ.get(ENV):
        try:
            max_mb = float(os.environ[ENV])
        except ValueError:
            raise ValueError(f"{ENV} must be a number of MiB (0: no limit), got {os.environ[ENV]!r}") from None
        src = f"{ENV}={os.environ[ENV]}"
    else:
        src = f"--max-image-mb {max_mb:g}" if max_mb is not None else "the memory available now"
    if max_mb is not None:
        if max_mb < 0 or not np.isfinite(max_mb):
            raise ValueError(f"the image size limit must be >= 0 MiB (0: no limit), got {max_mb}")
        return (int(max_mb * _MB) or None), src
    return available_memory(), src


def fusion_bytes(shape, dtype) -> int:
    """What fusing an image of ``shape``/``dtype`` holds at once: the decoded image and its float32
    result (the float conversion itself is done tile by tile, see :mod:`napari_derun.engine.stacks`)."""
    n = int(np.prod([int(s) for s in shape], dtype=object))
    return n * np.dtype(dtype).itemsize + 4 * n


def _size(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / _MB:.0f} MiB"


def _file_size(n: int) -> str:
    return f"{n} byte" if n < 1024 else f"{n / 1024:.0f} kB" if n < _MB else f"{n / _MB:.1f} MB"


def check_declared_size(path, shape, dtype, max_mb: float | None = None, file_size: int | None = None) -> None:
    """``ValueError`` when an image file declaring ``shape``/``dtype`` would need more memory than the
    limit (:func:`image_limit`) to decode and fuse, or (without an explicit limit, given ``file_size``)
    looks like a decompression bomb; called before decoding."""
    need = fusion_bytes(shape, dtype)
    dims = " × ".join(str(int(s)) for s in shape)
    decoded = need - 4 * int(np.prod([int(s) for s in shape], dtype=object))
    explicit = max_mb is not None or bool(os.environ.get(ENV))
    if not explicit and file_size and decoded > BOMB_BYTES and decoded > BOMB_RATIO * file_size:
        raise ValueError(
            f"{path} is a {_file_size(file_size)} file declaring "
            f"{dims} {np.dtype(dtype).name} pixels ({_size(decoded)}, {decoded / file_size:.0f} times its size: a "
            f"decompression bomb?); refused before decoding. If it is a real image, read it with an explicit limit: "
            f"--max-image-mb MiB (or {ENV})")
    limit, src = image_limit(max_mb)
    if limit is None or need <= limit:
        return
    raise ValueError(
        f"{path} declares an image of {dims} {np.dtype(dtype).name} ({_size(need)} to decode and fuse), more "
        f"than {_size(limit)} ({src}); refused before decoding. Fuse a cropped or binned copy, or raise the limit "
        f"with --max-image-mb MiB (or {ENV}; 0 = no limit) if that memory will be there")
