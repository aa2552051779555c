"""How often the content-based task guess (napari_derun.data.task_guess) is right on real pairs.

    python tools/task_guess_accuracy.py [DATA_DIR] [--grey]

DATA_DIR holds <task>/a and <task>/b (default ../shared/data). Per task: the share of pairs whose task,
and whose model (what model="auto" runs), is guessed right; false swaps (pairs in the right order said to
be swapped); and the share of pairs given the wrong way round that are recognised as swapped.
``--grey`` first turns every image into one grey channel (the green channel of a GFP image, the
luminance of the others), as microscopes and scanners often store them.
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np

from napari_derun.io.planes import find_pairs, read_image
from napari_derun.data.task_guess import MODEL_OF_TASK, analyse_pair

TASKS = ("gfp_pc", "ivf", "pet_mri", "spect_mri", "ct_mri")


def _grey(x: np.ndarray, salient: bool) -> np.ndarray:
    if x.ndim == 2:
        return x
    m = x.reshape(-1, 3).mean(0)
    if salient and m.max() > 2 * m.min():  # one fluorescence channel stored as RGB
        return x[..., int(m.argmax())]
    return (x[..., :3] @ np.array([0.299, 0.587, 0.114])).astype(x.dtype)


def main(argv: list[str]) -> int:
    grey = "--grey" in argv
    args = [a for a in argv if not a.startswith("--")]
    root = Path(args[0]) if args else Path(__file__).resolve().parents[2] / "shared" / "data"
    print(f"| task | pairs | task right | model right | false swaps | swapped order recognised |{' (grey)' if grey else ''}")
    print("|---|---|---|---|---|---|")
    for task in TASKS:
        if not (root / task).is_dir():
            continue
        pairs, _ = find_pairs(root / task)
        c = collections.Counter()
        for name, pa, pb in pairs:
            a, b = read_image(pa), read_image(pb)
            if grey:
                a, b = _grey(a, False), _grey(b, True)
            g = analyse_pair(a, b)
            r = analyse_pair(b, a)
            c["n"] += 1
            c["task"] += g.task == task
            # the right model, and IR/visible told from medical pairs (both run the medical weights)
            c["model"] += g.model == MODEL_OF_TASK[task] and (g.task == "ivf") == (task == "ivf")
            c["false_swap"] += g.swapped
            c["swap_found"] += r.swapped and r.model == MODEL_OF_TASK[task]
        n = c["n"]
        print(f"| {task} | {n} | {c['task'] / n:.0%} | {c['model'] / n:.0%} | {c['false_swap']} | "
              f"{c['swap_found'] / n:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
