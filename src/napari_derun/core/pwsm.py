"""The partial weight sharing module (PWSM) of DeRUN's stages, the learnable piecewise-linear map of
its VFM, and the adjointness loss of the extractors (see :mod:`napari_derun.core.model`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops

__all__ = ["PiecewiseLinearMap", "PWSMStage", "adjoint_loss", "adjoint_loss_reference"]


class PiecewiseLinearMap(nn.Module):
    """Per-channel learnable map ``S_c(x) = soft(x, t_c) + r_c(x)``.

    ``r_c`` is piecewise linear with ``n_knots`` equally spaced knots on
    [−1, 1], zero at initialisation, and constant outside [−1, 1]; ``t_c > 0``
    is a learnable threshold (softplus-parametrised).

    Shapes: ``x`` is ``(B, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, n_knots: int = 101, threshold: float = 0.02):
        super().__init__()
        self.n_knots = n_knots
        self.raw_threshold = nn.Parameter(torch.full((channels,), ops.inv_softplus(threshold)))
        self.values = nn.Parameter(torch.zeros(channels, n_knots))

    @property
    def threshold(self) -> torch.Tensor:
        return F.softplus(self.raw_threshold)

    where = "a piecewise-linear map"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":  # one summing pass on CPU; on a GPU DeRUN.forward checks once per pass (no sync)
            # a NaN or inf anywhere makes the sum non-finite (finite maps here are far from float32's range)
            if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
                raise FloatingPointError(
                    f"non-finite values (NaN or inf) reach {self.where}: the model's weights are not finite "
                    "(a diverged training?) or the inputs are beyond the float32 range")
        C = x.shape[1]
        m = self.n_knots
        # on a GPU a NaN would make an invalid knot index: index with NaN → 0; the NaN still reaches the
        # output through the soft threshold of x, and DeRUN.forward reports it once per pass
        xs = x if x.device.type == "cpu" else torch.nan_to_num(x, nan=0.0)
        # fewer passes over the maps than the textbook form (same values to rounding): the clamp's result is
        # scaled in place, one flat knot index per pixel, value + slope · fraction in one addcmul
        t = xs.clamp(-1.0, 1.0).add_(1.0).mul_((m - 1) / 2.0)
        idx = t.detach().floor().clamp_(0, m - 2)
        frac = t - idx
        flat = idx.add_((torch.arange(C, device=x.device, dtype=x.dtype) * m).view(1, C, 1, 1)).long()
        v = self.values
        slope = torch.cat([v[:, 1:] - v[:, :-1], v.new_zeros(C, 1)], 1).reshape(-1)
        r = torch.addcmul(v.reshape(-1)[flat], slope[flat], frac)
        thr = self.threshold.view(1, C, 1, 1).to(x.dtype)
        return (x - torch.clamp(x, -thr, thr)).add_(r)  # soft threshold: x − clamp(x, −t, t)


def _conv(cin: int, cout: int, zero: bool = False) -> nn.Conv2d:
    c = nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular")
    if zero:
        nn.init.zeros_(c.weight)
        nn.init.zeros_(c.bias)
    return c


class PWSMStage(nn.Module):
    """The four feature extractors of one stage (∇_l, ∇_k, ∇_lᵀ, ∇_kᵀ) as a PWSM."""

    def __init__(self, n_filters: int, hidden: int, with_grad_l: bool = True, guided: bool = False):
        super().__init__()
        self.guided = guided
        bank = ops.sobel_bank()[:n_filters] if n_filters <= 4 else None
        if bank is None:
            raise ValueError("n_filters must be <= 4 (Sobel x, y and two diagonals)")
        self.bank_l = nn.Parameter(bank.clone())
        self.bank_k = nn.Parameter(bank.clone())
        # forward extractors: shared 1 -> hidden, specific hidden -> L / K
        self.shared_fwd = _conv(2 if guided else 1, hidden)
        self.spec_l = _conv(hidden, n_filters, zero=True) if with_grad_l else None
        self.spec_k = _conv(hidden, n_filters, zero=True)
        # transposes: shared L -> hidden, specific hidden -> 1
        self.shared_adj = _conv(n_filters, hidden)
        self.spec_lt = _conv(hidden, 1, zero=True)
        self.spec_kt = _conv(hidden, 1, zero=True)

    @staticmethod
    def _extract(x: torch.Tensor, lin: torch.Tensor, shared: nn.Conv2d, spec: nn.Conv2d,
                 guide: torch.Tensor | None = None) -> torch.Tensor:
        """``lin ⋆ x + spec(relu(shared(x)))`` with circular boundaries.

        For a guided extractor the shared branch sees ``[x, a]``: ``guide`` is then the structural
        image ``a`` (on the same grid), stacked as a second input channel whose weights reach only
        the hidden map, so the guide never reaches the linear part. One 3×3 conv computes the linear
        bank and the shared branch together (same input). The maps are channels-last and the
        convolutions skip the padded copy (:func:`~napari_derun.core.ops.circ_conv3`): oneDNN runs
        the 1–12-channel convolutions of DeRUN 2–4× faster so (docs/performance.md).
        """
        n = lin.shape[0]
        cx = x.shape[1]
        w = torch.cat([lin, shared.weight[:, :cx]], 0)
        if guide is not None:
            w = torch.cat([w, torch.cat([lin.new_zeros(n, 1, *lin.shape[-2:]), shared.weight[:, cx:]], 0)], 1)
            x = ops.stack_channels(x, guide)
        elif cx > 1:
            x = x.contiguous(memory_format=torch.channels_last)
        if ops.fused_ok(x):
            return ops.extract_fused(x, w[:n], w[n:], shared.bias, spec.weight, spec.bias)
        bias = torch.cat([shared.bias.new_zeros(n), shared.bias])
        out = ops.circ_conv3(x, w, bias)
        lin_out, hid = out.split([n, out.shape[1] - n], dim=1)  # one SplitBackward instead of two slice copies
        return lin_out + ops.circ_conv3(F.relu(hid), spec.weight, spec.bias)

    def guide_features(self, a: torch.Tensor) -> torch.Tensor | None:
        """The structural image's fixed contribution to the shared forward branch (guided only)."""
        if not self.guided:
            return None
        return F.conv2d(ops.circ_pad1(a), self.shared_fwd.weight[:, 1:])

    @staticmethod
    def _adjoint_kernel(bank: torch.Tensor) -> torch.Tensor:
        # adjoint of circular correlation with a centred 3×3 kernel: correlation with the flipped kernel
        return torch.flip(bank, dims=(-2, -1)).transpose(0, 1)

    def grad_l(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return self._extract(x, self.bank_l, self.shared_fwd, self.spec_l, guide)

    def grad_k(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return self._extract(x, self.bank_k, self.shared_fwd, self.spec_k, guide)

    def grad_lt(self, z: torch.Tensor) -> torch.Tensor:
        return self._extract(z, self._adjoint_kernel(self.bank_l), self.shared_adj, self.spec_lt)

    def grad_kt(self, z: torch.Tensor) -> torch.Tensor:
        return self._extract(z, self._adjoint_kernel(self.bank_k), self.shared_adj, self.spec_kt)


def adjoint_loss(model: nn.Module, shape: tuple[int, int] = (32, 32), generator: torch.Generator | None = None) -> torch.Tensor:
    """Adjointness defect of the PWSM extractors on random vectors.

    For every stage and both families, ``(<∇u, v> − <u, ∇ᵀv>)² / (‖∇u‖²‖v‖² + eps)`` with
    random ``u``, ``v``; zero while the nonlinear branches are zero. Used with weight
    0.01 in training in place of ISTA-Net's symmetry loss.

    All ``2N − 1`` pairs are evaluated together: one convolution of ``u`` gives every stage's linear
    banks and shared hidden maps, one grouped convolution every specific branch (and the same for the
    transposes on ``v``): 4 convolutions instead of ``4(2N − 1)``, the value of
    :func:`adjoint_loss_reference` to rounding.
    """
    p0 = next(model.parameters())
    L = model.config.n_filters
    u = torch.randn(1, 1, *shape, generator=generator).to(p0)
    v = torch.randn(1, L, *shape, generator=generator).to(p0)
    exts, lin_f, spec_f, lin_a, spec_a, stage_of = [], [], [], [], [], []
    for st in model.stages:
        e = st.ext
        fams = [("k", e.bank_k, e.spec_k, e.spec_kt)] if st.last else [
            ("l", e.bank_l, e.spec_l, e.spec_lt), ("k", e.bank_k, e.spec_k, e.spec_kt)]
        for _, bank, spec, spec_t in fams:
            lin_f.append(bank)
            spec_f.append(spec)
            lin_a.append(PWSMStage._adjoint_kernel(bank))
            spec_a.append(spec_t)
            stage_of.append(len(exts))
        exts.append(e)
    P, S = len(lin_f), len(exts)
    h = exts[0].shared_fwd.weight.shape[0]
    pick = torch.tensor([s * h + j for s in stage_of for j in range(h)], device=u.device)

    def family(x, lin, shared_w, shared_b, specs):
        # x → [all linear parts | every stage's hidden map]; each pair's specific branch on its stage's map
        w = torch.cat(lin + shared_w, 0)
        out = F.conv2d(ops.circ_pad1(x), w, torch.cat([shared_w[0].new_zeros(w.shape[0] - S * h)] + shared_b))
        n_lin = out.shape[1] - S * h
        hid = F.relu(out[:, n_lin:]).index_select(1, pick)
        ws = torch.cat([sp.weight for sp in specs], 0)
        spec = F.conv2d(ops.circ_pad1(hid), ws, torch.cat([sp.bias for sp in specs]), groups=P)
        return out[:, :n_lin] + spec

    gu = family(u, lin_f, [e.shared_fwd.weight[:, :1] for e in exts], [e.shared_fwd.bias for e in exts], spec_f)
    av = family(v, lin_a, [e.shared_adj.weight for e in exts], [e.shared_adj.bias for e in exts], spec_a)
    gu = gu.view(P, L, *shape)
    lhs = (gu * v).sum(dim=(1, 2, 3))
    rhs = (u * av.view(P, 1, *shape)).sum(dim=(1, 2, 3))
    return ((lhs - rhs) ** 2 / ((gu ** 2).sum(dim=(1, 2, 3)) * (v ** 2).sum() + 1e-8)).sum() / P


def adjoint_loss_reference(model: nn.Module, shape: tuple[int, int] = (32, 32), generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`adjoint_loss` written as the definition: one pair at a time (the reference of the tests).

    For every stage and both families, ``(<∇u, v> − <u, ∇ᵀv>)² / (‖∇u‖²‖v‖² + eps)`` with
    random ``u``, ``v``; zero while the nonlinear branches are zero. Used with weight
    0.01 in training in place of ISTA-Net's symmetry loss.
    """
    p0 = next(model.parameters())
    L = model.config.n_filters
    u = torch.randn(1, 1, *shape, generator=generator).to(p0)
    v = torch.randn(1, L, *shape, generator=generator).to(p0)
    total = p0.new_zeros(())
    for st in model.stages:
        e = st.ext
        pairs = [(e.grad_k, e.grad_kt)] if st.last else [(e.grad_l, e.grad_lt), (e.grad_k, e.grad_kt)]
        for fwd, adj in pairs:
            gu = fwd(u)
            lhs = (gu * v).sum()
            rhs = (u * adj(v)).sum()
            total = total + (lhs - rhs) ** 2 / ((gu**2).sum() * (v**2).sum() + 1e-8)
    return total / (2 * len(model.stages) - 1)


