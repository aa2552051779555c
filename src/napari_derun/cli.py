"""``napari-derun`` command line: subcommands live in :mod:`napari_derun.commands`."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-derun",
        description="DeRUN image fusion: fuse, evaluate, train and benchmark from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"napari-derun {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # helpers, not commands
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        p = sub.add_parser(info.name, help=mod.HELP, description=mod.DESCRIPTION)
        mod.options(p)
        p.set_defaults(func=mod.run)
    for p in sub.choices.values():  # every command: --threads
        if not any("--threads" in a.option_strings for a in p._actions):
            p.add_argument("--threads", type=int, default=None,
                           help="CPU threads for torch (default: NAPARI_DERUN_THREADS, else the idle cores)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # the command line as given (train records it)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ._runtime import tune_cpu_allocator

    tune_cpu_allocator()  # a process of our own: large CPU passes without page-fault storms (_runtime.py)
    try:
        _threads(args.threads)
        return int(args.func(args) or 0)
    except (ValueError, OSError, FloatingPointError) as e:  # OSError: missing, existing, unwritable files
        print(f"napari-derun {args.command}: error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:  # numpy's "Unable to allocate …" included
        print(f"napari-derun {args.command}: error: out of memory ({str(e)[:200] or 'MemoryError'}); "
              + _MEMORY_HINT.get(args.command, _MEMORY_HINT["fuse"]), file=sys.stderr)
        return 1
    except RuntimeError as e:
        if not _is_out_of_memory(e):
            raise
        print(f"napari-derun {args.command}: error: out of memory ({str(e).splitlines()[0][:200]}); "
              + _MEMORY_HINT.get(args.command, _MEMORY_HINT["fuse"]), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"napari-derun {args.command}: interrupted", file=sys.stderr)
        return 130


_MEMORY_HINT = {
    "fuse": "use a smaller --tile and --batch-size 1, fuse a cropped or binned copy, or close other programs",
    "train": "use a smaller --batch or --patch, or close other programs",
}


def _is_out_of_memory(e: RuntimeError) -> bool:
    """torch's CPU and GPU allocation failures (``RuntimeError`` subclasses, e.g. ``can't allocate memory``)."""
    text = str(e).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def _threads(n) -> None:
    """torch's thread count for this command, without importing torch (so that argument errors
    still come back at once): OMP_NUM_THREADS is set before torch is first imported, unless the
    user set it; if torch is already imported, its pool is resized instead."""
    import os

    if n is not None and n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    from ._runtime import default_threads

    if n is None and "OMP_NUM_THREADS" in os.environ:
        return
    n = default_threads() if n is None else n
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:
        os.environ["OMP_NUM_THREADS"] = str(n)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
