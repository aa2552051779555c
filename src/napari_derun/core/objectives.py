"""Training objectives: the paper's Eq. 14 and a fusion objective that keeps both images.

``"paper"``
    ``MSE(X, b) + γ · MSE(LGDE(X), LGDE(a))`` (Eq. 14, :func:`napari_derun.core.losses.derun_loss`).
    On images in [0, 1] this is *lowest for a copy of the structural image* ``a``: LGDE is
    invariant to intensity scaling, so it rewards no contrast, and it is 92-99 % of the
    loss (measured in docs/model.md). Kept for reproduction and comparison.

``"fusion"``
    ``w_int · L1(X, T) + w_grad · L1(|∇X|, max(|∇a|, |∇b|)) + w_ssim · (1 − (SSIM(X, a) +
    SSIM(X, b)) / 2) + w_lgde · MSE(LGDE(X), LGDE(a))``: the intensity and max-gradient
    terms of SeAFusion (Tang et al. 2022) and CDDFuse (Zhao et al. 2023), the two-source
    SSIM of SwinFusion (Ma et al. 2022), and the paper's multi-scale LGDE texture term.
    The intensity target ``T`` is ``max(a, b)`` (``target="max"``) or the *salient lift* ``a + g·relu(b − b₀)``
    (clipped to 1, gain ``g`` = ``lift_gain``, default 1),
    ``b₀`` the median of b over the whole image: the structural image everywhere, raised
    by b's signal above its background. Unlike ``max(a, b)`` it keeps b's contrast where
    ``a`` is bright everywhere (phase contrast under GFP: ``max`` keeps 8 % of the GFP
    contrast, the lift all of it); for dark-background b (PET, infrared) it is close to
    ``max(a, b)``, but adds where both are bright. Weights and targets from the sweep in
    docs/training.md.

Both take ``(x, a, b)`` as ``(B, 1, H, W)`` tensors in [0, 1] (``x`` unclipped) and an
optional per-sample background level ``b_floor`` ``(B,)`` (default: the median of each
``b``), and return ``(loss, parts)`` with the parts as floats.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import Literal

import torch
import torch.nn.functional as F

from .losses import derun_loss, lgde_loss, sobel_gradients

__all__ = ["OBJECTIVES", "TARGETS", "ObjectiveName", "FusionWeights", "fusion_loss", "objective_loss", "ssim_torch",
           "ssim_against", "salient_lift", "gradient_magnitude"]

ObjectiveName = Literal["paper", "fusion"]
OBJECTIVES: tuple[str, ...] = ("paper", "fusion")
#: intensity targets of the fusion objective
TARGETS: tuple[str, ...] = ("max", "lift")


@dataclass(frozen=True)
class FusionWeights:
    """Weights of the ``"fusion"`` objective's four terms."""

    intensity: float = 5.0
    gradient: float = 10.0
    ssim: float = 1.0
    lgde: float = 0.1
    target: str = "max"
    #: weight of the salient-contrast term: L1(X, T) weighted by b's signal above its background,
    #: ``Σ relu(b − b₀)·|X − T| / Σ relu(b − b₀)`` (0: off). It keeps b's bright objects as bright as the
    #: target where the plain L1 term, an average over every pixel, lets a denoising model dim them.
    salient: float = 0.0
    #: gain ``g`` of the lift target ``a + g·relu(b − b₀)``: above 1 the target keeps more of b's contrast
    #: where a is bright too (infrared people in daylight scenes)
    lift_gain: float = 1.0

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"unknown intensity target {self.target!r}; choose one of {', '.join(TARGETS)}")
        for k in ("intensity", "gradient", "ssim", "lgde", "salient", "lift_gain"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and v >= 0 and v == v and v != float("inf")):
                raise ValueError(f"fusion weight {k} must be a finite number >= 0, got {v!r}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _gauss_1d(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    r = torch.arange(size, dtype=dtype, device=device) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


#: sides up to this use the banded-matrix form of the window (:func:`_window_means`); beyond it the matrix
#: (``side²`` floats) is large and the convolution is used
BAND_MAX_SIDE = 2048


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """``(n, n − k + 1)`` matrix ``M`` with ``(v @ M)[j] = Σ_i g[i] v[j + i]``: the valid 1-D correlation with
    ``g`` (``k`` taps) as a product."""
    k = g.numel()
    m = n - k + 1
    # column j holds g in rows j … j + k − 1: scatter through a strided view of a flat buffer
    flat = g.new_zeros(n * m + k)
    flat.as_strided((m, k), (n + 1, 1)).copy_(g.expand(m, k))
    return flat[: n * m].view(m, n).t()


def _window_means(maps: torch.Tensor) -> torch.Tensor:
    """Gaussian (11 × 11, σ 1.5) means of every channel of ``(B, C, H, W)`` over the valid region.

    The window is separable: a 1 × 11 then an 11 × 1 correlation of all channels at once. Each is one
    batched product with a banded matrix (:func:`_band`), whose backward is a product too: on the small
    1-channel maps of the training loss oneDNN's convolution with an 11-tap kernel, and above all its
    backward, took 10× longer (22 → 1.9 ms forward + backward for 4 × 8 maps of 64², 5.1 → 0.47 s at 512²;
    docs/performance.md). Sides above :data:`BAND_MAX_SIDE` use the two convolutions.
    """
    B, C, H, W = maps.shape
    g = _gauss_1d(dtype=maps.dtype, device=maps.device)
    k = g.numel()
    if max(H, W) > BAND_MAX_SIDE:
        z = F.conv2d(maps.reshape(B * C, 1, H, W), g.view(1, 1, 1, -1))
        z = F.conv2d(z, g.view(1, 1, -1, 1))
        return z.view(B, C, H - k + 1, W - k + 1)
    z = torch.matmul(maps.reshape(B * C, H, W), _band(W, g))  # rows: (B·C, H, W − k + 1)
    z = torch.matmul(_band(H, g).t(), z)  # columns: (B·C, H − k + 1, W − k + 1)
    return z.view(B, C, H - k + 1, W - k + 1)


def ssim_against(x: torch.Tensor, *refs: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of ``x`` against each of ``refs`` (Wang et al. 2004: Gaussian 11 × 11, σ 1.5, K1 .01,
    K2 .03; valid region), differentiable. ``(B, 1, H, W)`` each → ``(len(refs), B)``; H, W ≥ 11.

    All the local moments (of ``x``, ``x²``, and per reference ``r``, ``r²``, ``x·r``) come from one
    separable window pass (:func:`_window_means`).
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    maps = [x, x * x]
    for r in refs:
        maps += [r, r * r, x * r]
    m = _window_means(torch.cat(maps, 1))
    mx = m[:, 0:1]
    sxx = m[:, 1:2] - mx**2
    out = []
    for i in range(len(refs)):
        my, myy, mxy = m[:, 2 + 3 * i: 3 + 3 * i], m[:, 3 + 3 * i: 4 + 3 * i], m[:, 4 + 3 * i: 5 + 3 * i]
        syy = myy - my**2
        sxy = mxy - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
        out.append(s.mean(dim=(1, 2, 3)))
    return torch.stack(out)


def ssim_torch(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per sample (Wang et al. 2004: Gaussian 11 × 11, σ 1.5, K1 .01, K2 .03; valid
    region), differentiable. ``(B, 1, H, W)`` → ``(B,)``; H, W ≥ 11."""
    return ssim_against(x, y, data_range=data_range)[0]


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """``|g_x| + |g_y|`` of the Sobel gradients (reflection padding), ``(B, 1, H, W)``."""
    gx, gy = sobel_gradients(x)
    return gx.abs() + gy.abs()


def salient_lift(a: torch.Tensor, b: torch.Tensor, b_floor: torch.Tensor | None = None,
                 gain: float = 1.0) -> torch.Tensor:
    """Intensity target ``clip(a + gain · relu(b − b₀), 0, 1)``; ``b₀`` = ``b_floor`` or the median of each b."""
    if b_floor is None:
        b_floor = b.flatten(1).median(dim=1).values
    b0 = b_floor.to(b).view(-1, 1, 1, 1)
    return (a + gain * F.relu(b - b0)).clamp(0.0, 1.0)


def fusion_loss(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, b_floor: torch.Tensor | None = None,
                weights: FusionWeights | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The ``"fusion"`` objective (module docstring)."""
    w = weights or FusionWeights()
    with torch.no_grad():
        target = salient_lift(a, b, b_floor, w.lift_gain) if w.target == "lift" else torch.maximum(a, b)
        gmax = torch.maximum(gradient_magnitude(a), gradient_magnitude(b))
    l_int = F.l1_loss(x, target)
    l_grad = F.l1_loss(gradient_magnitude(x), gmax)
    l_ssim = 1.0 - 0.5 * ssim_against(x, a, b).sum(0).mean()
    total = w.intensity * l_int + w.gradient * l_grad + w.ssim * l_ssim
    l_tex = None
    if w.lgde:
        l_tex = lgde_loss(x, a)
        total = total + w.lgde * l_tex
    parts = {"intensity": float(l_int.detach()), "gradient": float(l_grad.detach()),
             "ssim": float(l_ssim.detach()), "lgde": float(l_tex.detach()) if l_tex is not None else 0.0}
    if w.salient:
        with torch.no_grad():
            if b_floor is None:
                b_floor = b.flatten(1).median(dim=1).values
            s = F.relu(b - b_floor.to(b).view(-1, 1, 1, 1))
        l_sal = (s * (x - target).abs()).sum() / (s.sum() + 1e-6)
        total = total + w.salient * l_sal
        parts["salient"] = float(l_sal.detach())
    return total, parts


def objective_loss(name: str, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, gamma: float = 10.0,
                   b_floor: torch.Tensor | None = None, weights: FusionWeights | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Dispatch to the named objective (``"paper"`` or ``"fusion"``)."""
    if name == "paper":
        return derun_loss(x, a, b, gamma=gamma)
    if name == "fusion":
        return fusion_loss(x, a, b, b_floor=b_floor, weights=weights)
    raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
