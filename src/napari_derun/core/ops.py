"""Functional tensor operations shared by the HIFM solver and DeRUN.

All operators act on a *periodic* domain: inputs are reflect-padded once
(:func:`reflect_pad`), every convolution then uses circular boundary
conditions, and the result is cropped (:func:`crop`). On that domain the
derivative filters are exact linear shift-invariant operators, their transposes
are the exact adjoints, and the Y-update of ADMM is diagonal in Fourier space,
so :func:`fourier_solve` solves it exactly.

Conventions (kornia-style): images are ``(B, 1, H, W)`` float tensors, filter
banks are ``(C, 1, kh, kw)`` tensors applied as cross-correlation
(``torch.nn.functional.conv2d``) with the kernel centre at ``(kh // 2, kw // 2)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "sobel_bank",
    "filter_bank_apply",
    "filter_bank_adjoint",
    "psf2otf",
    "fourier_solve",
    "solve_denominator",
    "fourier_apply",
    "reflect_pad",
    "crop",
    "default_pad",
]


def sobel_bank(dtype: torch.dtype = torch.float32, device=None, scale: float = 1.0 / 8.0) -> torch.Tensor:
    """Sobel derivative filters: x, y and the two diagonals.

    Returns a ``(4, 1, 3, 3)`` tensor. ``scale = 1/8`` makes each filter a unit
    derivative (a ramp of slope 1 gives a response of 1 for the x and y filters).
    """
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    sy = sx.t().contiguous()
    d45 = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 2.0]])
    d135 = torch.tensor([[0.0, -1.0, -2.0], [1.0, 0.0, -1.0], [2.0, 1.0, 0.0]])
    bank = torch.stack([sx, sy, d45, d135])[:, None] * scale
    return bank.to(dtype=dtype, device=device)


def _circ_pad1_into(x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    fmt = torch.channels_last if C > 1 and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty(B, C, H + 2, W + 2, dtype=x.dtype, device=x.device, memory_format=fmt)
    out[..., 1:-1, 1:-1] = x
    out[..., 0, 1:-1] = x[..., -1, :]
    out[..., -1, 1:-1] = x[..., 0, :]
    out[..., :, 0] = out[..., :, -2]
    out[..., :, -1] = out[..., :, 1]
    return out


class _CircPad1(torch.autograd.Function):
    """Circular padding by one pixel whose backward folds the ghost rows and columns back in place
    (no zero-filled full-size gradients, one autograd node)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return _circ_pad1_into(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: D102
        gc = g[..., :, 1:-1].clone()
        gc[..., :, -1] += g[..., :, 0]
        gc[..., :, 0] += g[..., :, -1]
        gx = gc[..., 1:-1, :].clone()
        gx[..., -1, :] += gc[..., 0, :]
        gx[..., 0, :] += gc[..., -1, :]
        return gx


def circ_pad1(x: torch.Tensor) -> torch.Tensor:
    """Circular padding by one pixel on each side (``F.pad(x, (1, 1, 1, 1), mode="circular")``).

    Written into one buffer in ``x``'s memory format (channels-last stays channels-last), with a
    custom backward (:class:`_CircPad1`) where a gradient is needed: the training step's convolutions
    ran ~1.4× faster forward + backward than with the padding by concatenation (docs/performance.md).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _CircPad1.apply(x)
    return _circ_pad1_into(x)


#: grids of at least this many pixels use the convolution without a padded copy (:func:`circ_conv3`);
#: on smaller ones (the training patches) the two border strips cost more than the copy saves
STRIP_MIN_PIXELS = 128 * 128


def circ_conv3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """3×3 cross-correlation with circular boundaries: ``F.conv2d(circ_pad1(x), weight, bias)``.

    Computed without the padded copy of ``x``: a zero-padded convolution, then the one-pixel border
    ring recomputed from two thin strips (the wrapped rows and columns). With channels-last inputs
    oneDNN runs this 2–4× faster than the padded convolution on the 1–16-channel maps of DeRUN
    (docs/performance.md); differentiable, same values to rounding.

    Args:
        x: ``(B, C, H, W)``.
        weight: ``(C_out, C, 3, 3)``.
        bias: ``(C_out,)`` or ``None``.

    Returns:
        ``(B, C_out, H, W)``, in ``x``'s memory format.
    """
    H, W = x.shape[-2:]
    if H < 3 or W < 3 or H * W < STRIP_MIN_PIXELS:
        return F.conv2d(circ_pad1(x), weight, bias)
    out = F.conv2d(x, weight, bias, padding=1)
    rows = torch.cat([x[..., -1:, :], x[..., :2, :], x[..., -2:, :], x[..., :1, :]], dim=-2)
    r = F.conv2d(torch.cat([rows[..., -1:], rows, rows[..., :1]], dim=-1), weight, bias)  # rows 0 and 3 are valid
    cols = torch.cat([x[..., -1:], x[..., :2], x[..., -2:], x[..., :1]], dim=-1)
    c = F.conv2d(torch.cat([cols[..., -1:, :], cols, cols[..., :1, :]], dim=-2), weight, bias)
    out[..., 0, :] = r[..., 0, :]
    out[..., -1, :] = r[..., 3, :]
    out[..., :, 0] = c[..., 0]
    out[..., :, -1] = c[..., 3]
    return out


def stack_channels(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``torch.cat([x, y], 1)`` of two ``(B, C, H, W)`` maps, written channels-last."""
    out = torch.empty(x.shape[0], x.shape[1] + y.shape[1], *x.shape[-2:], dtype=torch.result_type(x, y),
                      device=x.device, memory_format=torch.channels_last)
    out[:, : x.shape[1]] = x
    out[:, x.shape[1]:] = y
    return out


_PW = getattr(torch.ops.mkldnn, "_convolution_pointwise", None) if torch.backends.mkldnn.is_available() else None


def fused_ok(x: torch.Tensor) -> bool:
    """Whether :func:`extract_fused` may run on ``x``: CPU, float32, no autograd, no autocast, oneDNN, and not
    while TorchScript traces the model (the fused oneDNN op cannot be traced; bioimage.io export traces)."""
    return (_PW is not None and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and min(x.shape[-2:]) >= 2 and not torch.jit.is_tracing())


def extract_fused(x: torch.Tensor, w_lin: torch.Tensor, w_hid: torch.Tensor, b_hid: torch.Tensor,
                  w_spec: torch.Tensor, b_spec: torch.Tensor) -> torch.Tensor:
    """``w_lin ⋆ x + w_spec ⋆ relu(w_hid ⋆ x + b_hid) + b_spec`` with circular boundaries, for inference.

    The hidden map comes from oneDNN's fused convolution with ReLU as a post-operation (no separate
    pass over it); the specific convolution is a plain one with the linear part added in place
    afterwards, which measured faster than oneDNN's fused sum post-operation (docs/performance.md: a
    guided forward extractor, 2 → 8 → 4 channels at 512², 4.2 → 3.4 ms with 2 threads, 10.2 → 7.0 ms with 1)
    and gives the same values.
    Channels-last, on circularly padded copies. No autograd (see :func:`fused_ok`); the same values as
    the differentiable path to rounding.

    Args:
        x: ``(B, C, H, W)``.
        w_lin: ``(L, C, 3, 3)``, the linear bank (no bias).
        w_hid: ``(h, C, 3, 3)`` and ``b_hid`` ``(h,)``: the shared branch.
        w_spec: ``(L, h, 3, 3)`` and ``b_spec`` ``(L,)``: the specific branch.

    Returns:
        ``(B, L, H, W)``, channels-last.
    """
    cl = torch.channels_last
    one, zero = [1, 1], [0, 0]
    # x padded by 2: the hidden map then comes out padded by 1 (the grid is periodic), ready for the
    # specific convolution without a padded copy of its 8 channels
    xp = _circ_pad2(x.contiguous(memory_format=cl) if x.shape[1] > 1 else x)
    lin = F.conv2d(xp[..., 1:-1, 1:-1], w_lin).contiguous(memory_format=cl)
    hid = _PW(xp, w_hid, b_hid, zero, one, one, 1, "relu", [None], "").contiguous(memory_format=cl)
    return F.conv2d(hid, w_spec, b_spec).add_(lin)


def _circ_pad2(x: torch.Tensor) -> torch.Tensor:
    """Circular padding by two pixels (``H, W ≥ 2``), in ``x``'s memory format."""
    B, C, H, W = x.shape
    fmt = torch.channels_last if C > 1 and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty(B, C, H + 4, W + 4, dtype=x.dtype, device=x.device, memory_format=fmt)
    out[..., 2:-2, 2:-2] = x
    out[..., :2, 2:-2] = x[..., -2:, :]
    out[..., -2:, 2:-2] = x[..., :2, :]
    out[..., :, :2] = out[..., :, -4:-2]
    out[..., :, -2:] = out[..., :, 2:4]
    return out


def _circ_pad(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    ph, pw = kh // 2, kw // 2
    if ph == 0 and pw == 0:
        return x
    if kh == 3 and kw == 3 and min(x.shape[-2:]) >= 1:
        return circ_pad1(x)
    return F.pad(x, (pw, kw - 1 - pw, ph, kh - 1 - ph), mode="circular")


def filter_bank_apply(x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Apply a filter bank with circular boundaries.

    Args:
        x: ``(B, 1, H, W)``.
        bank: ``(C, 1, kh, kw)``.

    Returns:
        ``(B, C, H, W)``: ``out[:, c] = bank[c] ⋆ x`` (cross-correlation).
    """
    kh, kw = bank.shape[-2:]
    return F.conv2d(_circ_pad(x, kh, kw), bank)


def filter_bank_adjoint(z: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Exact adjoint of :func:`filter_bank_apply` (sum over the channels).

    Args:
        z: ``(B, C, H, W)``.
        bank: ``(C, 1, kh, kw)``.

    Returns:
        ``(B, 1, H, W)`` with ``<filter_bank_apply(x), z> == <x, filter_bank_adjoint(z)>``.
    """
    kh, kw = bank.shape[-2:]
    # adjoint of correlation with k is correlation with the flipped kernel,
    # with the padding mirrored accordingly.
    flipped = torch.flip(bank, dims=(-2, -1)).transpose(0, 1)  # (1, C, kh, kw)
    ph, pw = kh // 2, kw // 2
    zp = F.pad(z, (kw - 1 - pw, pw, kh - 1 - ph, ph), mode="circular")
    return F.conv2d(zp, flipped)


def psf2otf(bank: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Frequency responses (rfft2) of a filter bank on an ``H × W`` periodic grid.

    The response matches :func:`filter_bank_apply`, i.e. cross-correlation with
    the kernel centre at ``(kh // 2, kw // 2)``.

    Args:
        bank: ``(C, 1, kh, kw)``.
        shape: ``(H, W)``, each at least the kernel size.

    Returns:
        complex ``(C, H, W // 2 + 1)``.
    """
    H, W = shape
    C, _, kh, kw = bank.shape
    if H < kh or W < kw:
        raise ValueError(f"grid {shape} is smaller than the {kh}x{kw} filters")
    # correlation with k (centre (kh//2, kw//2)) multiplies the spectrum by
    # Σ_ij k[i, j] exp(+2πi (u (i − kh//2) / H + v (j − kw//2) / W)): evaluated directly
    # as a small separable sum instead of an FFT of a zero-padded kernel.
    rdt = bank.dtype
    u = torch.arange(H, device=bank.device, dtype=rdt)[:, None]
    v = torch.arange(W // 2 + 1, device=bank.device, dtype=rdt)[:, None]
    oi = torch.arange(kh, device=bank.device, dtype=rdt)[None] - kh // 2
    oj = torch.arange(kw, device=bank.device, dtype=rdt)[None] - kw // 2
    ey = torch.polar(torch.ones_like(u * oi), 2.0 * math.pi * u * oi / H)  # (H, kh)
    ex = torch.polar(torch.ones_like(v * oj), 2.0 * math.pi * v * oj / W)  # (Wf, kw)
    k = bank[:, 0].to(ey.dtype)
    return torch.einsum("ui,cij,vj->cuv", ey, k, ex)


def fourier_solve(
    rhs: torch.Tensor,
    otf_l: torch.Tensor,
    rho: torch.Tensor,
    otf_k: torch.Tensor,
    tau: torch.Tensor,
) -> torch.Tensor:
    """Solve ``(I + Σ_l ρ_l ∇_lᵀ∇_l + Σ_k τ_k ∇_kᵀ∇_k) Y = rhs`` exactly.

    Args:
        rhs: ``(B, 1, H, W)`` real.
        otf_l: ``(L, H, W//2+1)`` frequency responses of the ∇_l bank.
        rho: ``(L,)`` or ``(B, L)`` non-negative weights.
        otf_k: ``(K, H, W//2+1)`` frequency responses of the ∇_k bank.
        tau: ``(K,)`` or ``(B, K)`` non-negative weights.

    Returns:
        ``(B, 1, H, W)``. The denominator is ``>= 1`` so the system is always
        well posed.
    """
    return fourier_apply(rhs, solve_denominator(otf_l, rho, otf_k, tau))


def solve_denominator(otf_l: torch.Tensor, rho: torch.Tensor, otf_k: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """``1 + Σ_l ρ_l |OTF_l|² + Σ_k τ_k |OTF_k|²``, the diagonal of :func:`fourier_solve`'s system.

    Args:
        otf_l: ``(L, H, W//2+1)``.
        rho: ``(L,)`` or ``(B, L)``.
        otf_k: ``(K, H, W//2+1)``.
        tau: ``(K,)`` or ``(B, K)``.

    Returns:
        real ``(1|B, 1, H, W//2+1)``.
    """
    pl = otf_l.real ** 2 + otf_l.imag ** 2  # (L, H, Wf)
    pk = otf_k.real ** 2 + otf_k.imag ** 2
    rho = rho.reshape(-1, rho.shape[-1])  # (1|B, L)
    tau = tau.reshape(-1, tau.shape[-1])
    denom = 1.0 + torch.einsum("bl,lhw->bhw", rho.to(pl.dtype), pl) + torch.einsum(
        "bk,khw->bhw", tau.to(pk.dtype), pk
    )
    return denom[:, None]


def fourier_apply(rhs: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """Solve the diagonal Fourier system: ``irfft2(rfft2(rhs) / denom)``.

    Args:
        rhs: ``(B, 1, H, W)`` real.
        denom: from :func:`solve_denominator`.

    Returns:
        ``(B, 1, H, W)``.
    """
    H, W = rhs.shape[-2:]
    return torch.fft.irfft2(torch.fft.rfft2(rhs) / denom, s=(H, W))


def default_pad(h: int, w: int, pad: int = 16) -> tuple[int, int, int, int]:
    """Reflect padding ``(top, bottom, left, right)`` used before the periodic solve.

    ``pad`` pixels on each side, fewer for tiny images (reflection needs pad < size).
    (Growing the padded size to a 5-smooth FFT length was measured and not worth it:
    the FFTs take ~20 ms of a 2048² DeRUN pass on CPU.)
    """
    ph, pw = min(pad, h - 1), min(pad, w - 1)
    return (ph, ph, pw, pw)


def reflect_pad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflect-pad the last two dims of a ``(B, C, H, W)`` tensor by ``(top, bottom, left, right)``."""
    t, b, l, r = pads
    if not any(pads):
        return x
    return F.pad(x, (l, r, t, b), mode="reflect")


def crop(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`reflect_pad`."""
    t, b, l, r = pads
    H, W = x.shape[-2:]
    return x[..., t : H - b, l : W - r]


def inv_softplus(y: float) -> float:
    """Inverse of softplus, for initialising positive parameters."""
    if y > 20:
        return float(y)
    return float(math.log(math.expm1(y)))
