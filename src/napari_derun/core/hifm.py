"""HIFM, the heterogeneous image fusion model of DeRUN (Eq. 3), and its ADMM solver (Eq. 5).

With ``a = V`` (structural: visible, MRI, phase contrast), ``b = U`` (salient:
infrared, PET, SPECT, GFP) and the residual map ``M = U - V``, HIFM solves

    min_Y  ½‖Y − M‖² + Σ_l λ_l ‖∇_l Y‖₁ + Σ_k μ_k φ(∇_k (Y − M)),
    φ(a) = Σ_i log(1 + θ a_i²),

and returns the fused image ``X = Y + V``. The ℓ1 term (``∇Y = ∇X − ∇V``) pulls the
texture of X towards V and suppresses noise in the residual; the non-convex φ
term keeps sparse salient texture of U (``∇(Y − M) = ∇X − ∇U``).

The solver is training-free: ADMM with the splitting ``E_l = ∇_l Y`` and
``H_k = ∇_k(Y − M)`` and (unscaled) multipliers ``F_l``, ``G_k``. Each
iteration is

    Y ← (I + Σρ_l∇_lᵀ∇_l + Στ_k∇_kᵀ∇_k)⁻¹ (M + Σ∇_lᵀ(ρ_l E_l − F_l) + Σ∇_kᵀ(τ_k(∇_k M + H_k) − G_k))
    E_l ← soft(∇_l Y + F_l/ρ_l, λ_l/ρ_l);        F_l ← F_l + ζ_l (∇_l Y − E_l)
    H_k ← H_k − σ_k [μ_k φ'(H_k) − G_k − τ_k(∇_k(Y − M) − H_k)]
    G_k ← G_k + ω_k (∇_k(Y − M) − H_k)

The Y step is solved exactly in Fourier space on a reflect-padded, periodic
domain (see :mod:`napari_derun.core.ops`). DeRUN (:mod:`napari_derun.core.model`) unfolds
exactly these iterations; an untrained DeRUN reproduces this solver.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from typing import Any, ClassVar

import numpy as np
import torch

from . import ops

__all__ = ["HIFMParams", "HIFMSolver", "hifm_energy", "hifm_admm", "admm_iterations", "soft_threshold"]


class StrictConfig(BaseModel):
    """A pydantic settings model read from stored mappings (checkpoints, dask workers): :meth:`from_dict`
    refuses a non-mapping and unknown keys with a message naming them."""

    #: how messages name the model's keys
    WHAT: ClassVar[str] = "settings"

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ValueError(f"{cls.WHAT} must be a mapping, got {type(d).__name__}")
        unknown = set(d) - set(cls.model_fields)
        if unknown:
            raise ValueError(f"unknown keys in {cls.WHAT}: {sorted(unknown)}")
        return cls(**d)


class HIFMParams(StrictConfig):
    """Parameters of the HIFM model and its ADMM solver (images scaled to [0, 1]).

    A pydantic model: types and ranges are checked on creation (a checkpoint's or a dask worker's
    parameters included), and unknown keys are refused.

    Attributes:
        lam: λ, weight of the ℓ1 texture/denoising term (all ∇_l).
        mu: μ, weight of the salient-texture term φ (all ∇_k).
        theta: θ, sparsity of φ(a) = Σ log(1 + θ a²).
        rho: ρ, ADMM penalty of E = ∇_l Y.
        tau: τ, ADMM penalty of H = ∇_k (Y − M).
        zeta: ζ, step of the F multiplier (``None``: ρ, the standard ADMM step).
        omega: ω, step of the G multiplier (``None``: τ).
        sigma: σ, gradient step of the H update (``None``: 1 / (τ + 2μθ), the
            inverse of the Lipschitz constant of the H objective).
        n_iter: number of ADMM iterations (DeRUN's stage number N), 1–64.
        pad: reflect padding (pixels) before the periodic solve.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lam: float = Field(0.3, ge=0, allow_inf_nan=False)
    mu: float = Field(0.005, ge=0, allow_inf_nan=False)
    theta: float = Field(100.0, gt=0, allow_inf_nan=False)
    rho: float = Field(1.0, gt=0, allow_inf_nan=False)
    tau: float = Field(1.0, gt=0, allow_inf_nan=False)
    zeta: float | None = Field(None, gt=0, allow_inf_nan=False)
    omega: float | None = Field(None, gt=0, allow_inf_nan=False)
    sigma: float | None = Field(None, gt=0, allow_inf_nan=False)
    n_iter: int = Field(9, ge=1, le=64)
    pad: int = Field(16, ge=0, le=4096)

    def resolved(self) -> "HIFMParams":
        """A copy with ``zeta``, ``omega`` and ``sigma`` filled in."""
        d = self.to_dict()
        if d["zeta"] is None:
            d["zeta"] = d["rho"]
        if d["omega"] is None:
            d["omega"] = d["tau"]
        if d["sigma"] is None:
            d["sigma"] = 1.0 / (d["tau"] + 2.0 * d["mu"] * d["theta"])
        return HIFMParams(**d)

    WHAT: ClassVar[str] = "HIFM parameters"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def soft_threshold(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """``sign(x) · max(|x| − t, 0)``."""
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0.0)


def hifm_energy(
    y: torch.Tensor,
    m: torch.Tensor,
    params: HIFMParams,
    bank_l: torch.Tensor | None = None,
    bank_k: torch.Tensor | None = None,
) -> torch.Tensor:
    """HIFM energy (Eq. 3) of ``Y`` for residual ``M`` on the periodic domain.

    Args:
        y, m: ``(B, 1, H, W)``.

    Returns:
        ``(B,)`` energies (sums over pixels).
    """
    if bank_l is None:
        bank_l = ops.sobel_bank(y.dtype, y.device)
    if bank_k is None:
        bank_k = ops.sobel_bank(y.dtype, y.device)
    fid = 0.5 * ((y - m) ** 2).sum(dim=(1, 2, 3))
    l1 = params.lam * ops.filter_bank_apply(y, bank_l).abs().sum(dim=(1, 2, 3))
    d = ops.filter_bank_apply(y - m, bank_k)
    phi = params.mu * torch.log1p(params.theta * d**2).sum(dim=(1, 2, 3))
    return fid + l1 + phi


def admm_iterations(
    m: torch.Tensor,
    params: HIFMParams,
    bank_l: torch.Tensor | None = None,
    bank_k: torch.Tensor | None = None,
):
    """Yield the ADMM state after each iteration, on the (already periodic) grid of ``m``.

    Args:
        m: ``(B, 1, H, W)`` residual map ``U − V`` (already padded if wanted).

    Yields:
        ``params.n_iter`` dicts ``{"Y": (B, 1, H, W), "E": (B, L, H, W), "H": (B, K, H, W)}``.
    """
    p = params.resolved()
    dt, dev = m.dtype, m.device
    if bank_l is None:
        bank_l = ops.sobel_bank(dt, dev)
    if bank_k is None:
        bank_k = ops.sobel_bank(dt, dev)
    L, K = bank_l.shape[0], bank_k.shape[0]
    H, W = m.shape[-2:]
    otf_l = ops.psf2otf(bank_l, (H, W))
    otf_k = ops.psf2otf(bank_k, (H, W))
    rho = torch.full((L,), p.rho, dtype=dt, device=dev)
    tau = torch.full((K,), p.tau, dtype=dt, device=dev)

    B = m.shape[0]
    E = torch.zeros(B, L, H, W, dtype=dt, device=dev)
    Fm = torch.zeros_like(E)
    Hk = torch.zeros(B, K, H, W, dtype=dt, device=dev)
    G = torch.zeros_like(Hk)
    mk = ops.filter_bank_apply(m, bank_k)
    thr = p.lam / p.rho
    for _ in range(p.n_iter):
        rhs = (
            m
            + ops.filter_bank_adjoint(p.rho * E - Fm, bank_l)
            + ops.filter_bank_adjoint(p.tau * (mk + Hk) - G, bank_k)
        )
        Y = ops.fourier_solve(rhs, otf_l, rho, otf_k, tau)
        gy = ops.filter_bank_apply(Y, bank_l)
        E = soft_threshold(gy + Fm / p.rho, thr)
        Fm = Fm + p.zeta * (gy - E)
        D = ops.filter_bank_apply(Y, bank_k) - mk
        dphi = p.mu * 2.0 * p.theta * Hk / (1.0 + p.theta * Hk**2)
        Hk = Hk - p.sigma * (dphi - G - p.tau * (D - Hk))
        G = G + p.omega * (D - Hk)
        yield {"Y": Y, "E": E, "H": Hk}


class HIFMSolver(torch.nn.Module):
    """The training-free HIFM/ADMM solver as a module with DeRUN's interface: ``forward(a, b,
    return_stages=False, callback=None)`` on ``(B, 1, H, W)`` tensors in [0, 1] returns the fused
    ``X = Y + V`` (not clipped), or ``(X, stages)`` with per-stage lists ``Y``, ``X``, ``E``, ``H``
    (the last iteration's E/H are left out, as in DeRUN, where they never reach X). DeRUN is this
    solver unrolled with learnable parts (:meth:`napari_derun.core.model.DeRUN.from_hifm`); an engine runs
    either one the same way. No parameters: ``params`` is a :class:`HIFMParams`.
    """

    def __init__(self, params: HIFMParams | None = None):
        super().__init__()
        self.params = params or HIFMParams()

    @property
    def n_stages(self) -> int:
        return self.params.n_iter

    def num_parameters(self) -> int:
        return 0

    def forward(self, a: torch.Tensor, b: torch.Tensor, return_stages: bool = False,
                callback: Any = None) -> torch.Tensor | tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        from .unrolled import unroll

        p = self.params

        def stages(pads):
            m = ops.reflect_pad(b - a, pads)
            for i, st in enumerate(admm_iterations(m, p)):
                # as in DeRUN, the last iteration's E and H never reach X: not reported
                yield st if i < p.n_iter - 1 else {"Y": st["Y"]}

        return unroll(a, b, p.pad, stages, p.n_iter, return_stages, callback)


def _as_batch(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    elif t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must be (H, W), (B, H, W) or (B, 1, H, W); got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a float image scaled to [0, 1]; got dtype {t.dtype}")
    return t


def hifm_admm(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    params: HIFMParams | None = None,
    return_iterates: bool = False,
    **overrides: Any,
) -> np.ndarray | torch.Tensor | tuple[np.ndarray | torch.Tensor, list[np.ndarray | torch.Tensor]]:
    """Training-free HIFM fusion by ADMM.

    Args:
        a: structural image V (visible / MRI / phase contrast), float in [0, 1];
            ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``, numpy or torch.
        b: salient image U (infrared / PET / GFP), same shape as ``a``.
        params: solver parameters (defaults: :class:`HIFMParams`); keyword
            ``overrides`` replace single fields, e.g. ``n_iter=50``.
        return_iterates: also return the list of each iteration's Y.

    Returns:
        The fused image ``X = Y + V`` (not clipped) with the shape and type of
        ``a``; with ``return_iterates``, ``(X, [Y_1, …, Y_N])``.
    """
    params = params or HIFMParams()
    if overrides:
        d = params.to_dict()
        d.update(overrides)
        params = HIFMParams.from_dict(d)
    is_np = isinstance(a, np.ndarray)
    shape = tuple(a.shape)
    va = _as_batch(a, "a")
    ub = _as_batch(b, "b")
    if va.shape != ub.shape:
        raise ValueError(f"a and b must have the same shape; got {tuple(va.shape)} and {tuple(ub.shape)}")
    ub = ub.to(va.dtype)
    out = HIFMSolver(params)(va, ub, return_stages=return_iterates)
    x, ys = (out[0], out[1]["Y"]) if return_iterates else (out, [])

    def back(t: torch.Tensor):
        t = t.reshape(shape)
        return t.cpu().numpy() if is_np else t

    if return_iterates:
        return back(x), [back(t) for t in ys]
    return back(x)
