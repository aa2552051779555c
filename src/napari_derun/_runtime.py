"""Process-wide settings, all in one place and all opt-in for library use.

* :func:`tune_cpu_allocator` (glibc malloc thresholds): applied by the ``napari-derun`` command line
  (a process of its own); a script or the napari console opts in by calling it, or with
  ``NAPARI_DERUN_MALLOPT=1`` in the environment. ``napari_derun.fuse`` never applies it by itself.
* :func:`hide_triton_without_cuda`: used by the Fine-tune widget only (see its docstring).

Process-level tuning for large CPU workloads:

glibc returns every freed buffer above ``M_MMAP_THRESHOLD`` to the OS, so each
large intermediate tensor is a fresh ``mmap``: page faults and page zeroing on
every operation. Measured on the 2-core development machine (``benchmarks/bench_perf.py``),
raising the threshold makes a 2048 × 2048 pass 2.1× (DeRUN) to 2.5× (ADMM) faster; it
changes nothing measurable at 1024². The cost: the process keeps freed memory
(up to its peak) for reuse instead of returning it at once.

Set ``NAPARI_DERUN_NO_MALLOPT=1`` to leave the allocator alone even where it would be applied.
"""
from __future__ import annotations

import ctypes
import os
import sys
import time

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


def maybe_tune_cpu_allocator() -> bool:
    """Apply :func:`tune_cpu_allocator` only when ``NAPARI_DERUN_MALLOPT=1`` (library opt-in)."""
    if os.environ.get("NAPARI_DERUN_MALLOPT") == "1":
        return tune_cpu_allocator()
    return False


def hide_triton_without_cuda() -> None:
    """Run torch's lazy imports (torch._dynamo, triton) in the GUI thread, once, safely.

    Creating the first optimizer imports torch._dynamo, which imports triton when it is installed.
    Loading triton's bundled LLVM after napari has created an OpenGL context on Mesa (software GL,
    e.g. Xvfb or remote desktops) crashes the process. Without a CUDA GPU triton is useless to
    torch, so it is hidden from the import system in that case (``sys.modules["triton"] = None``:
    import triton raises ImportError, which torch treats as "not installed"). With a GPU nothing
    is changed.
    """
    import torch

    if "triton" not in sys.modules and "torch._dynamo" not in sys.modules and not torch.cuda.is_available():
        sys.modules["triton"] = None
    torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)


def _proc_stat() -> tuple[int, int] | None:
    """(total, idle + iowait) CPU time of all cores from Linux's ``/proc/stat``; None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(vals[:8]), vals[3] + (vals[4] if len(vals) > 4 else 0)


def busy_cores(window: float = 0.2) -> float:
    """How many cores other work keeps busy now: on Linux from ``/proc/stat`` over ``window``
    seconds (the load of this moment), elsewhere the 1-minute load average (0 when unknown)."""
    first = _proc_stat()
    if first is not None:
        time.sleep(window)
        second = _proc_stat()
        if second is not None and second[0] > first[0]:
            total, idle = second[0] - first[0], second[1] - first[1]
            return (os.cpu_count() or 1) * max(0.0, total - idle) / total
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):  # not available (Windows)
        return 0.0


def default_threads(leave: int = 0) -> int:
    """CPU threads for torch: ``NAPARI_DERUN_THREADS`` if set, else the cores that are idle now
    (``os.cpu_count()`` minus :func:`busy_cores`, rounded), minus ``leave``, at least 1.

    Two busy threads on a core another process also wants halve throughput or worse, so the count
    follows the load instead of torch's default of all cores. Measured on the 2-core development VM
    (``benchmarks/bench_threads.py``, 512² fusion): with one competing busy core 1 thread took 2.24 s
    and 2 threads 4.90 s; on the idle machine 2 threads took 1.10 s and 1 thread 2.06 s. The load of
    the moment is read (not the 1-minute average, which lags a job that just ended or started).
    """
    env = os.environ.get("NAPARI_DERUN_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"NAPARI_DERUN_THREADS must be a whole number, got {env!r}") from None
        if n < 1:
            raise ValueError(f"NAPARI_DERUN_THREADS must be >= 1, got {n}")
        return n
    cores = os.cpu_count() or 1
    return max(1, min(cores, round(cores - busy_cores())) - leave)


def set_threads(n: int | None = None, leave: int = 0) -> int:
    """Set torch's intra-op threads to ``n`` (or :func:`default_threads`) and return the count."""
    import torch

    n = default_threads(leave) if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n


class gui_threads:
    """``with gui_threads():`` runs a widget's job with :func:`default_threads` minus one core for
    napari's GUI (at least 1), and restores torch's previous count afterwards."""

    def __init__(self, leave: int = 1):
        self.leave = leave
        self.old: int | None = None

    def __enter__(self) -> int:
        import torch

        self.old = torch.get_num_threads()
        n = default_threads(self.leave)
        torch.set_num_threads(n)
        return n

    def __exit__(self, *exc) -> bool:
        import torch

        if self.old is not None:
            torch.set_num_threads(self.old)
        return False
