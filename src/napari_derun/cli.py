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
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ._runtime import tune_cpu_allocator

    tune_cpu_allocator()  # a process of our own: large CPU passes without page-fault storms (_runtime.py)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, FloatingPointError) as e:  # OSError: missing, existing, unwritable files
        print(f"napari-derun {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"napari-derun {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
