"""DeRUN: the HIFM ADMM solver unfolded into N learnable stages.

Each stage has the three modules of the paper:

* **DFM** (data fusion module): the exact Fourier-space solve of the Y step.
  Its operator uses the *linear* part of the feature extractors (a learnable
  3×3 filter bank initialised at Sobel), so it stays exact while learning.
* **VFM** (visual fidelity module): ``E_l = S_l(∇_l Y + F_l/ρ_l)`` with a learnable
  piecewise-linear map ``S_l`` = soft threshold + a 101-knot piecewise-linear
  residual on [−1, 1] (zero at start, constant tails: the map's tails are linear).
* **SPM** (structure preservation module): a gradient step on the H objective, with
  the joint constraint strategy (JCS): ``H̃ = η₁H + η₂∇_k(Y − M) + η₃∇_k(R − M)``
  and an extra pull ``β(H − H̃)`` where ``R`` is the least-squares image whose
  gradients best match the denoised ``E`` (a denoised reconstruction from VFM).

The feature extractors ∇_l, ∇_k and their transposes are built as the partial
weight sharing module (PWSM): each is ``linear filter bank + specific(shared(x))``,
where the shared branch (one 3×3 conv + ReLU) is common to the ∇_l and ∇_k
extractors of a stage and the specific branch (one 3×3 conv) is per extractor
and starts at zero. The transposes have the same structure with their own
weights (ISTA-Net style); their linear part is the exact adjoint of the forward
filter bank. :func:`adjoint_loss` measures how far the nonlinear branches move
the pair away from adjointness.

Initialised with :meth:`DeRUN.from_hifm`, every learnable piece sits at its
model-based value, β = 0 and the nonlinear branches output zero, so an untrained
DeRUN computes exactly ``N`` iterations of :func:`napari_derun.core.hifm.hifm_admm`.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import ConfigDict, Field, model_validator

from . import ops
from .hifm import HIFMParams, StrictConfig
from .pwsm import PiecewiseLinearMap, PWSMStage, adjoint_loss

__all__ = ["DeRUNConfig", "DeRUN", "DeRUNPair", "InputRestore", "PiecewiseLinearMap", "adjoint_loss"]


class DeRUNConfig(StrictConfig):
    """Architecture of DeRUN (stored with every checkpoint).

    Attributes:
        n_stages: number of unfolded stages N.
        hidden: channels of the PWSM nonlinear branches.
        n_knots: knots of each piecewise-linear map S (on [−1, 1]).
        n_filters: L = K, filters in each extractor's bank.
        pad: reflect padding before the periodic solve.
        hifm: model-based values the learnable scalars start from.
        guided: the structural extension (docs/model.md, "Guided DeRUN"): the residual
            the stages see is ``M + T(a, b)`` with a small CNN ``T`` whose last layer starts
            at zero, and the shared PWSM branch of the forward extractors sees ``a`` as a
            second input channel (its weights on that channel feed only the zero-initialised
            specific branches). Both leave the untrained network equal to ADMM. ``False``
            is the plain unfolding (and what files without the key load as).
        lift_hidden: channels of ``T`` when ``guided``.
        restore: channels of the input restoration network ``R`` (0: none). With ``R`` the
            stages see ``a + R_a(a, b)`` and ``b + R_b(a, b)`` instead of ``a`` and ``b``
            (:class:`InputRestore`, last layer zero-initialised, so the untrained network
            still equals ADMM); the degradation-trained models use it to denoise, dehaze and
            re-contrast the inputs before they are fused (docs/robustness.md).

    A pydantic model (strict types, unknown keys refused, changes validated): a checkpoint's config
    is checked before anything is built.
    """

    WHAT: ClassVar[str] = "a DeRUN config"
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    n_stages: int = 9
    hidden: int = 8
    n_knots: int = 101
    n_filters: int = 4
    pad: int = 16
    hifm: dict[str, Any] = Field(default_factory=lambda: HIFMParams().to_dict())
    guided: bool = False
    lift_hidden: int = 16
    restore: int = 0

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    #: allowed ranges of the integer fields (a checkpoint's config is checked before anything is built)
    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"n_stages": (1, 64), "hidden": (1, 256), "n_knots": (2, 10001), "n_filters": (1, 4),
              "pad": (0, 4096), "lift_hidden": (1, 256), "restore": (0, 256)}

    @model_validator(mode="after")
    def _check(self) -> "DeRUNConfig":
        return self.check()

    def check(self) -> "DeRUNConfig":
        """Check types and ranges; raises ValueError naming the field."""
        for name, (lo, hi) in self.LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"DeRUN config field {name} must be an integer, got {v!r}")
            if not lo <= v <= hi:
                raise ValueError(f"DeRUN config field {name} = {v} is outside [{lo}, {hi}]")
        if not isinstance(self.guided, bool):
            raise ValueError(f"DeRUN config field guided must be true or false, got {self.guided!r}")
        if not isinstance(self.hifm, dict):
            raise ValueError(f"DeRUN config field hifm must be a mapping, got {type(self.hifm).__name__}")
        HIFMParams.from_dict(self.hifm)
        return self


class ResidualLift(nn.Module):
    """``T(a, b)``: the learned correction of the residual ``M = b − a`` of a guided DeRUN.

    Three 3×3 convs (inputs ``a``, ``b`` and ``relu(b − a)``, ReLU between), the last one
    zero-initialised, so ``T = 0`` until trained. Lets the stages fuse towards a target that
    is not a function of ``b − a`` alone (e.g. keep ``a`` where ``b`` is background).
    """

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.c1 = nn.Conv2d(3, hidden, 3, padding=1, padding_mode="reflect")
        self.c2 = nn.Conv2d(hidden, hidden, 3, padding=1, padding_mode="reflect")
        self.c3 = nn.Conv2d(hidden, 1, 3, padding=1, padding_mode="reflect")
        nn.init.zeros_(self.c3.weight)
        nn.init.zeros_(self.c3.bias)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.c1(torch.cat([a, b, F.relu(b - a)], 1)))
        return self.c3(F.relu(self.c2(h)))


class InputRestore(nn.Module):
    """``R(a, b)``: learned residual corrections of both inputs before they are fused.

    Five 3×3 convs on ``[a, b]`` (dilations 1, 2, 4, 8, 1: a 33 × 33 field of view, enough for
    local contrast and noise statistics), replicated borders (any image size), ReLU between, the last one zero-initialised: until
    trained, ``R`` returns its inputs unchanged. Returns ``(a + R_a, b + R_b)``.

    Shapes: ``a``, ``b`` are ``(B, 1, H, W)``; so are both outputs.
    """

    DILATIONS: ClassVar[tuple[int, ...]] = (1, 2, 4, 8)

    def __init__(self, hidden: int = 12):
        super().__init__()
        chans = [2] + [hidden] * len(self.DILATIONS)
        self.body = nn.ModuleList(
            nn.Conv2d(ci, co, 3, padding=d, dilation=d, padding_mode="replicate")
            for ci, co, d in zip(chans[:-1], chans[1:], self.DILATIONS))
        self.out = nn.Conv2d(hidden, 2, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([a, b], 1)
        for conv in self.body:
            h = F.relu(conv(h))
        d = self.out(h)
        return a + d[:, :1], b + d[:, 1:]


class DeRUNStage(nn.Module):
    """One unfolded ADMM iteration: DFM, VFM and SPM (with JCS)."""

    def __init__(self, cfg: DeRUNConfig, first: bool = False, last: bool = False):
        super().__init__()
        p = HIFMParams.from_dict(cfg.hifm).resolved()
        L = K = cfg.n_filters
        sp = ops.inv_softplus
        # the last stage's VFM and SPM outputs would never reach X: it has a DFM only
        self.last = last
        self.ext = PWSMStage(cfg.n_filters, cfg.hidden, with_grad_l=not last, guided=cfg.guided)
        self.raw_rho = nn.Parameter(torch.full((L,), sp(p.rho)))
        self.raw_tau = nn.Parameter(torch.full((K,), sp(p.tau)))
        if last:
            return
        self.raw_zeta = nn.Parameter(torch.full((L,), sp(p.zeta)))
        self.raw_omega = nn.Parameter(torch.full((K,), sp(p.omega)))
        self.raw_sigma = nn.Parameter(torch.full((K,), sp(p.sigma)))
        mu = torch.full((K,), sp(p.mu))
        theta = torch.full((K,), sp(p.theta))
        if first:
            # H = 0 entering the first stage, so φ'(H) = 0: μ and θ are unused there
            self.register_buffer("raw_mu", mu)
            self.register_buffer("raw_theta", theta)
        else:
            self.raw_mu = nn.Parameter(mu)
            self.raw_theta = nn.Parameter(theta)
        self.S = PiecewiseLinearMap(L, cfg.n_knots, threshold=p.lam / p.rho)
        # JCS: trade-offs of H~ and its pull β (β = 0: plain ADMM at start)
        self.eta = nn.Parameter(torch.tensor([0.0, 0.5, 0.5]))
        self.beta = nn.Parameter(torch.zeros(K))

    @staticmethod
    def _pos(raw: torch.Tensor) -> torch.Tensor:
        return F.softplus(raw).view(1, -1, 1, 1)

    def _denominators(self, h: int, w: int, rho: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fourier denominators of the Y solve and of the R solve on an ``h × w`` grid.

        Without autograd (inference) they are kept for the last grid size and reused while the
        filter banks and weights are unchanged (their versions are part of the key).
        """
        ext = self.ext
        key = None
        if not torch.is_grad_enabled() and not torch.jit.is_tracing():  # a trace must record the computation
            key = (h, w, rho.device, rho.dtype) + tuple(
                (t.data_ptr(), t._version) for t in (ext.bank_l, ext.bank_k, self.raw_rho, self.raw_tau))
            hit = self.__dict__.get("_den_cache")
            if hit is not None and hit[0] == key:
                return hit[1]
        otf_l, otf_k = ops.psf2otf(ext.bank_l, (h, w)), ops.psf2otf(ext.bank_k, (h, w))
        dens = (ops.solve_denominator(otf_l, rho.flatten(), otf_k, tau.flatten()),
                ops.solve_denominator(otf_l, torch.ones_like(self.raw_rho), otf_k, torch.zeros_like(self.raw_tau)))
        if key is not None:
            self.__dict__["_den_cache"] = (key, dens)
        return dens

    def forward(self, state: dict[str, torch.Tensor], m: torch.Tensor,
                guide: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        ext = self.ext
        g = guide  # the guided extractors take the structural image as a second channel
        H_, W_ = m.shape[-2:]
        rho, tau = self._pos(self.raw_rho), self._pos(self.raw_tau)
        E, Fm, Hk, G = state["E"], state["F"], state["H"], state["G"]
        den_y, den_r = self._denominators(H_, W_, rho, tau)

        # DFM
        mk = ext.grad_k(m, g)
        rhs = m + ext.grad_lt(rho * E - Fm) + ext.grad_kt(tau * (mk + Hk) - G)
        Y = ops.fourier_apply(rhs, den_y)
        if self.last:
            return {"Y": Y}
        zeta, omega, sigma = self._pos(self.raw_zeta), self._pos(self.raw_omega), self._pos(self.raw_sigma)
        mu, theta = self._pos(self.raw_mu), self._pos(self.raw_theta)
        # VFM
        gy = ext.grad_l(Y, g)
        # (fused multiply-adds: fewer passes over the maps than the textbook form, same values to rounding)
        E = self.S(torch.addcmul(gy, Fm, 1.0 / rho))  # S(∇_l Y + F / ρ)
        Fm = torch.addcmul(Fm, zeta, gy - E)
        # SPM with JCS
        D = ext.grad_k(Y - m, g)
        dphi = (mu * 2.0 * theta) * Hk / (theta * (Hk * Hk)).add_(1.0)  # μ φ'(H) = 2μθH / (1 + θH²)
        q = torch.addcmul(dphi - G, tau, D - Hk, value=-1.0)
        # R = argmin ½‖R − Y‖² + ½Σ‖∇_l R − E_l‖²: Y denoised by VFM's E (exact Fourier solve)
        R = ops.fourier_apply(Y + ext.grad_lt(E), den_r)
        eta = self.eta
        Ht = torch.addcmul(torch.addcmul(eta[0] * Hk, eta[1], D), eta[2], ext.grad_k(R - m, g))
        q = torch.addcmul(q, self.beta.view(1, -1, 1, 1), Hk - Ht)
        Hk = torch.addcmul(Hk, sigma, q, value=-1.0)
        G = torch.addcmul(G, omega, D - Hk)
        return {"Y": Y, "E": E, "F": Fm, "H": Hk, "G": G}


class DeRUN(nn.Module):
    """Degradation-Resistant Unfolding Network.

    ``forward(a, b)`` takes ``a`` = V (structural) and ``b`` = U (salient), both
    ``(B, 1, H, W)`` floats in [0, 1] (any H, W ≥ 2, odd sizes too), and returns
    the fused ``X = Y + V`` as ``(B, 1, H, W)`` (not clipped). With
    ``return_stages=True`` it also returns a dict of per-stage lists
    ``{"Y", "X", "E", "H"}`` (cropped to the input size; E, H are ``(B, L, H, W)``).
    Y and X have N entries; E and H have N − 1: the last stage is a DFM only,
    since its VFM/SPM outputs would not reach X.
    """

    def __init__(self, config: DeRUNConfig | None = None):
        super().__init__()
        self.config = config or DeRUNConfig()
        n = self.config.n_stages
        self.stages = nn.ModuleList(DeRUNStage(self.config, first=(i == 0), last=(i == n - 1)) for i in range(n))
        for i, st in enumerate(self.stages):
            if not st.last:
                st.S.where = f"stage {i + 1}'s VFM map S"
        self.lift = ResidualLift(self.config.lift_hidden) if self.config.guided else None
        self.restore = InputRestore(self.config.restore) if self.config.restore else None

    @classmethod
    def from_hifm(cls, params: HIFMParams | None = None, **cfg: Any) -> "DeRUN":
        """A DeRUN whose learnable pieces start at the HIFM/ADMM values of ``params``."""
        params = params or HIFMParams()
        return cls(DeRUNConfig(n_stages=params.n_iter, pad=params.pad, hifm=params.to_dict(), **cfg))

    @property
    def n_stages(self) -> int:
        return self.config.n_stages

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, a: torch.Tensor, b: torch.Tensor, return_stages: bool = False, callback=None,
                checkpoint: bool = False):
        """See the class docstring. ``checkpoint=True`` (training) recomputes each stage's
        activations in the backward pass: same result and gradients, about half the memory."""
        from .unrolled import unroll

        use_ckpt = checkpoint and torch.is_grad_enabled()
        if self.restore is not None:
            a, b = self.restore(a, b)

        def stages(pads):
            m = ops.reflect_pad(b - a, pads)
            guide = None
            if self.lift is not None:
                guide = ops.reflect_pad(a, pads)
                m = m + self.lift(guide, ops.reflect_pad(b, pads))
            z = torch.zeros(m.shape[0], self.config.n_filters, *m.shape[-2:], dtype=m.dtype, device=m.device
                            ).contiguous(memory_format=torch.channels_last)
            state = {"E": z, "F": z, "H": z, "G": z}
            for stage in self.stages:
                if use_ckpt:
                    from torch.utils.checkpoint import checkpoint as _ckpt

                    state = _ckpt(stage, state, m, guide, use_reentrant=False)
                else:
                    state = stage(state, m, guide)
                yield state  # the last stage has no E/H: they would not reach X

        out = unroll(a, b, self.config.pad, stages, len(self.stages), return_stages, callback)
        x = out[0] if return_stages else out
        if x.device.type != "cpu" and not bool(torch.isfinite(x).all()):  # one check per pass on a GPU
            raise FloatingPointError("DeRUN produced non-finite values: its weights are not finite "
                                     "(a diverged training?) or the inputs are beyond the float32 range")
        return out


class DeRUNPair(DeRUN):
    """DeRUN with the bioimage.io interface (:mod:`napari_derun.engine.bioimage_io`).

    Built from its configuration's keyword arguments; ``forward(structural, salient)`` on
    ``(B, 1, H, W)`` tensors in [0, 1] returns the fused image clipped to [0, 1]. Same parameters
    (and state-dict keys) as :class:`DeRUN`.
    """

    def __init__(self, **config: Any):
        super().__init__(DeRUNConfig.from_dict(config))

    def forward(self, structural: torch.Tensor, salient: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(structural, salient).clamp(0.0, 1.0)
