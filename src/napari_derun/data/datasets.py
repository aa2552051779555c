"""Datasets of registered image pairs for training: :class:`PairDataset` (folders or arrays,
seeded patches with flips and 90° rotations, deterministic validation splits)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import preprocess

__all__ = ["PairDataset"]



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
        a, b: lists of ``(H, W)`` float32 planes; names: pair names;
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
            from .io import find_pairs, read_image

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

    def _add(self, name: str, a: np.ndarray, b: np.ndarray) -> None:
        self.names.append(name)
        self.a.append(np.ascontiguousarray(a, dtype=np.float32))
        self.b.append(np.ascontiguousarray(b, dtype=np.float32))

    def b_floor(self, i: int) -> float:
        """Background level of pair ``i``'s salient image: the median of the whole ``b``."""
        return float(np.median(self.b[i]))

    @classmethod
    def _from_planes(cls, names, a, b, source, problems=()):
        ds = cls.__new__(cls)
        ds.names, ds.a, ds.b, ds.source, ds.problems = list(names), list(a), list(b), source, list(problems)
        return ds

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.a[i], self.b[i]

    @classmethod
    def concat(cls, datasets: Iterable["PairDataset"], prefixes: Sequence[str] | None = None) -> "PairDataset":
        """Join datasets (names prefixed with ``prefix/`` when given, to keep them unique)."""
        names, a, b, src, probs = [], [], [], [], []
        for i, d in enumerate(datasets):
            pre = f"{prefixes[i]}/" if prefixes else ""
            names += [pre + n for n in d.names]
            a += d.a
            b += d.b
            src.append(d.source)
            probs += d.problems
        return cls._from_planes(names, a, b, " + ".join(dict.fromkeys(src)), probs)

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
        mk = lambda idx: PairDataset._from_planes(  # noqa: E731
            [self.names[i] for i in idx], [self.a[i] for i in idx], [self.b[i] for i in idx], self.source, self.problems)
        return mk(tr), mk(va)

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
              return_floor: bool = False):
        """``(a, b)`` float32 arrays of shape ``(batch, 1, patch, patch)``; with ``return_floor``
        also the ``(batch,)`` float32 background levels :meth:`b_floor` of the pairs drawn."""
        idx: list[int] = []
        pa, pb = zip(*(self.sample(rng, patch, augment, _index=idx) for _ in range(batch)))
        out = np.stack(pa)[:, None], np.stack(pb)[:, None]
        if return_floor:
            return out + (np.array([self.b_floor(i) for i in idx], dtype=np.float32),)
        return out


def _as_dataset(x, what: str) -> PairDataset | None:
    if x is None:
        return None
    if isinstance(x, PairDataset):
        return x
    return PairDataset(x)


