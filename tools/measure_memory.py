"""Peak RSS and time of training steps (batch 4, 128² patches, CPU), with and without checkpointing.

    OMP_NUM_THREADS=1 python tools/measure_memory.py [--checkpointing]
"""
import argparse
import time

import torch

from napari_derun.core.losses import derun_loss
from napari_derun.core.model import DeRUN, adjoint_loss
from torch.utils.checkpoint import checkpoint

from napari_derun.training.loop import peak_rss_mb

p = argparse.ArgumentParser()
p.add_argument("--checkpointing", action="store_true")
p.add_argument("--patch", type=int, default=128)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--steps", type=int, default=3)
a = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)
m = DeRUN.from_hifm()
opt = torch.optim.Adam(m.parameters(), 1e-4)
print(f"before training: peak RSS {peak_rss_mb():.0f} MiB")
for i in range(a.steps):
    ta, tb = torch.rand(a.batch, 1, a.patch, a.patch), torch.rand(a.batch, 1, a.patch, a.patch)
    t = time.perf_counter()
    x = checkpoint(m, ta, tb, use_reentrant=False) if a.checkpointing else m(ta, tb)
    loss = derun_loss(x, ta, tb)[0] + 0.01 * adjoint_loss(m)
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(f"step {i + 1}: {time.perf_counter() - t:.2f} s, peak RSS {peak_rss_mb():.0f} MiB")
