"""A quick sweep for ``train_only="restore"`` (docs/robustness.md, "Degradation training so far"): trains the
input restoration network alone on gfp_pc's *training* pairs (half the patches degraded) and reports, on the
*validation* pairs (192² crops, each degradation of each input at levels 2 and 4), the mean L1 distance of the
degraded input and of the restored input to the clean one, and how much clean inputs change.

    OMP_NUM_THREADS=1 python tools/restore_only_sweep.py LOSS LR STEPS HIDDEN [rand]
    OMP_NUM_THREADS=1 python tools/restore_only_sweep.py mse 3e-3 300 24

LOSS is l1 or mse; ``rand`` starts the last layer at small random weights instead of zero.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gfp_pc"
torch.set_num_threads(1)
from napari_derun.core.model import InputRestore
from napari_derun.training.datasets import PairDataset, degrade_batch
from napari_derun.data.degrade import apply, MODALITIES
loss_kind, lr, steps, hidden = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
zero_init = len(sys.argv) < 6 or sys.argv[5] != "rand"
torch.manual_seed(0)
sp = json.load(open(ROOT / "tools/splits/gfp_pc.json"))
tr = PairDataset(DATA, select=lambda i, n: n in set(sp["train"]))
va = PairDataset(DATA, select=lambda i, n: n in set(sp["val"]))
R = InputRestore(hidden)
if not zero_init:
    torch.nn.init.normal_(R.out.weight, std=1e-3)
opt = torch.optim.Adam(R.parameters(), lr)
rng = np.random.default_rng(0); drng = np.random.default_rng(1)
mods = [("phase_contrast", "fluorescence")] * 8
t0 = time.time()
for s in range(steps):
    na, nb, nf, idx = tr.batch(rng, 8, 96, True, return_floor=True, return_index=True)
    da, db = degrade_batch(na, nb, mods, 0.5, drng, (1, 4))
    ra, rb = R(torch.from_numpy(da), torch.from_numpy(db))
    ta, tb = torch.from_numpy(na), torch.from_numpy(nb)
    if loss_kind == "l1":
        loss = F.l1_loss(ra, ta) + F.l1_loss(rb, tb)
    else:
        loss = F.mse_loss(ra, ta) + F.mse_loss(rb, tb)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(R.parameters(), 1.0); opt.step()
print(f"{loss_kind} lr {lr} steps {steps} hidden {hidden} zero_init {zero_init}: {time.time()-t0:.0f} s")
tot0 = tot1 = 0
for side, mod in (("a", "phase_contrast"), ("b", "fluorescence")):
    for deg in MODALITIES[mod]:
        for lv in (2, 4):
            e0 = e1 = 0
            for i, (a, b) in enumerate(zip(va.a, va.b)):
                a = np.ascontiguousarray(a[:192, :192], np.float32); b = np.ascontiguousarray(b[:192, :192], np.float32)
                r = np.random.default_rng([i, lv])
                da, db = (apply(a, deg, lv, seed=r), b) if side == "a" else (a, apply(b, deg, lv, seed=r))
                with torch.no_grad():
                    ra, rb = R(torch.from_numpy(np.ascontiguousarray(da, np.float32))[None, None], torch.from_numpy(np.ascontiguousarray(db, np.float32))[None, None])
                clean, got, din = (a, ra, da) if side == "a" else (b, rb, db)
                e0 += np.abs(din - clean).mean(); e1 += np.abs(got[0, 0].numpy() - clean).mean()
            n = len(va.a); tot0 += e0 / n; tot1 += e1 / n
            print(f"  {side} {deg} {lv}: L1 degraded {e0/n:.4f} restored {e1/n:.4f}")
# clean pairs unchanged?
e = 0
for a, b in zip(va.a, va.b):
    a = np.ascontiguousarray(a[:192, :192], np.float32); b = np.ascontiguousarray(b[:192, :192], np.float32)
    with torch.no_grad():
        ra, rb = R(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])
    e += (np.abs(ra[0,0].numpy() - a).mean() + np.abs(rb[0,0].numpy() - b).mean())
print(f"  total degraded {tot0:.4f} restored {tot1:.4f}; clean change {e/len(va.a):.4f}")
