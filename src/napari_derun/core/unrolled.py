"""The unrolled solver, written once: pad → run N stages → crop, with the per-stage collection.

Both the training-free ADMM solver (:class:`~napari_derun.core.hifm.HIFMSolver`) and DeRUN
(:class:`~napari_derun.core.model.DeRUN`) are this loop; they differ only in what one stage does.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from . import ops

__all__ = ["unroll"]

#: ``stages(pads)`` yields each stage's state on the padded grid: ``{"Y": …}`` and, where they still
#: reach the result, the feature maps ``"E"`` and ``"H"``
StageFn = Callable[[tuple[int, int, int, int]], Iterator[dict[str, torch.Tensor]]]


def unroll(a: torch.Tensor, b: torch.Tensor, pad: int, stages: StageFn, n_stages: int,
           return_stages: bool = False, callback: Callable[[int, int], None] | None = None,
           ) -> torch.Tensor | tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """Run an unrolled solver on ``(B, 1, H, W)`` inputs ``a`` (V, structural) and ``b`` (U, salient).

    Args:
        a: structural image V, ``(B, 1, H, W)``.
        b: salient image U, the same shape.
        pad: reflect padding of the periodic grid (:func:`~napari_derun.core.ops.default_pad`).
        stages: yields every stage's state on the padded grid (see ``StageFn``).
        n_stages: the number of stages ``stages`` yields (for ``callback``).
        return_stages: also return the per-stage lists ``Y``, ``X`` (= Y + V), ``E``, ``H``, cropped.
        callback: ``callback(stage, n_stages)`` after every stage; it may raise to cancel.

    Returns:
        The fused ``X = Y + V`` (not clipped), or ``(X, stages)``.
    """
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 1:
        raise ValueError(f"a and b must both be (B, 1, H, W); got {tuple(a.shape)} and {tuple(b.shape)}")
    pads = ops.default_pad(*a.shape[-2:], pad)
    collected: dict[str, list[torch.Tensor]] = {"Y": [], "X": [], "E": [], "H": []}
    y = torch.zeros_like(a)
    for i, state in enumerate(stages(pads)):
        y = ops.crop(state["Y"], pads)
        if return_stages:
            collected["Y"].append(y)
            collected["X"].append(y + a)
            if "E" in state:
                collected["E"].append(ops.crop(state["E"], pads))
                collected["H"].append(ops.crop(state["H"], pads))
        if callback is not None:
            callback(i + 1, n_stages)
    x = y + a
    return (x, collected) if return_stages else x
