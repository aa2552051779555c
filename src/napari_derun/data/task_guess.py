"""Which kind of image pair is this? A guess of the fusion task from the images' content.

:func:`guess_task` looks at the two images (one plane, reduced to at most 256 pixels a side) and says
which of the tasks the shipped models were trained for the pair looks like, and why:

* ``gfp_pc``: a fluorescence channel (mostly dark background with sparse bright cells; grey, or colour
  in one channel) over a bright, textured phase-contrast or bright-field image with no dark surround;
* ``pet_mri`` / ``spect_mri`` / ``ct_mri``: two images of a head on a dark surround (a body part on
  black), the salient one in pseudo-colour (PET, SPECT) or grey (CT);
* ``ivf``: anything else that looks like a natural scene (a visible image, often in colour, and an
  infrared one).

:func:`guess_roles` says whether the pair was given the wrong way round (the fluorescence or PET image
as the structural one). The layer or file names and a remembered model are only hints: they decide
when the content does not (:func:`choose_model`). numpy and scipy only: no torch, no Qt.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["TASKS", "MODEL_OF_TASK", "MODEL_NOTES", "PairGuess", "guess_task", "guess_roles", "analyse_pair", "choose_model",
           "task_from_names", "image_features"]

#: the tasks the guess can return
TASKS: tuple[str, ...] = ("gfp_pc", "pet_mri", "spect_mri", "ct_mri", "ivf")
#: task -> the shipped model ``model="auto"`` runs for it. For infrared + visible that is ``medical``: on the
#: validation sources no model was trained on (LLVIP, FMB) it ranks better than the ``ivf`` weights (trained on
#: MSRS only) and keeps more of the infrared (docs/robustness.md, "Which model for infrared + visible")
MODEL_OF_TASK: dict[str, str] = {"gfp_pc": "gfp_pc", "pet_mri": "medical", "spect_mri": "medical",
                                 "ct_mri": "medical", "ivf": "medical"}
#: why a task's model is not the one named after it (said in the auto message)
MODEL_NOTES: dict[str, str] = {"ivf": "the medical weights fuse infrared + visible from unseen cameras better than "
                                      "the ivf weights"}
#: the side the images are reduced to before the guess (it takes a few milliseconds)
GUESS_SIZE = 256
_DARK = 0.06  # a "dark" pixel, on the [0, 1] luminance


def _plane(x: Any, rgb: bool | None) -> tuple[np.ndarray, bool]:
    """The middle (Y, X[, C]) plane of an image or stack as float32 in [0, 1], reduced to GUESS_SIZE."""
    from . import preprocess

    shape = tuple(np.shape(x))
    if rgb is None:
        rgb = len(shape) >= 3 and shape[-1] in (3, 4)
    nlead = len(shape) - 2 - int(rgb)
    idx = tuple(s // 2 for s in shape[:nlead])
    h, w = shape[nlead:nlead + 2]
    f = max(1, int(np.ceil(max(h, w) / GUESS_SIZE)))
    p = np.asarray(x[idx + (slice(None, None, f), slice(None, None, f))] if nlead or f > 1 else x)
    if p.dtype.kind == "b":
        p = p.astype(np.uint8)
    p = preprocess.to_float01(p)
    if rgb:
        p = p[..., :3]
    return p, bool(rgb)


@dataclass
class _Features:
    colour: bool  # RGB with channels that differ
    one_channel: bool  # colour carried by one channel (a fluorescence channel stored as RGB)
    tint: float  # brightest channel mean / mean of the channel means (1 for grey)
    green: float  # share of the coloured pixels whose strongest channel is green
    pseudo: bool  # colour of several hues (a pseudo-colour look-up table: PET, SPECT)
    dark: float  # share of dark pixels
    border_dark: float  # share of dark pixels along the border
    median: float
    foreground: float  # share of the image inside the largest filled bright object
    head: bool  # one large, compact bright object on a dark surround (a body part on black)
    sparse: bool  # mostly dark with small bright objects (fluorescence)
    bright_top: float  # share of saturated pixels inside the object (bone in CT)


def image_features(x: Any, rgb: bool | None = None) -> dict[str, Any]:
    """The content features the guess uses, for one image (for inspection and tests).

    Args:
        x: an image ``(Y, X)`` / ``(Y, X, 3|4)`` or a stack (its middle plane is used).
        rgb: whether the last axis is colour (default: a last axis of 3 or 4).

    Returns:
        A dict of the features (see the module docstring).
    """
    return dict(vars(_features(*_plane(x, rgb))))


def _features(p: np.ndarray, rgb: bool) -> _Features:
    from scipy import ndimage as ndi

    colour = one = pseudo = False
    tint, green = 1.0, 0.0
    if rgb:
        chroma = p.max(-1) - p.min(-1)
        colour = bool((chroma > 0.08).mean() > 0.005)  # not a JPEG's faint tint of a grey image
        if colour:
            means = p.reshape(-1, 3).mean(0) + 1e-6
            tint = float(means.max() / means.mean())
            one = tint > 1.6
            hues = p[chroma > 0.1]
            if len(hues) > 20:
                dom = np.bincount(hues.argmax(-1), minlength=3) / len(hues)
                green = float(dom[1])
                pseudo = bool(not one and np.sort(dom)[-2] > 0.15)
        y = p @ np.array([0.299, 0.587, 0.114], np.float32)
    else:
        y = p
    thr = _DARK
    dark = float((y < thr).mean())
    bw = max(2, min(y.shape) // 16)
    border = np.concatenate([y[:bw].ravel(), y[-bw:].ravel(), y[:, :bw].ravel(), y[:, -bw:].ravel()])
    border_dark = float((border < thr).mean())
    mask = ndi.binary_opening(y >= thr, iterations=1)
    lab, n = ndi.label(mask)
    fg, head, sparse, top = 0.0, False, False, 0.0
    if n:
        sizes = np.bincount(lab.ravel())[1:]
        big = lab == (np.argmax(sizes) + 1)
        filled = ndi.binary_fill_holes(ndi.binary_closing(big, iterations=3)) | big
        fg = float(filled.mean())
        ys, xs = np.nonzero(filled)
        touches = ys.min() == 0 or xs.min() == 0 or ys.max() == y.shape[0] - 1 or xs.max() == y.shape[1] - 1
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        compact = filled.sum() / box
        head = bool(border_dark > 0.85 and 0.12 < fg < 0.9 and compact > 0.55 and not touches)
        sparse = bool(dark > 0.3 and border_dark > 0.3)
        inside = y[filled]
        top = float((inside >= 0.97).mean()) if inside.size else 0.0  # saturated (bone in CT)
    return _Features(colour, one, tint, green, pseudo, dark, border_dark, float(np.median(y)), fg, head, sparse, top)


@dataclass
class PairGuess:
    """What :func:`analyse_pair` found.

    Attributes:
        task: one of :data:`TASKS`.
        reason: one sentence a user can read (what in the images led to the guess).
        confident: whether the content alone decided (else names or the remembered model may).
        swapped: whether the images look given the wrong way round (the salient one as ``a``).
        role_reason: why they look swapped ("" when they do not).
        features: the features of ``a`` and ``b`` (``{"a": {...}, "b": {...}}``).
    """

    task: str
    reason: str
    confident: bool
    swapped: bool = False
    role_reason: str = ""
    features: dict[str, dict] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The shipped model for :attr:`task`."""
        return MODEL_OF_TASK[self.task]


def _medical_kind(s: _Features) -> str:
    if s.pseudo or (s.colour and not s.one_channel):
        # in the common look-up tables SPECT has next to no green; PET's rainbow has some (one model for both)
        return "spect_mri" if s.green < 0.08 else "pet_mri"
    return "ct_mri"


def _fluorescence(s: _Features, given_as_b: bool = False) -> bool:
    """Looks like a fluorescence channel: one-channel colour on a dark background, or sparse on dark
    (``given_as_b``: also a dim image with a colour tint, as some microscopes store a weak channel)."""
    if s.colour and s.one_channel and s.dark > 0.25:
        return True
    if given_as_b and s.colour and s.tint > 1.15 and s.median < 0.25:
        return True
    return s.sparse


def _classify(fa: _Features, fb: _Features) -> tuple[str, str, bool]:
    """(task, reason, confident) for a pair given in the usual roles (``a`` structural)."""
    if fa.border_dark > 0.8 and fb.border_dark > 0.8 and (fa.head or fb.head):
        kind = _medical_kind(fb if fb.colour or not fa.colour else fa)
        what = {"pet_mri": "a pseudo-colour PET image", "spect_mri": "a pseudo-colour SPECT image",
                "ct_mri": "grey images (CT and MRI)"}[kind]
        return kind, f"both images show one object on a dark surround (a medical slice) with {what}", True
    for s, t, as_b in ((fb, fa, True), (fa, fb, False)):
        if _fluorescence(s, as_b) and t.dark < 0.1 and not t.colour:
            what = "a one-channel colour image" if s.colour and s.one_channel else "a grey image"
            return ("gfp_pc", f"one image is fluorescence-like ({what}, {s.dark:.0%} dark background with sparse "
                              "bright objects) and the other a bright textured grey image (phase contrast)", True)
    if fa.colour and not fa.one_channel and not fb.colour:
        return "ivf", "a natural-looking colour image (visible light) with a grey one (infrared)", True
    if fb.colour and not fb.one_channel and not fa.colour and fb.dark < 0.3:
        return "ivf", "a natural-looking colour image (visible light) with a grey one (infrared)", True
    if not fa.colour and not fb.colour and fa.dark < 0.3 and fb.dark < 0.3 and fa.border_dark < 0.5 \
            and fb.border_dark < 0.5:
        return "ivf", "two grey images without a dark surround (a natural scene: visible and infrared)", True
    if fa.border_dark > 0.8 and fb.border_dark > 0.8:
        kind = _medical_kind(fb if fb.colour else fa)
        return kind, "both images have a dark surround (probably a medical slice)", False
    return "ivf", "no clear sign of fluorescence or of a medical slice (guessed: a natural scene)", False


def _roles(task: str, fa: _Features, fb: _Features) -> tuple[bool, str]:
    """Whether ``a`` looks like the salient image of ``task`` and ``b`` like the structural one."""
    if task == "gfp_pc":
        if _fluorescence(fa) and not _fluorescence(fb, True) and fb.dark < 0.1 and not fb.colour:
            return True, "the structural image looks like the fluorescence (mostly dark with sparse bright objects)"
    elif task in ("pet_mri", "spect_mri", "ct_mri"):
        if fa.colour and not fb.colour:
            return True, "the structural image is the pseudo-colour one (PET/SPECT) and the salient one is grey"
        if not fa.colour and not fb.colour and fa.bright_top > 0.1 and fb.bright_top < 0.05:
            return True, "the structural image has the bright bone of a CT image and the salient one does not"
    elif task == "ivf":
        if fb.colour and not fb.one_channel and not fa.colour:
            return True, "the salient image is the colour one (visible light) and the structural one is grey"
    return False, ""


def analyse_pair(a: Any, b: Any, names: Sequence[str | None] | None = None, *, a_rgb: bool | None = None,
                 b_rgb: bool | None = None) -> PairGuess:
    """Guess the task of a pair and whether its roles are swapped (see the module docstring).

    Args:
        a: the structural image as given (2-D, colour or a stack; numpy or dask).
        b: the salient image as given.
        names: layer or file names; they decide only when the content does not.
        a_rgb: whether ``a``'s last axis is colour (default: a last axis of 3 or 4).
        b_rgb: the same for ``b``.

    Returns:
        A :class:`PairGuess`.
    """
    pa, ra = _plane(a, a_rgb)
    pb, rb = _plane(b, b_rgb)
    fa, fb = _features(pa, ra), _features(pb, rb)
    task, reason, confident = _classify(fa, fb)
    if not confident:
        hinted = task_from_names(names or ())
        if hinted is not None:
            task, reason = hinted, f"the names suggest it ({', '.join(n for n in names if n)}); " + reason
    swapped, why = _roles(task, fa, fb)
    return PairGuess(task, reason, confident, swapped, why, {"a": dict(vars(fa)), "b": dict(vars(fb))})


def guess_task(a: Any, b: Any, names: Sequence[str | None] | None = None) -> tuple[str, str]:
    """The task a pair looks like, and why.

    Args:
        a: the structural image (2-D, colour or a stack; numpy or dask).
        b: the salient image.
        names: layer or file names, used only when the content does not decide.

    Returns:
        ``(task, reason)``: a task of :data:`TASKS` (:data:`MODEL_OF_TASK` gives its shipped model) and
        one sentence saying what in the images led to it.
    """
    g = analyse_pair(a, b, names)
    return g.task, g.reason


def guess_roles(a: Any, b: Any) -> tuple[bool, str]:
    """Whether ``a`` and ``b`` look given the wrong way round.

    Args:
        a: the image given as structural.
        b: the image given as salient.

    Returns:
        ``(swapped, reason)``.
    """
    g = analyse_pair(a, b)
    return g.swapped, g.role_reason


_NAME_HINTS = (("gfp_pc", ("gfp", "fluor", "phase", "pc", "bright", "mcherry", "rfp", "dapi", "yfp", "cfp")),
               ("pet_mri", ("pet", "mri", "t1", "t2", "flair")), ("spect_mri", ("spect",)), ("ct_mri", ("ct",)),
               ("ivf", ("ir", "infrared", "thermal", "visible", "vis", "lwir")))


def task_from_names(names: Iterable[str | None]) -> str | None:
    """The task the names suggest (``"GFP"``, ``"PET"``, ``"infrared"`` …), or None."""
    words = " ".join(str(n).lower() for n in names if n).replace("_", " ").replace("-", " ").split()
    for task, hints in _NAME_HINTS:
        if any(w in hints or any(w.startswith(h) for h in hints if len(h) > 2) for w in words):
            return task
    return None


def choose_model(a: Any, b: Any, available: Sequence[str], names: Sequence[str | None] | None = None,
                 remembered: str | None = None, *, a_rgb: bool | None = None,
                 b_rgb: bool | None = None) -> tuple[str, PairGuess, str]:
    """The model ``model="auto"`` runs: the shipped model of the guessed task.

    Args:
        a: the structural image.
        b: the salient image.
        available: the model names that can be loaded (:func:`napari_derun.api.list_models`).
        names: layer or file names (a hint when the content does not decide).
        remembered: a model the user picked before (a hint when neither content nor names decide).
        a_rgb: whether ``a``'s last axis is colour.
        b_rgb: whether ``b``'s last axis is colour.

    Returns:
        ``(model, guess, message)``: the message says which model and why, for a notification or a log.
    """
    g = analyse_pair(a, b, names, a_rgb=a_rgb, b_rgb=b_rgb)
    model, why = g.model, g.reason + (f" ({MODEL_NOTES[g.task]})" if g.task in MODEL_NOTES else "")
    if not g.confident and task_from_names(names or ()) is None and remembered in available \
            and remembered not in ("auto", "admm"):
        model, why = remembered, f"the model you used last ({remembered}); the content is unclear: {g.reason}"
    if model not in available:
        model, why = "admm", f"{why}; the {g.model} weights are missing, so the training-free admm"
    return model, g, f"auto: {model}, because {why}."
