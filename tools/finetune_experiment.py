"""Fine-tune the shipped gfp_pc weights on 5 gfp_pc pairs; score on 6 other pairs before/after.

    OMP_NUM_THREADS=1 python tools/finetune_experiment.py
Same setup as the slow test tests/test_training.py::test_finetune_gfp_improves.
"""
import json
import time
from pathlib import Path

import torch

from napari_derun.training import PairDataset, finetune, peak_rss_mb

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
torch.set_num_threads(1)
ds = PairDataset(DATA / "gfp_pc")
tr = PairDataset._from_planes(ds.names[:5], ds.a[:5], ds.b[:5], ds.source)
va = PairDataset._from_planes(ds.names[50:56], ds.a[50:56], ds.b[50:56], ds.source)
t = time.perf_counter()
res = finetune(tr, model="gfp_pc", epochs=3, lr=1e-4, patch=64, val_pairs=va, steps_per_epoch=10,
               device="cpu", val_metrics=True, seed=0)
out = {"train": tr.names, "val": va.names, "initial": res.info["metrics"]["initial"],
       "best": res.info["metrics"]["best"], "history": [{k: h[k] for k in ("epoch", "train_loss", "val_loss")} for h in res.history],
       "seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}
print(json.dumps(out, indent=1))
