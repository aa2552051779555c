"""Old code beside new code in one process, interleaved: the training step (CPU seconds) and inference.

    git archive b907076 src | tar -x -C /tmp/derun_old          # the code before issue 21
    python benchmarks/bench_before_after.py --old /tmp/derun_old/src [--steps 8] [--sizes 512 1024] [--mallopt]

The old tree is imported as ``napari_derun_old`` (a copy with its absolute imports renamed, made under
``--work``), so both run in the same process with the same load: the ratio of medians is robust on a busy
machine where separate runs are not. Training: one step of batch 4 × 64² (forward, fusion loss, adjoint
loss, backward, Adam), one thread, process CPU seconds, for the shipped setting (guided, no checkpointing,
reflect pad 4) and the next one (``restore=12``); both models start from the same weights. Inference:
the shipped ``gfp_pc`` weights in both, wall seconds, and the max abs difference of the outputs.
``--mallopt`` first raises glibc's malloc thresholds, as ``napari-derun train`` does (``_runtime.py``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import re
import shutil
import statistics
import sys
import time


def import_old(src: str, work: str):
    """Copy ``src/napari_derun`` to ``work/napari_derun_old`` with renamed imports and import it."""
    dst = pathlib.Path(work) / "napari_derun_old"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(pathlib.Path(src) / "napari_derun", dst)
    for p in dst.rglob("*.py"):
        p.write_text(re.sub(r"\bnapari_derun\b", "napari_derun_old", p.read_text(encoding="utf-8")), encoding="utf-8")
    sys.path.insert(0, str(work))
    return importlib.import_module("napari_derun_old")


def train_steps(pkg: str, restore: int, steps: int):
    """A generator of one training step's CPU seconds per ``next()`` (package ``pkg``)."""
    import torch

    model = importlib.import_module(f"{pkg}.core.model")
    config = importlib.import_module(f"{pkg}.training.config")
    loop = importlib.import_module(f"{pkg}.training.loop")
    torch.manual_seed(0)
    m = model.DeRUN.from_hifm(guided=True, **({"restore": restore} if restore else {}))
    cfg = config.TrainConfig(objective="fusion")
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(4, 1, 64, 64, generator=g), torch.rand(4, 1, 64, 64, generator=g)
    while True:
        t0 = time.process_time()
        opt.zero_grad()
        with loop._padding(m, 4):
            x = m(a, b, checkpoint=False)
        loss = cfg.loss(x, a, b)[0] + 0.01 * model.adjoint_loss(m)
        loss.backward()
        opt.step()
        yield time.process_time() - t0


def main(argv=None) -> dict:
    """Run both comparisons; print and return the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the old tree's src/ folder")
    ap.add_argument("--work", default="/tmp/derun_before_after")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="*", default=[512, 1024])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the inference runs (training: 1)")
    ap.add_argument("--mallopt", action="store_true",
                    help="raise glibc's malloc thresholds first, as the napari-derun command line does (_runtime.py)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    if args.mallopt:
        from napari_derun._runtime import tune_cpu_allocator

        tune_cpu_allocator()

    torch.set_num_threads(1)
    pathlib.Path(args.work).mkdir(parents=True, exist_ok=True)
    import_old(args.old, args.work)
    res: dict = {"torch": torch.__version__, "mallopt": args.mallopt, "train": {}, "inference": {}}
    for restore in ((0, 12) if args.steps > 0 else ()):
        gens = {k: train_steps(k, restore, args.steps) for k in ("napari_derun_old", "napari_derun")}
        times: dict[str, list[float]] = {k: [] for k in gens}
        for i in range(args.steps + 2):
            for k, gen in (gens.items() if i % 2 else reversed(gens.items())):
                t = next(gen)
                if i >= 2:
                    times[k].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        key = f"restore={restore}"
        res["train"][key] = {"old_cpu_s": round(med["napari_derun_old"], 4), "new_cpu_s": round(med["napari_derun"], 4),
                             "speedup": round(med["napari_derun_old"] / med["napari_derun"], 2)}
        print("train", key, res["train"][key], flush=True)
    torch.set_num_threads(args.threads)
    res["inference_threads"] = args.threads
    for size in args.sizes:
        new = importlib.import_module("napari_derun.engine.registry").load_model("gfp_pc", device="cpu").module
        old_model = importlib.import_module("napari_derun_old.core.model")
        old = old_model.DeRUN(old_model.DeRUNConfig(**new.config.to_dict())).eval()
        old.load_state_dict(new.state_dict())  # the same shipped weights in the old code

        def runner(net):
            def run(a, b):
                with torch.no_grad():
                    return net(a, b)
            return run

        fns = {"napari_derun_old": runner(old), "napari_derun": runner(new)}
        g = torch.Generator().manual_seed(size)
        a, b = torch.rand(1, 1, size, size, generator=g), torch.rand(1, 1, size, size, generator=g)
        outs = {k: f(a, b) for k, f in fns.items()}
        times = {k: [] for k in fns}
        for r in range(args.repeats):
            for k, f in (fns.items() if r % 2 else reversed(fns.items())):
                t0 = time.perf_counter()
                f(a, b)
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        res["inference"][size] = {"old_s": round(med["napari_derun_old"], 3), "new_s": round(med["napari_derun"], 3),
                                  "speedup": round(med["napari_derun_old"] / med["napari_derun"], 2),
                                  "max_abs_diff": float((outs["napari_derun"] - outs["napari_derun_old"]).abs().max())}
        print("inference", size, res["inference"][size], flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
