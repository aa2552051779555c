"""Write tools/splits/<task>.json: the train / validation / test pair names of every task.

The test split is never used for any decision (recipe, objective weights, epoch, threshold): only
tools/eval_robust.py reads it, to report. Rules (deterministic, from the file names in ../shared/data):

* ivf, by source, so that the test measures sensors no model saw: train = TNO, TNO42, MSRS, MSRStrain
  (the TNO and MSRS sets the first models trained on) and M3FD (daylight street scenes, which the night-heavy
  TNO / MSRS sets lack), validation = LLVIP and FMB, test = VIFB (21 pairs from INO, RGBT234 and other
  sources, day and night).
* gfp_pc, pet_mri, spect_mri, ct_mri: test = the pairs the earlier releases held back (sorted names,
  index % 5 == 4; no shipped model ever trained on them, though the earlier releases picked their epoch on
  them); validation = every 5th of the remaining pairs; train = the rest.

    python tools/make_splits.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "splits"
IVF_SOURCES = {"train": ("TNO", "TNO42", "MSRS", "MSRStrain", "M3FD"), "val": ("LLVIP", "FMB"), "test": ("VIFB",)}


def pair_names(folder: Path) -> list[str]:
    """The pair names (common file stems, as napari-derun's folder reader pairs them), sorted."""
    from napari_derun.io.planes import find_pairs

    return sorted(name for name, _, _ in find_pairs(folder)[0])


def source_of(name: str) -> str:
    return name.split("_", 1)[0]


def split_task(task: str, names: list[str]) -> dict:
    if task == "ivf":
        out = {k: [n for n in names if source_of(n) in v] for k, v in IVF_SOURCES.items()}
        rule = "by source: " + "; ".join(f"{k} = {', '.join(v)}" for k, v in IVF_SOURCES.items())
    else:
        test = [n for i, n in enumerate(names) if i % 5 == 4]
        rest = [n for n in names if n not in test]
        val = [n for i, n in enumerate(rest) if i % 5 == 4]
        out = {"train": [n for n in rest if n not in val], "val": val, "test": test}
        rule = ("test = sorted names with index % 5 == 4 (held back by every earlier release); "
                "val = index % 5 == 4 of the rest; train = the others")
    missing = set(names) - set(out["train"]) - set(out["val"]) - set(out["test"])
    if missing:
        raise SystemExit(f"{task}: pairs in no split: {sorted(missing)[:5]}")
    return {"task": task, "rule": rule, **{k: out[k] for k in ("train", "val", "test")}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    a = p.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    for task in ("ivf", "gfp_pc", "pet_mri", "spect_mri", "ct_mri"):
        d = split_task(task, pair_names(Path(a.data) / task))
        (OUT / f"{task}.json").write_text(json.dumps(d, indent=1) + "\n")
        print(task, {k: len(d[k]) for k in ("train", "val", "test")})


if __name__ == "__main__":
    main()
