"""Write ``tests/data/reference_outputs.safetensors``: fused outputs of the fp32 eager code as it was
before the speed work of issue 21 (commit b907076), for ``tests/test_speed_reference.py``.

    git archive b907076 src | tar -x -C /tmp/derun_b907076
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/derun_b907076/src python tests/data/make_reference_outputs.py

Models: the three shipped weights, the training-free ``admm``, and two perturbed DeRUNs whose state
dicts are stored too (the shipped guided weights with a random ``restore=12`` input network; a plain
model with random specific PWSM branches), so that the zero-initialised branches are active. Inputs: random and real-looking (the bundled synthetic
GFP / phase-contrast pair) at odd sizes, stored with the outputs. Also stored: the per-stage outputs of
one case (Y of every stage, E and H of the last one reported) and the parameter gradients of one training-style loss. Regenerating it with a later commit
would compare the code with itself: keep the file.
"""
from __future__ import annotations

import pathlib

import numpy as np
import torch

OUT = pathlib.Path(__file__).with_name("reference_outputs.safetensors")


def perturbed(restore: int, seed: int):
    """A DeRUN whose zero-initialised branches are switched on by seeded noise, well conditioned.

    With ``restore`` the shipped (trained, guided) ``gfp_pc`` weights plus an input restoration
    network of ``restore`` channels (random first layers, small random last layer); without it a plain
    DeRUN at its ADMM start with small random specific PWSM branches. (Noise on the piecewise-linear
    maps or the step sizes would make the network chaotic: 1e-6 on an input moving the output by 1e-2.)

    Args:
        restore: channels of the input restoration network (0: a plain model).
        seed: noise seed.

    Returns:
        The model in eval mode.
    """
    from napari_derun.core.model import DeRUN
    from napari_derun.engine.registry import load_model

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if restore:
        m = DeRUN.from_hifm(guided=True, restore=restore)
        m.load_state_dict(load_model("gfp_pc", device="cpu").module.state_dict(), strict=False)
        chosen = [p for k, p in m.named_parameters() if k.startswith("restore.out.")]
    else:
        m = DeRUN.from_hifm(guided=False)
        chosen = [p for k, p in m.named_parameters() if ".spec_" in k]
    with torch.no_grad():
        for p in chosen:
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return m.eval()


def inputs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The input pairs: name → ``(a, b)``, each ``(B, 1, H, W)`` float32 in [0, 1]."""
    from napari_derun.data.sample_data import gfp_pc

    g = torch.Generator().manual_seed(21)
    out = {"rand_37x53": (torch.rand(1, 1, 37, 53, generator=g), torch.rand(1, 1, 37, 53, generator=g)),
           "rand_b2_64x64": (torch.rand(2, 1, 64, 64, generator=g), torch.rand(2, 1, 64, 64, generator=g))}
    a, b = gfp_pc()
    a = torch.from_numpy(a.astype(np.float32) / 255.0)
    b = torch.from_numpy(b.astype(np.float32)[..., 1] / 255.0)
    out["real_101x75"] = (a[40:141, 60:135][None, None].contiguous(), b[40:141, 60:135][None, None].contiguous())
    out["real_130x97"] = (a[10:140, 100:197][None, None].contiguous(), b[10:140, 100:197][None, None].contiguous())
    return out


def models() -> dict[str, torch.nn.Module]:
    """The models: shipped, admm, and the two perturbed ones."""
    from napari_derun.core.hifm import HIFMSolver
    from napari_derun.engine.registry import load_model

    ms = {n: load_model(n, device="cpu").module for n in ("gfp_pc", "medical", "ivf")}
    ms["admm"] = HIFMSolver()
    ms["rand_restore"] = perturbed(12, 1)
    ms["rand_plain"] = perturbed(0, 2)
    return ms


def main() -> None:
    """Compute and write every reference tensor."""
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    t: dict[str, torch.Tensor] = {}
    ins = inputs()
    for k, (a, b) in ins.items():
        t[f"in/{k}/a"], t[f"in/{k}/b"] = a, b
    ms = models()
    for name in ("rand_restore", "rand_plain"):
        for k, v in ms[name].state_dict().items():
            t[f"sd/{name}/{k}"] = v.detach().clone().contiguous()
    with torch.no_grad():
        for name, m in ms.items():
            for k, (a, b) in ins.items():
                t[f"out/{name}/{k}"] = m(a, b)
        for name in ("gfp_pc", "rand_restore"):
            a, b = ins["rand_37x53"]
            x, st = ms[name](a, b, return_stages=True)
            t[f"stages/{name}/Y"] = torch.stack(st["Y"])
            t[f"stages/{name}/E_last"], t[f"stages/{name}/H_last"] = st["E"][-1], st["H"][-1]
    m = ms["rand_restore"].train()
    a, b = ins["rand_b2_64x64"]
    x = m(a[..., :32, :40], b[..., :32, :40])
    (x.square().mean() + (x - a[..., :32, :40]).abs().mean()).backward()
    for k, p in m.named_parameters():
        t[f"grad/rand_restore/{k}"] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in t.items()}, str(OUT), metadata={"commit": "b907076"})
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB, {len(t)} tensors)")


if __name__ == "__main__":
    main()
