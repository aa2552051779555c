"""Train one shipped DeRUN weight file on ../shared/data (see docs/training.md).

Validation split: per task, every 5th pair sorted by name (i % 5 == 4) is held back; the
checkpoint kept is the one with the best validation mean rank against the reference methods.
Long runs write a resumable checkpoint every epoch and continue from it with ``--resume``:

    OMP_NUM_THREADS=1 python tools/train_shipped.py gfp_pc --tasks gfp_pc --objective fusion \\
        --target lift --guided --checkpoint runs/gfp_pc.ckpt.safetensors [--resume]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "napari_derun" / "weights"


SPLITS = Path(__file__).resolve().parent / "splits"


def load_split(tasks, data=DATA, every=5, splits=None):
    """``(train, val)`` of ``tasks``: from the split files in ``splits`` (tools/splits/<task>.json, the
    test pairs left out entirely) or, without, every ``every``-th pair held back for validation."""
    from napari_derun.training.datasets import PairDataset

    trs, vas = [], []
    for t in tasks:
        if splits is not None:
            sp = json.loads((Path(splits) / f"{t}.json").read_text())
            keep = set(sp["train"]) | set(sp["val"])
            ds = PairDataset(data / t, select=lambda i, n: n in keep)
            va, tr = ds.split_names(sp["val"])
        else:
            tr, va = PairDataset(data / t).split(every=every)
        trs.append(tr)
        vas.append(va)
    return PairDataset.concat(trs, tasks), PairDataset.concat(vas, tasks)


def center_crop(ds, side):
    """Every pair cropped to its central ``side`` × ``side`` (at most) window (cheaper validation)."""
    from napari_derun.training.datasets import PairDataset

    def c(x):
        h, w = x.shape
        y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
        return x[y0:y0 + side, x0:x0 + side].copy()

    return PairDataset._from_planes(ds.names, [c(x) for x in ds.a], [c(x) for x in ds.b], ds.source, ds.problems,
                                    modalities=ds.modalities)


def with_degraded(va, seed=1000):
    """The validation pairs plus, per pair, a degraded copy of a and one of b (degradations of the pair's
    modalities in turn, levels 2 and 4 alternating), scored against the clean pair."""
    from napari_derun.data.degrade import MODALITIES
    from napari_derun.training.datasets import PairDataset

    parts = [va]
    for i, mods in enumerate(va.modalities):
        if mods is None:
            continue
        da, db = MODALITIES[mods[0]], MODALITIES[mods[1]]
        cases = [("a", da[i % len(da)], 2 + 2 * (i % 2)), ("b", db[i % len(db)], 4 - 2 * (i % 2))]
        parts.append(va.subset([i]).degraded(cases, seed=seed + i))
    return PairDataset.concat(parts)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps", type=int, default=250, help="steps per epoch")
    p.add_argument("--val-every", type=int, default=1)
    p.add_argument("--val-limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--objective", default="fusion", choices=("paper", "fusion"))
    p.add_argument("--target", default="max", choices=("max", "lift"))
    p.add_argument("--w", nargs=4, type=float, default=None, metavar=("INT", "GRAD", "SSIM", "LGDE"))
    p.add_argument("--guided", action="store_true")
    p.add_argument("--train-pad", type=int, default=4)
    p.add_argument("--select", default="rank", choices=("rank", "loss"))
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    p.add_argument("--out", default=None)
    p.add_argument("--init", default="admm", help="admm or a model / checkpoint to continue from")
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--min-sr", type=float, default=None, help="selection floor on validation SR")
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                   help="train only on the training pairs whose name contains one of these (validation: the whole split)")
    p.add_argument("--splits", default=None, help="folder of split files (tools/splits): train on train, "
                   "validate on val, never read test")
    p.add_argument("--degrade", type=float, default=0.0, help="share of training patches with degraded inputs")
    p.add_argument("--w-salient", type=float, default=0.0, help="weight of the salient-contrast term")
    p.add_argument("--lift-gain", type=float, default=1.0, help="gain g of the lift target a + g relu(b - b0)")
    p.add_argument("--photometric", type=float, default=0.0, help="share of patches with a random exposure change")
    p.add_argument("--restore", type=int, default=0, help="channels of the input restoration network (0: none)")
    p.add_argument("--val-degraded", action="store_true", help="validate on degraded copies too (vs clean sources)")
    p.add_argument("--val-crop", type=int, default=None, help="crop validation pairs to this central square")
    a = p.parse_args(argv)
    import torch

    from napari_derun.training.config import TrainConfig
    from napari_derun.training.loop import peak_rss_mb, train

    torch.set_num_threads(a.threads)
    tr, va = load_split(a.tasks, Path(a.data), splits=a.splits)
    if a.val_crop:
        va = center_crop(va, a.val_crop)
    if a.val_degraded:
        va = with_degraded(va)
    if a.only:
        from napari_derun.training.datasets import PairDataset

        keep = [i for i, n in enumerate(tr.names) if any(t in n for t in a.only)]
        if not keep:
            raise SystemExit(f"--only {a.only}: no training pair matches")
        tr = PairDataset._from_planes([tr.names[i] for i in keep], [tr.a[i] for i in keep],
                                      [tr.b[i] for i in keep], tr.source)
    print(f"{a.name}: {len(tr)} train / {len(va)} val pairs", flush=True)
    w = dict(zip(("w_intensity", "w_gradient", "w_ssim", "w_lgde"), a.w)) if a.w else {}
    cfg = TrainConfig(lr=a.lr, batch=a.batch, patch=a.patch, epochs=a.epochs, steps_per_epoch=a.steps,
                      decay_start=a.epochs // 2, decay_every=max(1, a.epochs // 10), decay=0.8,
                      val_every=a.val_every, val_metrics=True, val_initial=True, max_seconds=a.seconds,
                      num_threads=a.threads, device="cpu", seed=0, checkpointing=False,
                      objective=a.objective, target=a.target, guided=a.guided, train_pad=a.train_pad,
                      select=a.select, val_limit=a.val_limit, grad_clip=a.grad_clip, min_sr=a.min_sr,
                      degrade=a.degrade, restore=a.restore, photometric=a.photometric, w_salient=a.w_salient, lift_gain=a.lift_gain, **w)

    def cb(e):
        if e.kind == "epoch":
            m = e.metrics or {}
            print(json.dumps({"epoch": e.epoch, "train_loss": round(e.train_loss, 5),
                              "val_loss": e.val_loss, "rank": e.rank, "SR": m.get("SR"), "SCD": m.get("SCD"),
                              "lr": e.lr, "best": e.best, "time": time.strftime("%H:%M:%S")}), flush=True)

    resume = a.checkpoint if (a.resume and a.checkpoint and Path(a.checkpoint).exists()) else None
    t0 = time.perf_counter()
    res = train(tr, va, init=a.init, config=None if resume else cfg, callback=cb,
                checkpoint_path=a.checkpoint, resume=resume)
    out = Path(a.out) if a.out else WEIGHTS / f"{a.name}.safetensors"
    res.info["data"]["tasks"] = a.tasks
    res.info["data"]["split"] = (f"split files {a.splits} (train / val; the test pairs never read)" if a.splits else
                                 "per task, pairs sorted by name, every 5th (index % 5 == 4) held back for validation")
    res.info["data"]["licence"] = ("derived from research-use images listed in shared/data/SOURCES.md "
                                   "(MMIF-CDDFuse test_img, SuperFusion MSRS test set, GFP/PC pairs); see docs/training.md")
    res.info["command"] = "python tools/train_shipped.py " + " ".join(sys.argv[1:] if argv is None else argv)
    res.save(out, best=True, name=a.name)
    print(f"saved {out} ({out.stat().st_size} bytes) in {time.perf_counter() - t0:.0f} s; "
          f"initial {json.dumps(res.info['metrics']['initial'])}; best {json.dumps(res.info['metrics']['best'])}; "
          f"peak RSS {peak_rss_mb():.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
