"""Qp: Zhao, Laganière & Liu's phase-congruency fusion metric, with Kovesi's phasecong3."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft as _fft

from ._metric_utils import _filter_same, _gauss1d, _prepare

# ----------------------------------------------------------------------------
# Phase congruency (Kovesi phasecong3, as modified by Z. Liu for Qp) and Qp
# ----------------------------------------------------------------------------
_PC_EPS = 1e-4


@lru_cache(maxsize=8)
def _pc_filters(rows: int, cols: int, nscale: int, norient: int, min_wavelength: float,
                mult: float, sigma_onf: float, dtheta_on_sigma: float):
    """Log-Gabor filter bank (frequency domain, DC at [0, 0]) and noise constants.

    Returns:
        filters: (norient, nscale, rows, cols) float64.
        em_n: (norient,) float64, sum of the squared smallest-scale filter.
        noise_an2: (norient,) float64, sum over pixels of sum_s f_s^2, where f_s is
            the real part of the inverse FFT of filter s times sqrt(rows * cols)
            (computed by Parseval, without FFTs).
        noise_aiaj: (norient,) float64, sum over pixels of sum_{s<t} f_s f_t, f_s
            as for ``noise_an2`` (computed by Parseval, without FFTs).
    """
    if cols % 2:
        xr = np.arange(-(cols - 1) / 2, (cols - 1) / 2 + 1) / (cols - 1)
    else:
        xr = np.arange(-cols / 2, cols / 2) / cols
    if rows % 2:
        yr = np.arange(-(rows - 1) / 2, (rows - 1) / 2 + 1) / (rows - 1)
    else:
        yr = np.arange(-rows / 2, rows / 2) / rows
    x, y = np.meshgrid(xr, yr)
    radius = np.sqrt(x * x + y * y)
    radius[rows // 2, cols // 2] = 1.0
    theta = np.arctan2(-y, x)
    radius = np.fft.ifftshift(radius)
    theta = np.fft.ifftshift(theta)
    sintheta, costheta = np.sin(theta), np.cos(theta)

    # Butterworth low-pass (cut-off 0.45, order 15) on Kovesi's lowpassfilter grid
    lx = (np.arange(1, cols + 1) - (cols // 2 + 1)) / cols
    ly = (np.arange(1, rows + 1) - (rows // 2 + 1)) / rows
    lr = np.sqrt(lx[None, :] ** 2 + ly[:, None] ** 2)
    lp = np.fft.ifftshift(1.0 / (1.0 + (lr / 0.45) ** 30))

    log_gabor = np.empty((nscale, rows, cols))
    for s in range(nscale):
        fo = 1.0 / (min_wavelength * mult**s)
        lg = np.exp(-(np.log(radius / fo) ** 2) / (2 * np.log(sigma_onf) ** 2)) * lp
        lg[0, 0] = 0.0
        log_gabor[s] = lg

    theta_sigma = np.pi / norient / dtheta_on_sigma
    filters = np.empty((norient, nscale, rows, cols))
    em_n = np.empty(norient)
    an2 = np.empty(norient)
    aiaj = np.empty(norient)
    for o in range(norient):
        angl = o * np.pi / norient
        ds = sintheta * np.cos(angl) - costheta * np.sin(angl)
        dc = costheta * np.cos(angl) + sintheta * np.sin(angl)
        dtheta = np.abs(np.arctan2(ds, dc))
        spread = np.exp(-(dtheta**2) / (2 * theta_sigma**2))
        sym = []
        for s in range(nscale):
            flt = log_gabor[s] * spread
            filters[o, s] = flt
            # even (Hermitian) part: real(ifft2(flt)) = ifft2(sym_part)
            flipped = np.roll(flt[::-1, ::-1], 1, axis=(0, 1))
            sym.append(0.5 * (flt + flipped))
        em_n[o] = np.sum(filters[o, 0] ** 2)
        an2[o] = sum(np.sum(h * h) for h in sym)
        aiaj[o] = sum(
            np.sum(sym[i] * sym[j]) for i in range(nscale - 1) for j in range(i + 1, nscale)
        )
    filters.setflags(write=False)
    return filters, em_n, an2, aiaj


@dataclass(frozen=True)
class PhaseCongruencySettings:
    """Kovesi's ``phasecong3`` parameters (his defaults).

    Attributes:
        nscale: number of wavelet scales.
        norient: number of orientations.
        min_wavelength: wavelength of the smallest-scale filter.
        mult: scaling factor between successive filters.
        sigma_onf: ratio of the log-Gabor bandwidth to the centre frequency.
        dtheta_on_sigma: ratio of the angle between orientations to the angular spread of the filters.
        k: number of noise standard deviations in the noise threshold.
        cutoff: frequency-spread cut-off of the sigmoid weight.
        g: gain of the frequency-spread sigmoid.
    """

    nscale: int = 4
    norient: int = 6
    min_wavelength: float = 3.0
    mult: float = 2.1
    sigma_onf: float = 0.55
    dtheta_on_sigma: float = 1.2
    k: float = 2.0
    cutoff: float = 0.5
    g: float = 10.0


def phase_congruency(img, settings: PhaseCongruencySettings | None = None, *, data_range: float = 255.0):
    """Phase congruency and its covariance moments (Kovesi ``phasecong3``).

    The PC_2 measure with log-Gabor filters built in the frequency domain
    (periodic borders), noise compensation from the median of the smallest-scale
    energy (threshold divided by 1.7) and the frequency-spread sigmoid weight, as in
    the ``myphasecong3`` variant used by the Qp metric.  An epsilon of 1e-4 is
    added to every denominator (the reference leaves the per-orientation one
    without it, which gives NaN on constant images); a constant image gives
    PC = 0 and M = -m = 5e-5 (half that epsilon, from the moment formula).

    Args:
        img: (H, W) array_like.
        settings: the filter bank and noise parameters (default: Kovesi's).
        data_range: float, scale of the input (rescaled to 0-255).

    Returns:
        pc: (H, W) float64 in [0, 1], overall phase congruency
            sum_o W_o E_o / (sum_o sum_s A_so + eps).
        M: (H, W) float64, maximum moment of the PC covariance (edge strength).
        m: (H, W) float64, minimum moment (corner strength).
    """
    (x,) = _prepare((img, "img"), data_range=data_range, min_size=2)
    return _phasecong(x, settings or PhaseCongruencySettings())


def _phasecong(im, st: PhaseCongruencySettings):
    eps = _PC_EPS
    nscale, norient, k, cutoff, g = st.nscale, st.norient, st.k, st.cutoff, st.g
    rows, cols = im.shape
    filters, em_n, an2, aiaj = _pc_filters(
        rows, cols, nscale, norient, float(st.min_wavelength), float(st.mult), float(st.sigma_onf),
        float(st.dtheta_on_sigma),
    )
    imfft = _fft.fft2(im)
    total_energy = np.zeros((rows, cols))
    total_sum_an = np.zeros((rows, cols))
    covx2 = np.zeros((rows, cols))
    covy2 = np.zeros((rows, cols))
    covxy = np.zeros((rows, cols))
    for o in range(norient):
        angl = o * np.pi / norient
        sum_e = np.zeros((rows, cols))
        sum_o = np.zeros((rows, cols))
        sum_an = np.zeros((rows, cols))
        eo = []
        max_an = None
        for s in range(nscale):
            r = _fft.ifft2(imfft * filters[o, s])
            eo.append(r)
            an = np.abs(r)
            sum_an += an
            sum_e += r.real
            sum_o += r.imag
            max_an = an if max_an is None else np.maximum(max_an, an)
        xenergy = np.sqrt(sum_e * sum_e + sum_o * sum_o) + eps
        mean_e = sum_e / xenergy
        mean_o = sum_o / xenergy
        energy = np.zeros((rows, cols))
        for r in eo:
            e, od = r.real, r.imag
            energy += e * mean_e + od * mean_o - np.abs(e * mean_o - od * mean_e)

        # noise compensation
        a0 = eo[0]
        median_e2n = np.median(a0.real * a0.real + a0.imag * a0.imag)
        mean_e2n = -median_e2n / np.log(0.5)
        noise_power = mean_e2n / em_n[o]
        est_noise_energy2 = 2 * noise_power * an2[o] + 4 * noise_power * aiaj[o]
        tau = np.sqrt(max(est_noise_energy2, 0.0) / 2)
        est_noise_energy = tau * np.sqrt(np.pi / 2)
        est_noise_sigma = np.sqrt((2 - np.pi / 2) * tau**2)
        t = (est_noise_energy + k * est_noise_sigma) / 1.7
        energy = np.maximum(energy - t, 0.0)

        width = sum_an / (max_an + eps) / nscale
        weight = 1.0 / (1.0 + np.exp((cutoff - width) * g))
        energy_o = weight * energy
        total_sum_an += sum_an
        total_energy += energy_o

        pc_o = energy_o / (sum_an + eps)
        covx = pc_o * np.cos(angl)
        covy = pc_o * np.sin(angl)
        covx2 += covx * covx
        covy2 += covy * covy
        covxy += covx * covy

    pc = total_energy / (total_sum_an + eps)
    covx2 /= norient / 2
    covy2 /= norient / 2
    covxy /= norient  # = 2 covxy / (norient / 2)
    denom = np.sqrt(covxy * covxy + (covx2 - covy2) ** 2) + eps
    big_m = (covy2 + covx2 + denom) / 2
    small_m = (covy2 + covx2 - denom) / 2
    return pc, big_m, small_m


_QP_WIN = _gauss1d(11, 1.5)


def _qp_component(f1, f2, fmax, ff, mask1, mask2, mask3) -> float:
    c = 1e-4
    k = _QP_WIN
    i1 = f1 * mask1
    i2 = f2 * mask2
    im = fmax * mask3
    mu1, mu2, muf, mum = (_filter_same(v, k) for v in (i1, i2, ff, im))
    s1 = _filter_same(i1 * i1, k) - mu1 * mu1
    s2 = _filter_same(i2 * i2, k) - mu2 * mu2
    sm = _filter_same(im * im, k) - mum * mum
    sf = _filter_same(ff * ff, k) - muf * muf
    s1f = _filter_same(i1 * ff, k) - mu1 * muf
    s2f = _filter_same(i2 * ff, k) - mu2 * muf
    smf = _filter_same(im * ff, k) - mum * muf
    r1 = np.where(mask1, (s1f + c) / (np.sqrt(np.abs(s1 * sf)) + c), 0.0)
    r2 = np.where(mask2, (s2f + c) / (np.sqrt(np.abs(s2 * sf)) + c), 0.0)
    r3 = np.where(mask3, (smf + c) / (np.sqrt(np.abs(sm * sf)) + c), 0.0)
    n3 = int(mask3.sum())
    if n3 == 0:
        return 1.0
    return float(np.maximum(np.maximum(r1, r2), r3).sum() / n3)


def qp(a, b, f, *, threshold: float = 0.1, data_range: float = 255.0, return_components: bool = False):
    """Phase-congruency fusion metric Qp (Zhao, Laganiere & Liu 2007).

    Phase congruency PC and its maximum / minimum moments M, m are computed for A,
    B and F (:func:`phase_congruency`: 4 scales, 6 orientations).  For each feature
    k in (PC, M, m), with source masks mask_A = PC_A > 0.1, mask_B = PC_B > 0.1,
    mask_max = max(PC_A, PC_B) > 0.1 and k_max taken from the source of larger PC:
    local correlation maps C_XF = (s_XF + C) / (sqrt(|s_X^2 s_F^2|) + C), C = 1e-4,
    with Gaussian 11x11 (sigma 1.5) windows, zero padding, source maps multiplied
    by their masks (the fused map is not masked), each map set to 0 outside its
    mask; P_k = sum over pixels of max(C_AF, C_BF, C_maxF) / |mask_max|.
    Qp = P_pc * P_M * P_m.  This is Z. Liu's reference implementation
    (``metricZhao`` / ``pc_assessFusion``).

    Limits: if no source pixel has PC > ``threshold`` (e.g. constant sources) each
    P_k is defined as 1 (no feature to lose).  Because the fused map is not masked,
    Qp(A, A, A) is slightly below 1; because of the constant C, a fused image
    without structure (s_F = 0) scores C / C = 1 in each window, so Qp must be
    read together with the other metrics.

    Args:
        a: (H, W) array_like, source A; H, W >= 2.
        threshold: float, phase-congruency threshold of the feature masks (0.1).
        return_components: bool, also return (P_pc, P_M, P_m).

    Returns:
        float, or (float, (float, float, float)) with ``return_components``.
    """
    a, b, f = _prepare((a, "a"), (b, "b"), (f, "f"), data_range=data_range, min_size=2)
    st = PhaseCongruencySettings()
    pc1, m1_big, m1 = _phasecong(a, st)
    pc2, m2_big, m2 = _phasecong(b, st)
    pcf, mf_big, mf = _phasecong(f, st)
    sel = pc1 > pc2
    pc_max = np.where(sel, pc1, pc2)
    big_max = np.where(sel, m1_big, m2_big)
    small_max = np.where(sel, m1, m2)
    mask1 = pc1 > threshold
    mask2 = pc2 > threshold
    mask3 = pc_max > threshold
    p_pc = _qp_component(pc1, pc2, pc_max, pcf, mask1, mask2, mask3)
    p_big = _qp_component(m1_big, m2_big, big_max, mf_big, mask1, mask2, mask3)
    p_small = _qp_component(m1, m2, small_max, mf, mask1, mask2, mask3)
    val = p_pc * p_big * p_small
    if return_components:
        return val, (p_pc, p_big, p_small)
    return val


