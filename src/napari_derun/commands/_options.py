"""Command-line options derived from what a command calls, not re-typed: from a library function
(the default and type from its signature, the help text from the ``Args:`` section of its Google-style
docstring, :func:`add_options`) or from a pydantic settings model (each field's annotation, default
and description, :func:`add_model_options`). One place states what an argument means; the CLI, the
API reference and ``help()`` all show it.

Only torch-free modules are read here (the CLI checks its arguments before importing torch).
"""
from __future__ import annotations

import argparse
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["doc_args", "add_options", "add_model_options"]

_SECTION = re.compile(r"^(Args|Arguments|Parameters):\s*$")
_ENTRY = re.compile(r"^ {4}(\w+)(?: \([^)]*\))?:\s*(.*)$")
_AS_IN = re.compile(r"^as in \S+\.?$")


def _plain(text: str) -> str:
    """reST roles and literals as plain text (``:func:`~a.b.c``` → ``c``), ``%`` escaped for argparse."""
    text = re.sub(r":\w+:`~([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = re.sub(r":\w+:`([^`]+)`", lambda m: m.group(1), text)
    text = text.replace("``", "").replace("**", "")
    return " ".join(text.split()).replace("%", "%%")


def doc_args(func: Callable[..., Any]) -> dict[str, str]:
    """The ``Args:`` entries of ``func``'s Google-style docstring: ``{name: one line of plain text}``."""
    out: dict[str, str] = {}
    in_args, cur = False, None
    for line in (inspect.getdoc(func) or "").splitlines():
        if _SECTION.match(line):
            in_args, cur = True, None
            continue
        if not in_args:
            continue
        if line.strip() and not line.startswith(" "):  # the next section
            in_args = False
            continue
        m = _ENTRY.match(line)
        if m:
            cur = m.group(1)
            out[cur] = m.group(2)
        elif cur and line.strip():
            out[cur] += " " + line.strip()
    return {k: _plain(v) for k, v in out.items()}


def _cli_type(annotation: Any, default: Any) -> tuple[Callable[[str], Any] | None, list[str] | None, Any]:
    """(argparse type, choices, CLI default) for a parameter's annotation and default."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return str, [str(a) for a in typing.get_args(annotation)], default
    if origin in (typing.Union, types.UnionType):
        lits = [a for a in args if typing.get_origin(a) is typing.Literal]
        if lits:
            return _cli_type(lits[0], default)
        iterable = any(typing.get_origin(a) in (Iterable, Sequence, list, tuple) for a in args)
        scalars = [a for a in args if a in (int, float, str)]
        if iterable or len(scalars) != 1:
            return str, None, _join(default)
        annotation = scalars[0]
    if annotation in (int, float):
        return annotation, None, default
    if isinstance(default, (tuple, list)):
        return str, None, _join(default)
    return str, None, default


def _join(default: Any) -> Any:
    """A sequence default as the comma-separated string the CLI takes."""
    return ",".join(str(x) for x in default) if isinstance(default, (tuple, list)) else default


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    """The annotations of ``func``, each resolved on its own (one that names a type imported only for
    type checkers, such as a dask array, does not hide the others)."""
    out = {}
    for name, ann in inspect.get_annotations(func).items():
        if isinstance(ann, str):
            try:
                ann = eval(ann, dict(vars(typing)), dict(func.__globals__))  # noqa: S307 (our own annotations)
            except Exception:
                continue
        out[name] = ann
    return out


def add_options(parser: argparse.ArgumentParser, func: Callable[..., Any], names: Iterable[str], *,
                docs_from: Sequence[Callable[..., Any]] = (), **overrides: dict[str, Any]) -> None:
    """Add ``--name`` options for the parameters ``names`` of ``func``.

    Args:
        parser: the command's parser.
        func: the library function the command calls; each option's type and default come from
            its signature, its help from its docstring.
        names: parameter names of ``func`` (``batch_size`` becomes ``--batch-size``).
        docs_from: functions whose ``Args:`` entries fill in those ``func`` does not describe.
        **overrides: per parameter, ``add_argument`` keywords that replace the derived ones (for
            example ``choices`` where the annotation is a plain ``str``, or ``flags``: the option strings).
    """
    sig = inspect.signature(func)
    hints = _hints(func)
    docs: dict[str, str] = {}
    for f in (*reversed(list(docs_from)), func):
        # "as in evaluate." points to another function: keep the text found there
        docs.update({k: v for k, v in doc_args(f).items() if not (_AS_IN.match(v) and k in docs)})
    for name in names:
        if name not in sig.parameters:
            raise TypeError(f"{func.__qualname__} has no parameter {name!r}")
        default = sig.parameters[name].default
        if default is inspect.Parameter.empty:
            default = None
        typ, choices, cli_default = _cli_type(hints.get(name, type(default) if default is not None else str),
                                              default)
        kw: dict[str, Any] = {"type": typ, "default": cli_default, "choices": choices}
        over = dict(overrides.get(name, {}))
        flags = over.pop("flags", ("--" + name.replace("_", "-"),))
        kw.update(over)
        text = kw.get("help") or docs.get(name)
        if not text:
            raise ValueError(f"{func.__qualname__}: parameter {name!r} has no entry in the docstring's Args")
        if kw["default"] is not None and "default" not in text.lower():
            text += f" (default: {kw['default']})"
        kw["help"] = text
        parser.add_argument(*flags, **kw)


def add_model_options(parser: argparse.ArgumentParser, model: Any, names: Iterable[str],
                      defaults: bool = True) -> None:
    """Add ``--field-name`` options for the fields ``names`` of a pydantic model class (type, choices and
    default from the field's annotation and default, help from its description). With ``defaults=False``
    every option defaults to None (the help still names the field's default), so that the options given
    on the command line are exactly those that are not None."""
    for name in names:
        info = model.model_fields[name]
        typ, choices, default = _cli_type(info.annotation, info.default)
        text = (info.description or name).replace("%", "%%")
        if default is not None:
            text += f" (default: {default})"
        parser.add_argument("--" + name.replace("_", "-"), type=typ, default=default if defaults else None,
                            choices=choices, help=text)
