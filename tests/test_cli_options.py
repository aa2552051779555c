"""Command-line options are derived from the library functions (signature and docstring) and from
TrainConfig, not re-typed: defaults, types, choices and help agree with the source."""
from __future__ import annotations

import inspect
import typing

import pytest

from napari_derun.cli import build_parser
from napari_derun.commands._options import add_options, doc_args


def _actions(command: str) -> dict[str, object]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices[command]._actions}


def _sample(size: int = 3, names: tuple[str, ...] = ("x", "y"), mode: typing.Literal["fast", "exact"] = "fast",
            tol: float | None = None):
    """A function to derive options from.

    Args:
        size: side in pixels, with ``literal`` text and a
            continuation line (see :func:`~napari_derun.api.fuse`).
        names: which names; 5 % of them.
        mode: how to go.
        tol: tolerance.

    Returns:
        nothing.
    """


def test_doc_args_reads_google_entries_as_plain_text():
    d = doc_args(_sample)
    assert d == {"size": "side in pixels, with literal text and a continuation line (see fuse).",
                 "names": "which names; 5 %% of them.", "mode": "how to go.", "tol": "tolerance."}


def test_add_options_types_defaults_choices_from_the_signature():
    import argparse

    p = argparse.ArgumentParser()
    add_options(p, _sample, ("size", "names", "mode", "tol"))
    acts = {a.dest: a for a in p._actions}
    assert acts["size"].type is int and acts["size"].default == 3 and "(default: 3)" in acts["size"].help
    assert acts["names"].type is str and acts["names"].default == "x,y"  # a sequence: comma-separated
    assert acts["mode"].choices == ["fast", "exact"] and acts["mode"].default == "fast"
    assert acts["tol"].type is float and acts["tol"].default is None
    assert p.parse_args(["--size", "5", "--mode", "exact"]).size == 5
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "slow"])
    with pytest.raises(TypeError, match="no parameter"):
        add_options(argparse.ArgumentParser(), _sample, ("bogus",))

    def undocumented(k: int = 1):
        """No Args section."""

    with pytest.raises(ValueError, match="no entry"):
        add_options(argparse.ArgumentParser(), undocumented, ("k",))


@pytest.mark.parametrize("command, func_path, names", [
    ("fuse", "napari_derun.api:fuse", ("model", "device", "tile", "overlap", "batch_size")),
    ("evaluate", "napari_derun.evaluation.runner:evaluate", ("methods", "model", "device", "limit", "metrics")),
    ("robustness", "napari_derun.evaluation.robust:robustness", ("input", "degradations", "levels", "seed", "crop", "limit")),
    ("profile", "napari_derun.evaluation.profiling:profile", ("size", "methods", "repeats", "device")),
])
def test_command_options_match_their_function(command, func_path, names):
    import importlib

    mod, name = func_path.split(":")
    func = getattr(importlib.import_module(mod), name)
    sig = inspect.signature(func)
    acts = _actions(command)
    for n in names:
        default = sig.parameters[n].default
        if isinstance(default, (tuple, list)):
            default = ",".join(map(str, default))
        assert acts[n].default == default, (command, n)
        text = doc_args(func).get(n)
        if text and not text.startswith("as in"):
            assert acts[n].help.startswith(text), (command, n)


def test_train_options_match_trainconfig():
    from napari_derun.commands.train import CLI_FIELDS
    from napari_derun.training.config import TrainConfig

    acts = _actions("train")
    for n in CLI_FIELDS:
        field = TrainConfig.model_fields[n]
        # None unless given (then it overrides a --config file or a resumed run); the help names the default
        assert acts[n].default is None, n
        if field.default is not None:
            assert "(default: " in acts[n].help, n
        ann = field.annotation
        if typing.get_origin(ann) is typing.Literal:
            assert acts[n].choices == list(typing.get_args(ann)), n
    assert acts["strategy"].choices == ["single", "ddp"] and acts["optimizer"].choices == ["adam", "sgd"]


def test_option_types_survive_annotations_only_type_checkers_resolve():
    """``api.fuse`` annotates ``a``/``b`` with a dask type imported under TYPE_CHECKING; the other
    annotations still give the option types (``--overlap 64`` is an int, not a string)."""
    acts = _actions("fuse")
    assert acts["overlap"].type is int and acts["batch_size"].type is int and acts["tile"].type is int
    args = build_parser().parse_args(["fuse", "a.tif", "b.tif", "-o", "o.tif", "--overlap", "64"])
    assert args.overlap == 64
