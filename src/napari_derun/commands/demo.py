"""``napari-derun demo``: fuse the built-in sample pairs and write the results."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


HELP = "fuse the built-in sample pairs (no data needed) and write PNG/TIFF results"
DESCRIPTION = ("Fuse the procedurally generated GFP + phase-contrast and PET + MRI samples.")


def options(p) -> None:
    """The command's arguments (cli.py makes the parser with HELP and DESCRIPTION)."""
    p.add_argument("--out", "-o", default="derun_demo", help="output folder (default: derun_demo)")
    p.add_argument("--model", default=None, help="model name or checkpoint (default: best shipped for each sample)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from .. import api
    from ..data import sample_data
    from ..data.task_guess import MODEL_OF_TASK
    from ..io.images import write_tiff

    from .._files import atomic_write_text, atomic_writer, check_writable

    out = Path(args.out)
    check_writable(out / "summary.json")  # before any work
    models = api.list_models()
    summary = {}
    for name, make in sample_data.SAMPLES.items():
        a, b = make()
        model = args.model or (MODEL_OF_TASK[name] if MODEL_OF_TASK[name] in models else "admm")
        t0 = time.perf_counter()
        fused = api.fuse(a, b, model=model, device=args.device)
        dt = time.perf_counter() - t0
        for tag, img in (("a", a), ("b", b), ("fused", fused)):
            arr = img if img.dtype == np.uint8 else (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
            with atomic_writer(out / f"{name}_{tag}.png") as fh:
                Image.fromarray(arr).save(fh, format="PNG")
        write_tiff(out / f"{name}_fused.tif", fused.astype(np.float32))
        summary[name] = {"model": model, "seconds": round(dt, 3), "shape": list(fused.shape)}
        print(f"{name}: fused {a.shape[:2]} with model={model} in {dt:.2f} s -> {out / (name + '_fused.png')}")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return 0
