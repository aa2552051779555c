"""Process-level tuning for large CPU workloads.

glibc returns every freed buffer above ``M_MMAP_THRESHOLD`` to the OS, so each
large intermediate tensor is a fresh ``mmap``: page faults and page zeroing on
every operation. Measured on the 2-core development machine (``benchmarks/bench_perf.py``),
raising the threshold makes a 2048 × 2048 pass 2.1× (DeRUN) to 2.5× (ADMM) faster; it
changes nothing measurable at 1024². The cost: the process keeps freed memory
(up to its peak) for reuse instead of returning it at once.

Set ``NAPARI_DERUN_NO_MALLOPT=1`` to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_state = {"done": False, "applied": False}


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB once per process; True if applied."""
    if _state["done"]:
        return _state["applied"]
    _state["done"] = True
    if not sys.platform.startswith("linux") or os.environ.get("NAPARI_DERUN_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        ok = False
    _state["applied"] = bool(ok)
    return _state["applied"]
