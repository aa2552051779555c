"""The LGDE (local gradient directional entropy) loss and DeRUN's total loss (Eq. 13–14).

Gradient directions ``atan2(g_y, g_x)`` of Sobel gradients (reflection padding)
are quantised into ``I = 8`` bins of 45° over the full circle (bin ``i`` is
centred at ``i · 45°``). The local entropy ``−Σ_i p_i log p_i`` of the bin
histogram in a ``B × B`` block (``B = 3``) and in a 3 × 3 block with dilation 2
(5 × 5 field, same pixel count) are averaged: the multi-scale LGDE of Eq. 13.

Hard quantisation has no gradient, so :func:`direction_histogram` bins
*softly*: a direction between two bin centres is split between them by linear
interpolation on the circle (as SIFT descriptors do). On directions that fall
exactly on bin centres the soft and hard versions agree.

Flat pixels (``g_x² + g_y² < eps²``) are given direction 0 (the convention of
``atan2(g_y, g_x + eps)``) with zero gradient, so there are no NaNs on flat images.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["sobel_gradients", "direction_histogram", "local_entropy", "lgde", "lgde_loss", "derun_loss"]

_EPS = 1e-6


def sobel_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel ``(g_x, g_y)`` of ``(B, 1, H, W)`` with reflection padding (replicate when H or W < 2)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device) / 8.0
    k = torch.stack([kx, kx.t()])[:, None]
    mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode=mode), k)
    return g[:, :1], g[:, 1:]


def direction_histogram(x: torch.Tensor, n_bins: int = 8, soft: bool = True) -> torch.Tensor:
    """Per-pixel direction bin memberships.

    Args:
        x: ``(B, 1, H, W)`` image.
        n_bins: I, number of direction bins over 360°.
        soft: linear interpolation between the two nearest bins (differentiable);
            ``False`` gives one-hot nearest-bin membership.

    Returns:
        ``(B, I, H, W)`` memberships summing to 1 over the bin axis.
    """
    gx, gy = sobel_gradients(x)
    flat = (gx**2 + gy**2) < _EPS**2
    gxs = torch.where(flat, torch.ones_like(gx), gx)
    gys = torch.where(flat, torch.zeros_like(gy), gy)
    ang = torch.atan2(gys, gxs)  # (-pi, pi]
    pos = torch.remainder(ang / (2.0 * math.pi / n_bins), n_bins)  # [0, I)
    bins = torch.arange(n_bins, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    if not soft:
        idx = torch.remainder(torch.round(pos), n_bins)
        return (idx == bins).to(x.dtype)
    # circular distance to each bin centre, triangular kernel of width 1 bin
    d = torch.remainder(pos - bins, n_bins)
    d = torch.minimum(d, n_bins - d)
    return torch.clamp(1.0 - d, min=0.0)


def local_entropy(memberships: torch.Tensor, block: int = 3, dilation: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) of the local direction histogram in each block.

    Args:
        memberships: ``(B, I, H, W)`` from :func:`direction_histogram`.
        block: B, the block side (odd).
        dilation: dilation of the block (2 gives a 5 × 5 field with 3 × 3 samples).

    Returns:
        ``(B, 1, H, W)``.
    """
    r = (block // 2) * dilation
    mode = "reflect" if min(memberships.shape[-2:]) > r else "replicate"
    p = F.pad(memberships, (r, r, r, r), mode=mode)
    Ibins = memberships.shape[1]
    w = torch.full((Ibins, 1, block, block), 1.0 / (block * block), dtype=p.dtype, device=p.device)
    p = F.conv2d(p, w, dilation=dilation, groups=Ibins)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1, keepdim=True)
    return ent


def lgde(x: torch.Tensor, n_bins: int = 8, block: int = 3, soft: bool = True) -> torch.Tensor:
    """Multi-scale LGDE map (Eq. 13): mean of the B × B and dilated B × B local entropies.

    ``x``: ``(B, 1, H, W)`` → ``(B, 1, H, W)``.
    """
    h = direction_histogram(x, n_bins, soft=soft)
    return 0.5 * (local_entropy(h, block, 1) + local_entropy(h, block, 2))


def lgde_loss(x: torch.Tensor, v: torch.Tensor, n_bins: int = 8, block: int = 3) -> torch.Tensor:
    """``MSE(LGDE(X), LGDE(V))``, the target V detached."""
    with torch.no_grad():
        target = lgde(v, n_bins, block)
    return F.mse_loss(lgde(x, n_bins, block), target)


def derun_loss(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, gamma: float = 10.0, n_bins: int = 8, block: int = 3
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of Eq. 14: ``MSE(X, U) + γ · MSE(LGDE(X), LGDE(V))``.

    Args:
        x: fused ``(B, 1, H, W)``; a: V (structural); b: U (salient).

    Returns:
        ``(loss, parts)`` with ``parts = {"pixel": …, "lgde": …}`` as floats.
    """
    pix = F.mse_loss(x, b)
    tex = lgde_loss(x, a, n_bins, block)
    loss = pix + gamma * tex
    return loss, {"pixel": float(pix.detach()), "lgde": float(tex.detach())}
