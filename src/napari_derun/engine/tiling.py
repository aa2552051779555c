"""Tiling of large planes: overlapping tiles, raised-cosine blending, out-of-memory retries, progress and
cancel (see :mod:`napari_derun.engine.stacks` for the whole engine), and the conversion of raw planes to
float32 luminance *tile by tile* (:func:`fuse_raw_plane`), so that a large plane never exists as a float
copy: memory stays at the raw input, the float32 result and a few tiles.

numpy only at import time; torch is imported lazily.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..data import preprocess

__all__ = ["DEFAULT_TILE", "DEFAULT_OVERLAP", "MIN_TILE", "FuseCancelled", "tile_starts", "blend_weights",
           "fuse_luma_planes", "fuse_raw_plane"]

DEFAULT_TILE = 1024
#: chosen by measurement, see docs/scripting.md ("Tiling")
DEFAULT_OVERLAP = 128
#: smallest tile side accepted from the caller (smaller tiles are all border and take forever)
MIN_TILE = 16
#: out of memory: the tile is halved and retried down to this side, no further
OOM_MIN_TILE = 64

#: pixels per row block where whole planes are converted or divided block by block
_BLOCK_PIXELS = 1 << 17


class FuseCancelled(RuntimeError):
    """Raised when a fusion is cancelled through ``cancel`` (or a callback raising it)."""


# ----------------------------------------------------------------------------- tiling
def tile_starts(n: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Start offsets of tiles covering ``n`` pixels, and the tile length (``min(tile, n)``)."""
    if n <= tile:
        return [0], n
    step = tile - overlap
    if step <= 0:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    starts = list(range(0, n - tile + 1, step))
    if starts[-1] != n - tile:
        starts.append(n - tile)
    return starts, tile


def _ramp(r: int) -> np.ndarray:
    i = np.arange(r, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / r)


def blend_weights(n: int, starts: list[int], t: int, overlap: int, margin: int | None = None) -> list[np.ndarray]:
    """1-D blending windows of the tiles ``starts`` (length ``t``) along an axis of ``n`` pixels.

    At a seam, ``margin`` pixels (default ``overlap // 4``) at the tile edge get
    weight 0 and the next ``overlap − 2·margin`` pixels a raised-cosine ramp, so
    neighbouring ramps sum to one; image borders keep weight 1.
    """
    if margin is None:
        margin = overlap // 4
    r = max(1, overlap - 2 * margin)
    up = _ramp(r)
    out = []
    for s in starts:
        w = np.ones(t)
        if s > 0:
            left = np.ones(t)
            left[:margin] = 0.0
            left[margin : margin + r] = up[: max(0, min(r, t - margin))]
            w *= left
        if s + t < n:
            right = np.ones(t)
            right[t - margin :] = 0.0
            right[t - margin - r : t - margin] = up[::-1][-min(r, t - margin) :]
            w *= right
        out.append(w.astype(np.float32))
    return out


def _is_oom(e: BaseException) -> bool:
    try:
        import torch

        if isinstance(e, torch.cuda.OutOfMemoryError):
            return True
    except Exception:  # pragma: no cover
        pass
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


class _Progress:
    def __init__(self, callback, cancel, total: int):
        self.callback, self.cancel = callback, cancel
        self.done, self.total = 0, total
        self.tile: int | None = None
        self.batch: int | None = None

    def check(self):
        if self.cancel is not None and self.cancel.is_set():
            raise FuseCancelled("fusion cancelled")

    def step(self, k: int):
        self.done += k
        if self.callback is not None:
            self.callback(self.done, max(self.total, self.done))
        self.check()


def _fuse_tiles_once(fuser, a, b, tile, overlap, batch_size, prog: _Progress, margin=None, out=None):
    """One attempt at fusing luminance planes ``(P, H, W)`` with the given tile/batch (may raise OOM);
    ``a``/``b`` are float32 arrays or :class:`_RawLuma` (converted per tile); into ``out`` when given."""
    from . import registry

    P, H, W = a.shape
    ys, th = tile_starts(H, tile, overlap)
    xs, tw = tile_starts(W, tile, overlap)
    wy = blend_weights(H, ys, th, overlap, margin)
    wx = blend_weights(W, xs, tw, overlap, margin)
    single = len(ys) == 1 and len(xs) == 1
    if out is None:
        out = np.zeros((P, H, W), np.float32)
    else:
        out[...] = 0.0
    if not single:
        sy = np.zeros(H, np.float64)
        sx = np.zeros(W, np.float64)
        for s, w in zip(ys, wy):
            sy[s : s + th] += w
        for s, w in zip(xs, wx):
            sx[s : s + tw] += w
    units = [(p, i, j) for p in range(P) for i in range(len(ys)) for j in range(len(xs))]
    for k0 in range(0, len(units), batch_size):
        prog.check()
        chunk = units[k0 : k0 + batch_size]
        ta = np.stack([a[p, ys[i] : ys[i] + th, xs[j] : xs[j] + tw] for p, i, j in chunk])
        tb = np.stack([b[p, ys[i] : ys[i] + th, xs[j] : xs[j] + tw] for p, i, j in chunk])
        k = len(chunk)

        def cb(stage, n, k=k):
            prog.step(k)

        res = registry.fuse_planes(fuser, ta, tb, callback=cb)
        del ta, tb
        for (p, i, j), r in zip(chunk, res):
            if single:
                out[p] = r
            else:
                out[p, ys[i] : ys[i] + th, xs[j] : xs[j] + tw] += r * wy[i][:, None] * wx[j][None, :]
    if not single:
        for r in _blocks(H, W):  # row blocks: no whole-plane float64 weight map
            out[:, r] /= (sy[r, None] * sx[None, :]).astype(np.float32)
    return out


def fuse_luma_planes(
    fuser,
    a: np.ndarray,
    b: np.ndarray,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 1,
    callback: Callable[[int, int], None] | None = None,
    cancel=None,
    _progress: _Progress | None = None,
    _margin: int | None = None,
    _out: np.ndarray | None = None,
) -> np.ndarray:
    """Fuse float32 luminance planes ``(P, H, W)`` in [0, 1] with tiling, blending and OOM retries.

    Returns ``(P, H, W)`` float32, not clipped. Raises :class:`FuseCancelled`.
    """
    if not isinstance(a, _RawLuma):
        a = np.asarray(a, np.float32)
    if not isinstance(b, _RawLuma):
        b = np.asarray(b, np.float32)
    P, H, W = a.shape
    tile = int(tile) if tile else max(H, W)
    overlap = int(overlap)
    batch = max(1, int(batch_size))

    def work(t):
        ny = len(tile_starts(H, t, min(overlap, t // 2))[0])
        nx = len(tile_starts(W, t, min(overlap, t // 2))[0])
        return P * ny * nx * fuser.n_stages

    prog = _progress or _Progress(callback, cancel, work(tile))
    while True:
        ov = min(overlap, tile // 2)
        done0 = prog.done
        work_before = work(tile)
        try:
            out = _fuse_tiles_once(fuser, a, b, tile, ov, batch, prog, _margin, _out)
            prog.tile, prog.batch = tile, batch  # later planes start from what worked
            return out
        except Exception as e:  # noqa: BLE001 - filtered below
            if not _is_oom(e):
                raise
            if batch > 1:
                batch = max(1, batch // 2)
            elif tile // 2 >= OOM_MIN_TILE and max(H, W) > OOM_MIN_TILE:
                tile = min(tile, max(H, W)) // 2
            else:
                raise
        # outside the except block, so that the failed attempt's tensors are released first
        _empty_cache(fuser)
        # work already reported stays counted; the redo is added to the total
        prog.total = prog.done + work(tile) + max(0, prog.total - done0 - work_before)


def _empty_cache(fuser) -> None:
    try:
        import torch

        if str(fuser.device).startswith("cuda"):
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass


# ----------------------------------------------------------------------------- raw planes, tile by tile
def _luma(x01: np.ndarray, grey: bool) -> np.ndarray:
    """The luminance of a [0, 1] block as :func:`napari_derun.data.preprocess.split_luma` computes it for the
    whole plane (``grey``: the plane's R = G = B, decided for the whole plane)."""
    if x01.ndim == 2:
        return x01.astype(np.float32, copy=False)
    if grey:
        return x01[..., 0].astype(np.float32)
    return preprocess.rgb_to_ycbcr(x01[..., :3])[..., 0].astype(np.float32)


class _RawLuma:
    """Float32 luminance of a raw plane ``(H, W[, C])``, computed for each slice asked for (one tile)."""

    def __init__(self, raw: np.ndarray, rng, grey: bool):
        self.raw, self.rng, self.grey = raw, rng, grey
        self.shape = (1,) + raw.shape[:2]

    def __getitem__(self, idx):
        _, sy, sx = idx
        return _luma(preprocess.to_float01(self.raw[sy, sx], self.rng), self.grey)


def _blocks(n: int, width: int):
    """Slices of about :data:`_BLOCK_PIXELS` pixels over ``n`` rows of ``width`` pixels."""
    rows = max(1, _BLOCK_PIXELS // max(1, width))
    for r0 in range(0, n, rows):
        yield slice(r0, min(n, r0 + rows))


def _check_plane(raw: np.ndarray, rng, name: str) -> bool:
    """``ValueError`` for NaN/Inf pixels (counted block by block); True when a colour plane is grey
    (R = G = B after scaling, as :func:`~napari_derun.data.preprocess.split_luma` decides)."""
    if raw.dtype.kind == "f":
        bad = sum(int((~np.isfinite(raw[r])).sum()) for r in _blocks(*raw.shape[:2]))
        if bad:
            raise ValueError(f"image {name} contains {bad} NaN/Inf values; replace them (e.g. np.nan_to_num) first")
    if raw.ndim == 2:
        return True
    for r in _blocks(*raw.shape[:2]):
        x = preprocess.to_float01(raw[r], rng)
        if not (np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])):
            return False
    return True


def fuse_raw_plane(fuser, a: np.ndarray, b: np.ndarray, ranges, color_from: str, tile: int, overlap: int,
                   batch_size: int, prog: _Progress, out: np.ndarray) -> bool:
    """Fuse one raw plane pair ``(H, W[, C])`` (any dtype) into ``out`` (``(H, W)`` or ``(H, W, 3)``
    float32), converting to float tile by tile; the same numbers as :func:`~napari_derun.data.preprocess.prepare_pair`
    on the whole plane followed by :func:`fuse_luma_planes` and ``recolor``. True if the result has chroma."""
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"the images differ in size: a is {a.shape[:2]} and b is {b.shape[:2]}")
    grey_a, grey_b = _check_plane(a, ranges[0], "a"), _check_plane(b, ranges[1], "b")
    if color_from not in ("auto", "a", "b"):
        raise ValueError(f"color_from must be 'auto', 'a' or 'b'; got {color_from!r}")
    order = ((a, ranges[0], grey_a), (b, ranges[1], grey_b))
    if color_from != "a":
        order = order[::-1]
    src = next(((raw, rng) for raw, rng, grey in order if raw.ndim == 3 and not grey), None)
    H, W = a.shape[:2]
    luma = out if out.ndim == 2 else np.empty((H, W), np.float32)
    fuse_luma_planes(fuser, _RawLuma(a, ranges[0], grey_a), _RawLuma(b, ranges[1], grey_b), tile, overlap,
                     batch_size, _progress=prog, _out=luma[None])
    for r in _blocks(H, W):
        if src is None:
            y = np.clip(luma[r], 0.0, 1.0)
            if out.ndim == 3:
                out[r] = y[..., None]
            else:
                out[r] = y
        else:
            chroma = preprocess.rgb_to_ycbcr(preprocess.to_float01(src[0][r], src[1])[..., :3])[..., 1:]
            out[r] = preprocess.recolor(luma[r], chroma.astype(np.float32))
    return src is not None
