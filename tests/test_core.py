"""Core math: filters, Fourier solve, HIFM/ADMM, DeRUN, LGDE."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import smooth_pair
from napari_derun.core import ops
from napari_derun.core.hifm import HIFMParams, admm_iterations, hifm_admm, hifm_energy
from napari_derun.core.losses import derun_loss, direction_histogram, lgde, lgde_loss
from napari_derun.core.model import DeRUN, DeRUNConfig, adjoint_loss


def _dense_operator(bank: np.ndarray, h: int, w: int) -> np.ndarray:
    """Dense matrices of circular cross-correlation with each kernel, built pixel by pixel."""
    mats = []
    for k in bank[:, 0]:
        kh, kw = k.shape
        A = np.zeros((h * w, h * w))
        for i in range(h):
            for j in range(w):
                for di in range(kh):
                    for dj in range(kw):
                        ii, jj = (i + di - kh // 2) % h, (j + dj - kw // 2) % w
                        A[i * w + j, ii * w + jj] += k[di, dj]
        mats.append(A)
    return np.stack(mats)


def test_filter_bank_matches_dense_and_adjoint():
    h, w = 7, 6
    bank = ops.sobel_bank(torch.float64)
    x = torch.randn(1, 1, h, w, dtype=torch.float64)
    D = _dense_operator(bank.numpy(), h, w)
    y = ops.filter_bank_apply(x, bank)[0].reshape(4, -1).numpy()
    np.testing.assert_allclose(y, D @ x.reshape(-1).numpy(), atol=1e-12)
    z = torch.randn(1, 4, h, w, dtype=torch.float64)
    xt = ops.filter_bank_adjoint(z, bank)[0, 0].reshape(-1).numpy()
    ref = sum(D[c].T @ z[0, c].reshape(-1).numpy() for c in range(4))
    np.testing.assert_allclose(xt, ref, atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 6), (9, 11)])
def test_fourier_solve_equals_dense_solve(shape):
    h, w = shape
    bank_l = ops.sobel_bank(torch.float64)
    bank_k = ops.sobel_bank(torch.float64) * torch.tensor([1.0, -0.5, 2.0, 0.3], dtype=torch.float64).view(4, 1, 1, 1)
    rho = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    tau = torch.tensor([1.5, 0.1, 0.7, 4.0], dtype=torch.float64)
    rhs = torch.randn(2, 1, h, w, dtype=torch.float64)
    y = ops.fourier_solve(rhs, ops.psf2otf(bank_l, shape), rho, ops.psf2otf(bank_k, shape), tau)
    Dl, Dk = _dense_operator(bank_l.numpy(), h, w), _dense_operator(bank_k.numpy(), h, w)
    A = np.eye(h * w)
    A += sum(r * Dl[i].T @ Dl[i] for i, r in enumerate(rho.numpy()))
    A += sum(t * Dk[i].T @ Dk[i] for i, t in enumerate(tau.numpy()))
    for bi in range(2):
        ref = np.linalg.solve(A, rhs[bi, 0].reshape(-1).numpy())
        got = y[bi, 0].reshape(-1).numpy()
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5


def test_admm_energy_decreases_on_real_looking_data():
    a, b = smooth_pair(64, 56)
    p = HIFMParams(n_iter=25)
    m = torch.tensor(b - a, dtype=torch.float64)[None, None]
    energies = [float(hifm_energy(st["Y"], m, p)) for st in admm_iterations(m, p)]
    # non-increasing after the first iterate (up to round-off), and a real decrease overall
    diffs = np.diff(energies)
    assert (diffs <= 1e-9 * abs(energies[0])).all(), energies
    assert energies[-1] < 0.97 * energies[0]


@pytest.mark.slow
def test_admm_energy_decreases_on_real_pair(shared_data):
    from PIL import Image

    pa = sorted((shared_data / "pet_mri" / "a").glob("*.png"))[0]
    a = np.asarray(Image.open(pa).convert("L"), dtype=np.float64) / 255
    b = np.asarray(Image.open(shared_data / "pet_mri" / "b" / pa.name).convert("L"), dtype=np.float64) / 255
    p = HIFMParams(n_iter=30)
    m = torch.tensor(b - a)[None, None]
    energies = np.array([float(hifm_energy(st["Y"], m, p)) for st in admm_iterations(m, p)])
    # ADMM is not a descent method on a non-convex model, but the energy must go down overall
    assert energies[-1] < 0.8 * energies[0]
    assert energies[-1] < energies[: len(energies) // 2].min()
    assert (np.diff(energies) < 0).mean() >= 0.8


def test_admm_without_regularisation_returns_salient_image():
    a, b = smooth_pair(33, 29)
    x = hifm_admm(a.astype(np.float64), b.astype(np.float64), lam=0.0, mu=0.0, n_iter=60)
    np.testing.assert_allclose(x, b, atol=1e-6)


def test_admm_iterates_and_shapes():
    a, b = smooth_pair(31, 17)
    x, ys = hifm_admm(a, b, return_iterates=True, n_iter=4)
    assert x.shape == a.shape and x.dtype == np.float32
    assert len(ys) == 4 and all(y.shape == a.shape for y in ys)
    np.testing.assert_allclose(x, ys[-1] + a, atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        hifm_admm(a, b[:-1])


@pytest.mark.parametrize("shape,guided", [((37, 29), False), ((64, 64), False), ((37, 29), True)])
def test_untrained_derun_equals_admm(shape, guided):
    a, b = smooth_pair(*shape, seed=3)
    a2, b2 = smooth_pair(*shape, seed=4)
    A = torch.tensor(np.stack([a, a2]))[:, None]
    B = torch.tensor(np.stack([b, b2]))[:, None]
    net = DeRUN.from_hifm(HIFMParams(), guided=guided)  # the guided extension starts at zero effect too
    with torch.no_grad():
        x, stages = net(A, B, return_stages=True)
    ref, ys = hifm_admm(A, B, return_iterates=True)
    assert (x - ref).abs().max() < 1e-4
    assert len(stages["X"]) == 9
    for y_net, y_ref in zip(stages["Y"], ys):
        assert (y_net - y_ref).abs().max() < 1e-4
    assert stages["E"][0].shape == (2, 4, *shape)


def test_parameter_budget():
    net = DeRUN()
    n = net.num_parameters()
    assert 5_000 < n < 70_000, n


def _hard_lgde_reference(img: np.ndarray) -> np.ndarray:
    """Independent numpy LGDE with hard bins: Sobel via numpy slicing, block histograms by loops."""
    p = np.pad(img, 1, mode="reflect")
    gx = ((p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])) / 8
    gy = ((p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])) / 8
    ang = np.arctan2(gy, np.where(gx**2 + gy**2 < 1e-12, 1.0, gx))
    bins = np.round(np.mod(ang / (np.pi / 4), 8)).astype(int) % 8
    h, w = img.shape
    out = np.zeros((h, w))
    for dil in (1, 2):
        q = np.pad(bins, dil, mode="reflect")
        for i in range(h):
            for j in range(w):
                block = q[i : i + 2 * dil + 1 : dil, j : j + 2 * dil + 1 : dil].ravel()
                pr = np.bincount(block, minlength=8) / 9.0
                pr = pr[pr > 0]
                out[i, j] += -0.5 * (pr * np.log(pr)).sum()
    return out


def test_lgde_soft_equals_hard_on_bin_centre_directions():
    rng = np.random.default_rng(1)
    h, w = 20, 17
    # g(x) + h(y) with central differences in {-1, 0, 1}: every direction is a multiple of 45°
    def seq(n):
        s = np.zeros(n)
        for i in range(2, n):
            s[i] = s[i - 2] + 2 * rng.integers(-1, 2)
        return s

    img = seq(w)[None, :] + seq(h)[:, None]
    x = torch.tensor(img)[None, None]
    soft = lgde(x, soft=True)[0, 0].numpy()
    hard = lgde(x, soft=False)[0, 0].numpy()
    np.testing.assert_allclose(soft, hard, atol=1e-5)
    np.testing.assert_allclose(hard, _hard_lgde_reference(img), atol=1e-9)
    assert hard.max() > 0.5  # the test image really has mixed directions
    memb = direction_histogram(x)
    np.testing.assert_allclose(memb.sum(1).numpy(), 1.0, atol=1e-9)


def test_lgde_gradient_finite_on_flat_image():
    x = torch.full((1, 1, 16, 16), 0.3, requires_grad=True)
    v = torch.rand(1, 1, 16, 16)
    loss = lgde_loss(x, v)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    y = torch.zeros(1, 1, 16, 16, requires_grad=True)
    lgde(y).sum().backward()
    assert torch.isfinite(y.grad).all()


def test_lgde_loss_decreases_under_optimisation():
    a, _ = smooth_pair(32, 32)
    v = torch.tensor(a)[None, None]
    x = (torch.rand(1, 1, 32, 32) * 0.1 + 0.45).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = lgde_loss(x, v)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


def _train_steps(net, a, b, steps, lr=1e-3):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        x = net(a, b)
        loss, _ = derun_loss(x, a, b)
        loss = loss + 0.01 * adjoint_loss(net, (16, 16))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("guided", [False, True])
def test_gradients_reach_every_parameter(guided):
    # Built so that every parameter is reachable, not by luck: M = b − a carries a hard step of
    # height ~1.5 (b → 1, a → 0 in a square), far above every soft threshold (λ/ρ = 0.3), so
    # each stage's S passes part of its input and its threshold gets a gradient. The
    # precondition is asserted below, so a change of the model's scales fails loudly here.
    a, b = smooth_pair(24, 24)
    a, b = a.copy(), b.copy()
    b[6:18, 6:18] = 1.0
    a[6:18, 6:18] = 0.0
    A, B = torch.tensor(a)[None, None], torch.tensor(b)[None, None]
    net = DeRUN(DeRUNConfig(n_stages=2, guided=guided))
    _train_steps(net, A, B, 3)
    seen = {}

    def hook(mod, inp, out):
        seen[mod] = (float(inp[0].abs().max()), float(mod.threshold.min()))

    handles = [st.S.register_forward_hook(hook) for st in net.stages if not st.last]
    net.zero_grad()
    x = net(A, B)
    for h in handles:
        h.remove()
    for mx, thr in seen.values():
        assert mx > 1.2 * thr, f"test input does not reach the soft threshold ({mx:.3f} vs {thr:.3f})"
    loss, _ = derun_loss(x, A, B)
    (loss + 0.01 * adjoint_loss(net, (16, 16))).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.slow
def test_training_steps_on_real_pairs_lower_the_loss(shared_data):
    from PIL import Image

    names = sorted((shared_data / "gfp_pc" / "a").glob("*.jpg"))[:2]
    A, B = [], []
    for pa in names:
        a = np.asarray(Image.open(pa).convert("L"), dtype=np.float32) / 255
        b = np.asarray(Image.open(shared_data / "gfp_pc" / "b" / pa.name).convert("L"), dtype=np.float32) / 255
        A.append(a[100:164, 100:164])
        B.append(b[100:164, 100:164])
    A, B = torch.tensor(np.stack(A))[:, None], torch.tensor(np.stack(B))[:, None]
    net = DeRUN()
    with torch.no_grad():
        before = float(derun_loss(net(A, B), A, B)[0])
    _train_steps(net, A, B, 8, lr=3e-4)
    with torch.no_grad():
        after = float(derun_loss(net(A, B), A, B)[0])
    assert after < before


def test_pwsm_extractors_match_their_definition():
    """grad = bank ⋆ x + specific(relu(shared(x))), each piece with circular padding, also off init."""
    import torch.nn.functional as F

    net = DeRUN()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    e = net.stages[1].ext
    x, z = torch.randn(2, 1, 13, 11), torch.randn(2, 4, 13, 11)
    torch.testing.assert_close(e.grad_l(x), ops.filter_bank_apply(x, e.bank_l) + e.spec_l(F.relu(e.shared_fwd(x))))
    torch.testing.assert_close(e.grad_k(x), ops.filter_bank_apply(x, e.bank_k) + e.spec_k(F.relu(e.shared_fwd(x))))
    torch.testing.assert_close(e.grad_lt(z), ops.filter_bank_adjoint(z, e.bank_l) + e.spec_lt(F.relu(e.shared_adj(z))))
    torch.testing.assert_close(e.grad_kt(z), ops.filter_bank_adjoint(z, e.bank_k) + e.spec_kt(F.relu(e.shared_adj(z))))


def test_training_free_solver_is_a_module_with_derun_interface():
    """HIFMSolver is the solver as an nn.Module with DeRUN's forward: the engine runs both alike."""
    import napari_derun as nd
    from napari_derun.core.hifm import HIFMSolver

    a, b = smooth_pair(30, 26, seed=3)
    ta, tb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    solver = HIFMSolver()
    assert isinstance(solver, torch.nn.Module) and solver.num_parameters() == 0 and solver.n_stages == 9
    x, st = solver(ta, tb, return_stages=True)
    np.testing.assert_array_equal(x[0, 0].numpy(), hifm_admm(a, b))  # the same solve as the function
    net = DeRUN.from_hifm()
    with torch.no_grad():
        y, st_net = net(ta, tb, return_stages=True)
    assert {k: len(v) for k, v in st.items()} == {k: len(v) for k, v in st_net.items()}
    assert all(s.shape == t.shape for k in st for s, t in zip(st[k], st_net[k]))
    torch.testing.assert_close(x, y, atol=1e-4, rtol=0)  # the untrained unfolding is the solver
    fz = nd.load_model("admm", "cpu", precision="bf16")
    assert isinstance(fz.module, HIFMSolver) and fz.precision == "bf16" and fz.n_stages == 9
    with pytest.raises(ValueError, match="must both be"):
        solver(ta, tb[..., :-1])
