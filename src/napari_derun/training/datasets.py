"""Datasets of registered image pairs for training: :class:`PairDataset` (folders or arrays,
seeded patches with flips and 90° rotations, deterministic validation splits) and :func:`task_pairs`
(the training and validation pairs of several task folders under one data root, by split files)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..data import preprocess

__all__ = ["PairDataset", "task_pairs", "degrade_batch", "photometric_batch"]


class PairDataset:
    """Registered image pairs as float32 luminance planes in [0, 1].

    Args:
        pairs: a folder (``DIR/a``, ``DIR/b``, same file names) or a sequence of
            ``(a, b)`` numpy pairs (grey ``(H, W)`` or colour ``(H, W, 3)``, any dtype
            accepted by :func:`~napari_derun.data.preprocess.prepare_pair`).
        names: optional names for in-memory pairs (default ``pair_000``…).
        select: optional callable ``select(index, name) -> bool`` to keep a subset of a
            folder's pairs (e.g. a validation split).
        percentiles: robust range for non-uint8 images.

    Attributes:
        a, b: lists of ``(H, W)`` float32 planes (what the model sees); names: pair names;
        ref_a, ref_b: the clean sources the fusion is scored against (the same planes as ``a``, ``b``
            unless the pairs are degraded copies, :meth:`degraded`);
        modalities: per pair ``(modality of a, modality of b)`` (keys of
            :data:`~napari_derun.data.degrade.MODALITIES`) or ``None`` when unknown;
        problems: messages about files that were skipped; source: folder or ``"arrays"``.
    """

    def __init__(self, pairs: str | os.PathLike | Sequence[tuple[np.ndarray, np.ndarray]],
                 names: Sequence[str] | None = None, select: Callable[[int, str], bool] | None = None,
                 percentiles: tuple[float, float] = preprocess.DEFAULT_PERCENTILES):
        self.a: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        self.names: list[str] = []
        self.problems: list[str] = []
        if isinstance(pairs, (str, os.PathLike)):
            from ..io.planes import find_pairs, read_image

            root = Path(pairs).expanduser()
            if not root.is_dir():
                raise FileNotFoundError(f"training data folder {root} does not exist")
            found, problems = find_pairs(root)
            self.problems.extend(problems)
            self.source = str(root.resolve())
            for i, (name, pa, pb) in enumerate(found):
                if select is not None and not select(i, name):
                    continue
                try:
                    prep = preprocess.prepare_pair(read_image(pa), read_image(pb), percentiles=percentiles)
                except (ValueError, OSError) as e:
                    self.problems.append(f"{name}: skipped ({e})")
                    continue
                self._add(name, prep.a, prep.b)
            if not self.a:
                detail = "; ".join(self.problems[:5])
                raise ValueError(
                    f"no usable image pairs in {root} (expected {root}/a and {root}/b with the same file names)"
                    + (f": {detail}" if detail else "")
                )
        else:
            self.source = "arrays"
            pairs = list(pairs)
            if not pairs:
                raise ValueError("no training pairs given: pass a folder or a list of (a, b) arrays")
            for i, item in enumerate(pairs):
                if len(item) != 2:
                    raise ValueError(f"pair {i} must be an (a, b) tuple; got {len(item)} items")
                name = names[i] if names is not None else f"pair_{i:03d}"
                if select is not None and not select(i, name):
                    continue
                prep = preprocess.prepare_pair(item[0], item[1], percentiles=percentiles)
                self._add(name, prep.a, prep.b)

        self.ref_a, self.ref_b = self.a, self.b
        self.modalities: list[tuple[str, str] | None] = [None] * len(self.a)

    def _add(self, name: str, a: np.ndarray, b: np.ndarray) -> None:
        self.names.append(name)
        self.a.append(np.ascontiguousarray(a, dtype=np.float32))
        self.b.append(np.ascontiguousarray(b, dtype=np.float32))

    def with_modalities(self, modality_a: str, modality_b: str) -> "PairDataset":
        """Declare every pair's modalities (for degradation training); returns ``self``."""
        from ..data.degrade import MODALITIES

        for m in (modality_a, modality_b):
            if m not in MODALITIES:
                raise ValueError(f"unknown modality {m!r}; choose one of {sorted(MODALITIES)}")
        self.modalities = [(modality_a, modality_b)] * len(self)
        return self

    def degraded(self, cases: Sequence[tuple[str, str, int]], seed: int = 0) -> "PairDataset":
        """Degraded copies for validation / evaluation: for every pair and every case
        ``(side, degradation, level)`` (side ``"a"`` or ``"b"``), the pair with that input degraded
        (seeded by ``seed``, the pair and the case). The copies keep the clean sources as
        :attr:`ref_a`, :attr:`ref_b`; names get a ``@side:degradation:level`` suffix."""
        from ..data.degrade import apply

        names, a, b, ra, rb, mods = [], [], [], [], [], []
        for i in range(len(self)):
            for k, (side, deg, level) in enumerate(cases):
                if side not in ("a", "b"):
                    raise ValueError(f"side must be 'a' or 'b', got {side!r}")
                rng = np.random.default_rng([seed, i, k])
                da, db = self.a[i], self.b[i]
                if side == "a":
                    da = apply(da, deg, level, seed=rng)
                else:
                    db = apply(db, deg, level, seed=rng)
                names.append(f"{self.names[i]}@{side}:{deg}:{level}")
                a.append(da)
                b.append(db)
                ra.append(self.ref_a[i])
                rb.append(self.ref_b[i])
                mods.append(self.modalities[i])
        out = PairDataset._from_planes(names, a, b, self.source, self.problems, ref_a=ra, ref_b=rb, modalities=mods)
        return out

    def b_floor(self, i: int) -> float:
        """Background level of pair ``i``'s clean salient image: the median of the whole ``ref_b``."""
        return float(np.median(self.ref_b[i]))

    @classmethod
    def _from_planes(cls, names, a, b, source, problems=(), ref_a=None, ref_b=None, modalities=None):
        ds = cls.__new__(cls)
        ds.names, ds.a, ds.b, ds.source, ds.problems = list(names), list(a), list(b), source, list(problems)
        ds.ref_a = ds.a if ref_a is None else list(ref_a)
        ds.ref_b = ds.b if ref_b is None else list(ref_b)
        ds.modalities = [None] * len(ds.a) if modalities is None else list(modalities)
        return ds

    def subset(self, idx: Sequence[int]) -> "PairDataset":
        """The pairs at the indices ``idx`` (in that order)."""
        return PairDataset._from_planes([self.names[i] for i in idx], [self.a[i] for i in idx],
                                        [self.b[i] for i in idx], self.source, self.problems,
                                        [self.ref_a[i] for i in idx], [self.ref_b[i] for i in idx],
                                        [self.modalities[i] for i in idx])

    def containing(self, texts: Iterable[str]) -> "PairDataset":
        """The pairs whose name contains one of ``texts`` (``ValueError`` when none does)."""
        texts = list(texts)
        keep = [i for i, n in enumerate(self.names) if any(t in n for t in texts)]
        if not keep:
            raise ValueError(f"no pair name contains any of {texts} (names such as {self.names[:3]})")
        return self.subset(keep)

    def center_crop(self, side: int) -> "PairDataset":
        """Every pair (and its clean sources) cropped to its central ``side`` × ``side`` window, or less
        where an image is smaller: cheaper validation of large images."""
        if side < 1:
            raise ValueError(f"crop side must be >= 1, got {side}")

        def crop(x: np.ndarray) -> np.ndarray:
            h, w = x.shape
            y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
            return x[y0:y0 + side, x0:x0 + side].copy()

        def same(refs: list[np.ndarray], planes: list[np.ndarray]) -> bool:  # clean pairs: refs are the planes
            return all(r is x for r, x in zip(refs, planes))

        ref_a = None if same(self.ref_a, self.a) else [crop(x) for x in self.ref_a]
        ref_b = None if same(self.ref_b, self.b) else [crop(x) for x in self.ref_b]
        return PairDataset._from_planes(self.names, [crop(x) for x in self.a], [crop(x) for x in self.b],
                                        self.source, self.problems, ref_a, ref_b, self.modalities)

    def with_degraded(self, seed: int = 1000, modalities: tuple[str, str] | None = None) -> "PairDataset":
        """Validation pairs for degradation training: these pairs, then per pair a copy with ``a`` degraded
        and one with ``b`` degraded (the degradations of the pair's modalities in turn, levels 2 and 4
        alternating), scored against the clean pair (:meth:`degraded`). Pairs of unknown modality (and
        no ``modalities`` given for them) get no copies; ``ValueError`` when that is every pair."""
        from ..data.degrade import MODALITIES

        parts = [self]
        for i, mods in enumerate(self.modalities):
            mods = mods or modalities
            if mods is None:
                continue
            da, db = MODALITIES[mods[0]], MODALITIES[mods[1]]
            cases = [("a", da[i % len(da)], 2 + 2 * (i % 2)), ("b", db[i % len(db)], 4 - 2 * (i % 2))]
            one = self.subset([i])
            one.modalities = [tuple(mods)]
            parts.append(one.degraded(cases, seed=seed + i))
        if len(parts) == 1:
            raise ValueError("degraded validation copies need the pairs' modalities: train on task folders whose "
                             "names say them (ivf, gfp_pc, ...) or give modalities (--modalities a,b)")
        return PairDataset.concat(parts)

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.a[i], self.b[i]

    @classmethod
    def concat(cls, datasets: Iterable["PairDataset"], prefixes: Sequence[str] | None = None) -> "PairDataset":
        """Join datasets (names prefixed with ``prefix/`` when given, to keep them unique; a prefix that
        names a task of :data:`~napari_derun.data.degrade.TASK_MODALITIES` also sets the pairs'
        modalities where they were unknown)."""
        from ..data.degrade import TASK_MODALITIES

        names, a, b, ra, rb, mods, src, probs = [], [], [], [], [], [], [], []
        for i, d in enumerate(datasets):
            pre = f"{prefixes[i]}/" if prefixes else ""
            names += [pre + n for n in d.names]
            a += d.a
            b += d.b
            ra += d.ref_a
            rb += d.ref_b
            task_mod = TASK_MODALITIES.get(prefixes[i]) if prefixes else None
            mods += [m if m is not None else task_mod for m in d.modalities]
            src.append(d.source)
            probs += d.problems
        return cls._from_planes(names, a, b, " + ".join(dict.fromkeys(src)), probs, ra, rb, mods)

    def split(self, every: int = 5, offset: int | None = None) -> tuple["PairDataset", "PairDataset"]:
        """Deterministic hold-out: pairs ``i`` (sorted by name) with ``i % every == offset``
        (default ``every - 1``) go to validation. Returns ``(train, val)``."""
        if every < 2:
            raise ValueError("every must be >= 2")
        off = every - 1 if offset is None else offset
        order = sorted(range(len(self)), key=lambda i: self.names[i])
        val_idx = {i for k, i in enumerate(order) if k % every == off}
        if not val_idx or len(val_idx) == len(self):
            raise ValueError(f"cannot hold back every {every}th of {len(self)} pairs")
        tr = [i for i in order if i not in val_idx]
        va = [i for i in order if i in val_idx]
        return self.subset(tr), self.subset(va)

    def split_names(self, names: Iterable[str]) -> tuple["PairDataset", "PairDataset"]:
        """``(pairs named in names, the others)``, each sorted by name (a split file's lists)."""
        want = set(names)
        order = sorted(range(len(self)), key=lambda i: self.names[i])
        return self.subset([i for i in order if self.names[i] in want]), \
            self.subset([i for i in order if self.names[i] not in want])

    def split_fraction(self, fraction: float) -> tuple["PairDataset", "PairDataset"]:
        """Hold back about ``fraction`` of the pairs (evenly spread over the sorted names)."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1); got {fraction}")
        return self.split(every=max(2, int(round(1.0 / fraction))))

    def provenance(self) -> dict[str, Any]:
        return {"source": self.source, "count": len(self), "names": list(self.names),
                "shapes": sorted({f"{a.shape[0]}x{a.shape[1]}" for a in self.a}),
                "problems": list(self.problems)}

    # -- patches
    @staticmethod
    def _pad_to(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
        H, W = x.shape
        if H >= ph and W >= pw:
            return x
        return np.pad(x, ((0, max(0, ph - H)), (0, max(0, pw - W))), mode="symmetric")

    def sample(self, rng: np.random.Generator, patch: int = 128, augment: bool = True, _index: list | None = None):
        """One random ``(a, b)`` patch of ``patch × patch`` (images smaller than the patch are
        padded by reflection), randomly flipped and rotated by k·90° when ``augment``."""
        i = int(rng.integers(len(self)))
        if _index is not None:
            _index.append(i)
        a, b = self._pad_to(self.a[i], patch, patch), self._pad_to(self.b[i], patch, patch)
        H, W = a.shape
        y = int(rng.integers(H - patch + 1))
        x = int(rng.integers(W - patch + 1))
        pa, pb = a[y:y + patch, x:x + patch], b[y:y + patch, x:x + patch]
        if augment:
            k = int(rng.integers(4))
            fl = bool(rng.integers(2))
            pa, pb = np.rot90(pa, k), np.rot90(pb, k)
            if fl:
                pa, pb = pa[:, ::-1], pb[:, ::-1]
        return np.ascontiguousarray(pa), np.ascontiguousarray(pb)

    def batch(self, rng: np.random.Generator, batch: int = 4, patch: int = 128, augment: bool = True,
              return_floor: bool = False, return_index: bool = False):
        """``(a, b)`` float32 arrays of shape ``(batch, 1, patch, patch)``; with ``return_floor``
        also the ``(batch,)`` float32 background levels :meth:`b_floor` of the pairs drawn, with
        ``return_index`` also the list of their indices."""
        idx: list[int] = []
        pa, pb = zip(*(self.sample(rng, patch, augment, _index=idx) for _ in range(batch)))
        out = np.stack(pa)[:, None], np.stack(pb)[:, None]
        if return_floor:
            out = out + (np.array([self.b_floor(i) for i in idx], dtype=np.float32),)
        if return_index:
            out = out + (idx,)
        return out


def task_pairs(root: str | os.PathLike, tasks: Sequence[str], splits: str | os.PathLike | None = None,
               every: int = 5) -> tuple[PairDataset, PairDataset]:
    """``(train, val)``: the pairs of the task folders ``root/<task>`` (``a/``, ``b/``) joined, names
    prefixed with ``<task>/`` (which also sets the pairs' modalities, :meth:`PairDataset.concat`).

    Args:
        root: the data root holding one folder per task.
        tasks: task folder names (e.g. ``["gfp_pc"]`` or ``["pet_mri", "spect_mri", "ct_mri"]``).
        splits: a folder of split files ``<task>.json`` with ``"train"``, ``"val"`` and ``"test"`` lists
            of pair names (``tools/make_splits.py``): training reads the train pairs, validation the val
            pairs, and the test pairs are never read. Without it, per task the pairs sorted by name with
            ``index % every == every - 1`` are held back for validation (:meth:`PairDataset.split`).
        every: the hold-out period without split files.
    """
    import json

    root = Path(root).expanduser()
    trs, vas = [], []
    for t in tasks:
        if splits is not None:
            f = Path(splits).expanduser() / f"{t}.json"
            if not f.is_file():
                raise FileNotFoundError(f"split file {f} for task {t!r} does not exist")
            sp = json.loads(f.read_text(encoding="utf-8"))
            keep = set(sp["train"]) | set(sp["val"])  # the test pairs are not even read
            va, tr = PairDataset(root / t, select=lambda i, n: n in keep).split_names(sp["val"])
        else:
            tr, va = PairDataset(root / t).split(every=every)
        trs.append(tr)
        vas.append(va)
    return PairDataset.concat(trs, list(tasks)), PairDataset.concat(vas, list(tasks))


def photometric_batch(a: np.ndarray, b: np.ndarray, p: float, rng: np.random.Generator,
                      gamma_a: float = 0.7, gamma_b: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Random exposure changes of a clean training batch (new clean pairs, targets included): each
    sample with probability ``p`` gets ``x → clip(g · x^γ)`` on ``a`` (``ln γ`` uniform in
    ``±gamma_a``, ``g`` uniform in [0.75, 1.25]) and a milder one on ``b`` (``±gamma_b``), so a model
    trained on night scenes also meets bright, daylight structural images.

    Args:
        a, b: ``(B, 1, P, P)`` float32 patches in [0, 1].
        p: probability per sample.
        rng: the generator.

    Returns:
        ``(a, b)`` float32 arrays of the same shape (copies).
    """
    a, b = a.copy(), b.copy()
    for i in range(a.shape[0]):
        if rng.random() >= p:
            continue
        for arr, span in ((a, gamma_a), (b, gamma_b)):
            g, gam = rng.uniform(0.75, 1.25), float(np.exp(rng.uniform(-span, span)))
            arr[i] = np.clip(g * np.power(np.clip(arr[i], 0.0, 1.0), gam), 0.0, 1.0)
    return a, b


def degrade_batch(a: np.ndarray, b: np.ndarray, modalities: Sequence[tuple[str, str] | None], p: float,
                  rng: np.random.Generator, levels: tuple[int, int] = (1, 4),
                  composite: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Degraded copies of a clean training batch (the loss still compares with the clean one).

    Each sample is degraded with probability ``p``: a, b or both (one third each), each by a
    degradation of its modality (:data:`~napari_derun.data.degrade.MODALITIES`) at a level drawn
    from ``levels`` (inclusive); with probability ``composite`` a second, different degradation of the
    same modality follows (e.g. low light, then blur). Samples with unknown modalities stay clean.

    Args:
        a, b: ``(B, 1, P, P)`` float32 clean patches.
        modalities: per sample ``(modality of a, modality of b)`` or ``None``.
        p: probability that a sample is degraded.
        rng: the generator (all draws come from it, so a seeded run is reproducible).

    Returns:
        ``(a, b)`` float32 arrays of the same shape.
    """
    from ..data.degrade import MODALITIES, apply

    a, b = a.copy(), b.copy()
    for i, mods in enumerate(modalities):
        if mods is None or rng.random() >= p:
            continue
        which = int(rng.integers(3))  # 0: a, 1: b, 2: both
        for side, arr in ((0, a), (1, b)):
            if which not in (side, 2):
                continue
            names = MODALITIES[mods[side]]
            first = int(rng.integers(len(names)))
            steps = [(names[first], int(rng.integers(levels[0], levels[1] + 1)))]
            if len(names) > 1 and rng.random() < composite:
                second = (first + 1 + int(rng.integers(len(names) - 1))) % len(names)
                steps.append((names[second], int(rng.integers(levels[0], levels[1] + 1))))
            plane = arr[i, 0]
            for name, level in steps:
                plane = apply(plane, name, level, seed=rng)
            arr[i, 0] = plane
    return a, b


def _as_dataset(x, what: str) -> PairDataset | None:
    if x is None:
        return None
    if isinstance(x, PairDataset):
        return x
    return PairDataset(x)


