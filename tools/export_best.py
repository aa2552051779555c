"""Write the best-so-far model of a resumable training checkpoint as a plain model file.

    python tools/export_best.py runs/gfp_pc.ckpt.safetensors src/napari_derun/weights/gfp_pc.safetensors \\
        --name gfp_pc --tasks gfp_pc

The checkpoint keeps the best weights (by validation mean rank) under ``extra/best/``; the output
holds them with the run's provenance (config, data, history, the best epoch's scores) and without
the optimiser state, so it can ship (≈ 0.1 MB).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--name", required=True)
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--split", default="per task, pairs sorted by name, every 5th (index % 5 == 4) held back for "
                    "validation", help="how the pairs were split (stored in the provenance)")
    a = ap.parse_args(argv)
    from napari_derun.io.checkpoint import load_checkpoint, save_checkpoint

    model, info, extra = load_checkpoint(a.checkpoint)
    best = {k[len("best/"):]: v for k, v in extra.items() if k.startswith("best/")}
    if best:
        model.load_state_dict(best)
    info = {k: v for k, v in info.items() if k not in ("format", "format_version", "config", "training_state")}
    info["name"] = a.name
    info.setdefault("data", {})["tasks"] = a.tasks
    info["data"]["split"] = a.split
    info["data"]["licence"] = ("derived from research-use images listed in shared/data/SOURCES.md "
                               "(MMIF-CDDFuse test_img, SuperFusion MSRS test set, MSRS train, TNO, M3FD, GFP/PC "
                               "pairs); see docs/training.md")
    hist = info.get("history", [])
    info["exported"] = {"from": Path(a.checkpoint).name, "epochs_done": hist[-1]["epoch"] if hist else 0,
                        "steps_done": sum(h.get("steps", 0) for h in hist),
                        "best": (info.get("metrics") or {}).get("best")}
    save_checkpoint(a.out, model.eval(), info)
    print(json.dumps(info["exported"], default=str)[:400])


if __name__ == "__main__":
    main()
