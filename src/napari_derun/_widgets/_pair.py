"""What both widgets decide from the layers' content: which layer is structural and which salient, and
which model ``auto`` runs (:mod:`napari_derun.data.task_guess`, the same guess as ``nd.fuse`` and the CLI).

No Qt here beyond the layer objects napari hands over; the guesses are cached per pair of layer data.
"""
from __future__ import annotations

from typing import Any

from ..data.task_guess import PairGuess, analyse_pair

AUTO = "auto"


def output_name(a_name: str, b_name: str) -> str:
    """The fused layer's name (updated in place on a re-run)."""
    return f"{b_name}_{a_name}_derun"


def stage_layer_name(out: str, key: str, n: int, n_filters: int | None = None) -> str:
    """Names that say what the leading axes are: ``(X, stage 1–9)``; ``(E, filter 1–4 × stage 1–8)``."""
    if n_filters:
        return f"{out} stages ({key}, filter 1–{n_filters} × stage 1–{n})"
    return f"{out} stages ({key}, stage 1–{n})"


def layer_array(layer) -> Any:
    """The array a guess reads: the layer's data (the smallest level of a multiscale layer)."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[-1]
    return data


_CACHE: dict[tuple, PairGuess] = {}


def guess_for(a_layer, b_layer) -> PairGuess | None:
    """The content guess for two image layers as given (``a`` structural), or None when it cannot be made."""
    if a_layer is None or b_layer is None or a_layer is b_layer:
        return None
    da, db = layer_array(a_layer), layer_array(b_layer)
    key = (id(da), id(db), bool(a_layer.rgb), bool(b_layer.rgb), tuple(da.shape), tuple(db.shape))
    g = _CACHE.get(key)
    if g is None:
        try:
            g = analyse_pair(da, db, a_rgb=bool(a_layer.rgb), b_rgb=bool(b_layer.rgb))
        except Exception:  # noqa: BLE001 - a convenience: unreadable or odd data gives no guess
            return None
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = g
    return g


def default_pair(layers: list) -> tuple[Any, Any]:
    """Structural and salient layers to offer first: the first two image layers, in the roles their content
    says (a fluorescence, PET or colour-visible layer opened first goes to the right place)."""
    if not layers:
        return None, None
    if len(layers) == 1:
        return layers[0], None
    a, b = layers[0], layers[1]
    g = guess_for(a, b)
    return (b, a) if g is not None and g.swapped else (a, b)


def auto_choice(a_layer, b_layer, available: list[str], remembered: str | None = None) -> tuple[str, str, Any]:
    """``(model, message, guess)`` that ``auto`` runs on two layers; the layer names and ``remembered`` are
    hints for unclear content (:func:`napari_derun.data.task_guess.choose_model`)."""
    from ..data.task_guess import choose_model

    names = [a_layer.name, b_layer.name]
    model, g, msg = choose_model(layer_array(a_layer), layer_array(b_layer), available, names=names,
                                 remembered=remembered, a_rgb=bool(a_layer.rgb), b_rgb=bool(b_layer.rgb))
    return model, msg, g


def colormap_table(layer):
    """The colour map of a grey image layer as an ``(N, 3)`` table for ``nd.fuse(b_colormap=…)``, or None
    (RGB layers carry their own colour; grey maps give a grey result)."""
    import numpy as np

    if layer is None or layer.rgb:
        return None
    cmap = getattr(layer, "colormap", None)
    if cmap is None or getattr(cmap, "name", "gray") in ("gray", "grey", "gray_r", "I Forest"):
        return None
    try:
        return np.asarray(cmap.map(np.linspace(0.0, 1.0, 256)), np.float32)[:, :3]
    except Exception:  # noqa: BLE001
        return None
