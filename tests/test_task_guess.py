"""The content-based task guess (napari_derun.data.task_guess): synthetic images, the bundled samples, and
the real pairs of ../shared/data when present."""
from __future__ import annotations

import numpy as np
import pytest

from napari_derun.data import sample_data
from napari_derun.data.task_guess import (MODEL_OF_TASK, analyse_pair, choose_model, guess_roles, guess_task,
                                          task_from_names)

SHIPPED = ["admm", "gfp_pc", "ivf", "medical"]


@pytest.mark.parametrize("task", sorted(sample_data.SAMPLES))
def test_each_bundled_sample_is_recognised_and_so_is_its_swap(task):
    a, b = sample_data.SAMPLES[task]()
    got, reason = guess_task(a, b)
    assert got == task, reason
    assert guess_roles(a, b) == (False, "")
    swapped, why = guess_roles(b, a)
    assert swapped and why
    assert analyse_pair(b, a).model == MODEL_OF_TASK[task]


def test_grey_gfp_over_grey_phase_contrast():
    """A grey fluorescence channel (no colour at all) over a grey phase contrast: still gfp_pc."""
    a, b = sample_data.gfp_pc(size=200, seed=4)
    g = analyse_pair(a, b[..., 1])
    assert g.task == "gfp_pc" and g.confident and not g.swapped
    assert analyse_pair(b[..., 1], a).swapped


def test_rgb_with_equal_channels_is_grey():
    """Phase contrast saved as RGB with R = G = B (JPEG/PNG exports) counts as grey."""
    a, b = sample_data.gfp_pc(size=128, seed=5)
    a3 = np.repeat(a[..., None], 3, axis=-1)
    g = analyse_pair(a3, b)
    assert g.task == "gfp_pc" and not g.features["a"]["colour"] and not g.swapped
    assert analyse_pair(b, a3).swapped


def test_stacks_and_uint16_use_the_middle_plane():
    a, b = sample_data.pet_mri(size=96)
    a16 = np.stack([a.astype(np.uint16) * 200] * 3)
    b3 = np.stack([b] * 3)
    assert guess_task(a16, b3)[0] == "pet_mri"


def test_names_decide_only_when_the_content_does_not():
    rng = np.random.default_rng(0)
    noise_a, noise_b = rng.random((64, 64)), rng.random((64, 64))
    assert task_from_names(["03-A03", "03-A03 [1]"]) is None
    assert task_from_names(["MRI", "PET"]) == "pet_mri" and task_from_names(["visible", "IR"]) == "ivf"
    # content clear: names that say otherwise do not change it
    a, b = sample_data.gfp_pc(size=128)
    assert guess_task(a, b, names=["MRI", "PET"])[0] == "gfp_pc"
    # two half-dark noise images: neither fluorescence, nor a medical slice, nor a plain scene
    noise_a[:, :32] = 0
    noise_b[:32] = 0
    g = analyse_pair(noise_a, noise_b, names=["GFP", "phase"])
    assert not g.confident and g.task == "gfp_pc" and "names" in g.reason
    assert not analyse_pair(noise_a, noise_b).confident


def test_choose_model_says_what_and_why_and_never_admm_unless_missing():
    a, b = sample_data.ivf()
    model, guess, msg = choose_model(a, b, SHIPPED)
    # infrared + visible: the medical weights (they generalise to unseen cameras better than the ivf weights)
    assert model == "medical" and guess.task == "ivf" and msg.startswith("auto: medical, because")
    assert "unseen cameras" in msg
    model, _, msg = choose_model(a, b, ["admm", "gfp_pc"])
    assert model == "admm" and "missing" in msg
    # a remembered model is only a hint for unclear content
    assert choose_model(a, b, SHIPPED, remembered="gfp_pc")[0] == "medical"


#: tasks whose confusion does not matter (one model, the same kind of pair) share a group; infrared + visible
#: runs the medical weights too, but a medical pair taken for IR/visible (or back) is still a wrong guess
GROUP = {"gfp_pc": "fluorescence", "pet_mri": "medical", "spect_mri": "medical", "ct_mri": "medical", "ivf": "ivf"}


@pytest.mark.slow
def test_real_pairs_guess_accuracy(shared_data):
    """On the real development pairs the guessed model is right for at least 95 % of every task
    (measured: gfp_pc 99 %, ivf 98 %, pet/spect/ct 100 %; tools/task_guess_accuracy.py), and no more
    than 2 % of pairs in the right order are said to be swapped."""
    from napari_derun.io.planes import find_pairs, read_image

    for task in ("gfp_pc", "ivf", "pet_mri", "spect_mri", "ct_mri"):
        pairs, _ = find_pairs(shared_data / task)
        right = swaps = 0
        for _, pa, pb in pairs:
            g = analyse_pair(read_image(pa), read_image(pb))
            right += GROUP[g.task] == GROUP[task]
            swaps += g.swapped
        assert right >= 0.95 * len(pairs), (task, right, len(pairs))
        assert swaps <= 0.02 * len(pairs), (task, swaps)


def test_real_pairs_a_few_of_each_task(shared_data):
    """Fast check on the first three real pairs of each task (skips without ../shared/data)."""
    from napari_derun.io.planes import find_pairs, read_image

    for task in ("gfp_pc", "ivf", "pet_mri", "spect_mri", "ct_mri"):
        for _, pa, pb in find_pairs(shared_data / task)[0][:3]:
            g = analyse_pair(read_image(pa), read_image(pb), names=[pa.stem, pb.stem])
            assert GROUP[g.task] == GROUP[task] and g.model == MODEL_OF_TASK[task] and not g.swapped, \
                (task, pa.name, g.reason)
