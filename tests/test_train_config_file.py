"""One front door for training (issue 20): task folders with split files, the validation set of degradation
runs (central crop, degraded copies) and ``napari-derun train --config FILE``, on tiny synthetic task folders."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_derun.data import sample_data


def _task(root, task, names, size=40):
    """``root/task/{a,b}/<name>.png``: synthetic pairs of that task."""
    for sub in ("a", "b"):
        (root / task / sub).mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        f = sample_data.SAMPLES[task]
        a, b = f(size, seed=i) if task != "ivf" else f(size, size + 8, seed=i)
        Image.fromarray(a).save(root / task / "a" / f"{n}.png")
        Image.fromarray(b).save(root / task / "b" / f"{n}.png")
    return root


def _data(tmp_path):
    """A data root with two tasks and their split files (two train, one val, two test pairs each)."""
    root, splits = tmp_path / "data", tmp_path / "splits"
    splits.mkdir()
    for task in ("gfp_pc", "ivf"):
        names = [f"{task[:3]}{i}" for i in range(5)]
        _task(root, task, names)
        (splits / f"{task}.json").write_text(json.dumps(
            {"task": task, "train": names[:2], "val": names[2:3], "test": names[3:]}))
    return root, splits


def test_task_pairs_reads_train_and_val_never_test(tmp_path, monkeypatch):
    from napari_derun.io import planes
    from napari_derun.training.datasets import task_pairs

    root, splits = _data(tmp_path)
    read = []
    orig = planes.read_image
    monkeypatch.setattr(planes, "read_image", lambda p, *a, **k: read.append(p.stem) or orig(p, *a, **k))
    tr, va = task_pairs(root, ["gfp_pc", "ivf"], splits)
    assert tr.names == ["gfp_pc/gfp0", "gfp_pc/gfp1", "ivf/ivf0", "ivf/ivf1"]
    assert va.names == ["gfp_pc/gfp2", "ivf/ivf2"]
    assert read and not [n for n in read if n[-1] in "34"]  # the test pairs are never even read
    assert tr.modalities[0] == ("phase_contrast", "fluorescence") and va.modalities[1] == ("visible", "infrared")
    # without split files: every 5th pair sorted by name held back
    tr, va = task_pairs(root, ["gfp_pc"])
    assert va.names == ["gfp_pc/gfp4"] and len(tr) == 4
    with pytest.raises(FileNotFoundError, match="split file"):
        task_pairs(root, ["pet_mri"], splits)


def test_center_crop_and_degraded_validation_copies(tmp_path):
    from napari_derun.training.datasets import PairDataset, task_pairs

    root, splits = _data(tmp_path)
    _, va = task_pairs(root, ["gfp_pc", "ivf"], splits)
    c = va.center_crop(24)
    assert [x.shape for x in c.a] == [(24, 24), (24, 24)] and c.names == va.names
    assert np.array_equal(c.a[1], va.a[1][8:32, 12:36]) and c.ref_a[1] is c.a[1]
    assert c.center_crop(100).a[0].shape == (24, 24)  # a side above the image keeps it whole

    d = c.with_degraded(seed=1000)
    assert len(d) == 3 * len(c) and d.names[:2] == c.names
    assert [n.split("@")[1].split(":")[0] for n in d.names[2:]] == ["a", "b", "a", "b"]
    assert d.names[2].endswith(":2") and d.names[3].endswith(":4")  # levels 2 and 4, in turn per pair
    assert d.names[4].endswith(":4") and d.names[5].endswith(":2")
    for k in (2, 3):  # the copies are scored against the clean pair
        assert np.array_equal(d.ref_a[k], c.a[0]) and np.array_equal(d.ref_b[k], c.b[0])
    assert not np.array_equal(d.a[2], c.a[0]) and np.array_equal(d.b[2], c.b[0])
    assert all(np.array_equal(x, y) for x, y in zip(c.with_degraded(seed=1000).a, d.a))  # seeded

    plain = PairDataset([(c.a[0], c.b[0])])
    with pytest.raises(ValueError, match="modalities"):
        plain.with_degraded()
    assert len(plain.with_degraded(modalities=("phase_contrast", "fluorescence"))) == 3


def test_containing_keeps_the_matching_pairs_with_their_modalities(tmp_path):
    from napari_derun.training.datasets import task_pairs

    root, splits = _data(tmp_path)
    tr, _ = task_pairs(root, ["gfp_pc", "ivf"], splits)
    only = tr.containing(["ivf1", "gfp0"])
    assert only.names == ["gfp_pc/gfp0", "ivf/ivf1"] and only.modalities[1] == ("visible", "infrared")
    with pytest.raises(ValueError, match="no pair name contains"):
        tr.containing(["MSRS"])
