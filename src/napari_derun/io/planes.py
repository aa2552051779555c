"""Reading source images and finding (A, B) pairs on disk.

* :func:`read_image` reads PNG / JPEG / TIFF into a numpy array that keeps the
  stored dtype (uint8, uint16, float, ...) and layout (grey ``(H, W)`` or colour
  ``(H, W, 3)``); alpha is dropped.
* :func:`find_pairs` lists the pairs of a data folder laid out as ``<dir>/a`` and
  ``<dir>/b`` (same file stem = a pair) and reports every file it cannot pair.
* :func:`to_gray01` turns any such array into the float32 ``[0, 1]`` grey image
  used by the metrics and the model.

Only numpy, tifffile and Pillow are used (no torch, Qt or napari).
"""
from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np

from ..data.limits import check_declared_size
from ..data.preprocess import dtype_to_unit

__all__ = ["IMAGE_EXTENSIONS", "read_image", "find_pairs", "to_gray01"]

#: File extensions recognised as images (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

_TIFF_EXTENSIONS = (".tif", ".tiff")


def _png_is_16bit_colour(path: Path) -> bool:
    """True if ``path`` is a PNG with 16-bit samples and colour (types 2 or 6)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return False
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return False
    bit_depth, colour_type = struct.unpack("BB", head[24:26])
    return bit_depth == 16 and colour_type in (2, 6)


def _normalise_layout(arr: np.ndarray, path: Path) -> np.ndarray:
    """Bring an array to (H, W) or (H, W, 3): drop alpha, squeeze single channels."""
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first TIFF
    if arr.ndim == 3:
        c = arr.shape[-1]
        if c == 1:
            arr = arr[..., 0]
        elif c == 2:  # grey + alpha
            arr = arr[..., 0]
        elif c == 4:  # RGBA
            arr = arr[..., :3]
        elif c != 3:
            raise ValueError(
                f"{path}: expected a single 2-D grey or RGB image, got an array of shape "
                f"{arr.shape} ({c} channels or a stack of images)"
            )
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{path}: expected a single 2-D grey or RGB image, got an array of shape {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def read_image(path, max_mb: float | None = None) -> np.ndarray:
    """Read one image file, keeping its dtype.

    TIFF (``.tif``, ``.tiff``) is read with tifffile (first series, any dtype,
    channel-first colour is moved last); other formats with Pillow.  Palette
    images are expanded to RGB, CMYK / YCbCr JPEGs converted to RGB, 1-bit images
    to uint8 0/255.  An alpha channel is dropped.  An RGB image whose three
    channels are identical stays ``(H, W, 3)``: the caller decides.  Pillow reads
    16-bit *colour* PNGs as 8 bits; a warning says so (store 16-bit colour as TIFF).

    The size the file declares is checked before decoding (:func:`napari_derun.data.limits.check_declared_size`).

    Args:
        path: str or os.PathLike, the image file.
        max_mb: the most memory (MiB) decoding and fusing the image may take (default: the
            ``NAPARI_DERUN_MAX_IMAGE_MB`` environment variable, else the memory available now; 0: no limit).

    Returns:
        (H, W) or (H, W, 3) ndarray, dtype as stored (uint8, uint16, float32, ...).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file cannot be decoded, declares an image too large for the memory, or is
            not a single 2-D grey/RGB image.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such image file: {p}")
    suffix = p.suffix.lower()
    if suffix in _TIFF_EXTENSIONS:
        import tifffile

        try:
            with tifffile.TiffFile(str(p)) as tif:
                _, arr = checked_series(tif, p, max_mb)
        except ValueError:
            raise
        except MemoryError:
            raise ValueError(f"{p}: not enough memory to decode this TIFF; fuse a cropped or binned copy") from None
        except Exception as exc:  # tifffile raises several types
            raise ValueError(f"{p}: cannot read TIFF ({type(exc).__name__}: {exc})") from None
        arr = np.asarray(arr)
        while arr.ndim > 3 and arr.shape[0] == 1:
            arr = arr[0]
        return _normalise_layout(arr, p)

    from PIL import Image, UnidentifiedImageError

    try:
        with _open_pil(p, max_mb) as im:
            w, h = im.size
            bpp = _bytes_per_pixel(im.mode)
            check_declared_size(p, (h, w) if bpp == 1 else (h, w, bpp), np.uint8, max_mb, p.stat().st_size)
            im.load()
            mode = im.mode
            if mode == "P" or mode == "PA":
                im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif mode == "1":
                im = im.convert("L")
            elif mode == "LA":
                im = im.convert("L")
            arr = np.asarray(im)
    except MemoryError:
        raise ValueError(f"{p}: not enough memory to decode this image; fuse a cropped or binned copy") from None
    except UnidentifiedImageError as exc:
        raise ValueError(f"{p}: not a readable image ({exc})") from exc
    except OSError as exc:
        raise ValueError(f"{p}: cannot read image ({exc})") from exc
    if suffix == ".png" and arr.dtype == np.uint8 and arr.ndim == 3 and _png_is_16bit_colour(p):
        warnings.warn(
            f"{p}: 16-bit colour PNG read as 8 bits per channel (Pillow limitation); "
            "store 16-bit colour images as TIFF",
            stacklevel=2,
        )
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # Pillow mode "I" for 16-bit grey
    return _normalise_layout(np.array(arr), p)


def checked_series(tif, p: Path, max_mb):
    """``(series, array)`` of an open TIFF's first series, read only after its dtype and its declared size
    passed :func:`check_real_dtype` and :func:`~napari_derun.data.limits.check_declared_size`."""
    s = tif.series[0]
    check_real_dtype(p, s.dtype)
    check_declared_size(p, s.shape, s.dtype, max_mb, p.stat().st_size)
    return s, s.asarray()


def check_real_dtype(path, dtype) -> None:
    """``ValueError`` for pixel types napari-derun cannot fuse (complex, structured, strings)."""
    dt = np.dtype(dtype)
    if dt.kind not in "biuf":
        what = "complex" if dt.kind == "c" else "not numbers"
        raise ValueError(f"{path} holds {dt} pixels ({what}); napari-derun fuses real-valued images: save the "
                         "magnitude (np.abs) or the real part as a real-valued TIFF first")


def _bytes_per_pixel(mode: str) -> int:
    """Decoded bytes per pixel of a Pillow mode (at least as many as Pillow allocates)."""
    if mode in ("I", "F", "RGBA", "RGBX", "CMYK", "RGBa", "LAB", "HSV", "YCbCr", "P", "PA"):  # P: to RGB(A)
        return 4
    if mode.startswith("I;16") or mode == "LA":
        return 2
    if mode in ("RGB",):
        return 3
    return 1


def _open_pil(p: Path, max_mb):
    """``Image.open`` with Pillow's decompression-bomb guard as a clear message; the guard is lifted only
    when a limit is given explicitly (``max_mb`` or the environment), which :func:`check_declared_size`
    then applies."""
    from PIL import Image

    from ..data.limits import ENV

    try:
        with warnings.catch_warnings():  # over Pillow's warning size: our own limit is checked next
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(p)
    except Image.DecompressionBombError as exc:
        if max_mb is None and not os.environ.get(ENV):
            raise ValueError(f"{p}: {exc}; refused (Pillow's decompression-bomb guard). If the image is real, pass "
                             f"--max-image-mb MiB (or set {ENV}) to read it within that memory limit") from None
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit is checked on the declared size next
    try:
        return Image.open(p)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _list_images(folder: Path, label: str, problems: list[str]) -> dict[str, Path]:
    """Map stem -> path for the image files of ``folder``; record problems."""
    found: dict[str, list[Path]] = {}
    if not folder.exists():
        problems.append(f"missing folder {label}/ ({folder})")
        return {}
    if not folder.is_dir():
        problems.append(f"{label}/ is not a folder ({folder})")
        return {}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        problems.append(f"cannot read folder {label}/ ({folder}): {exc}")
        return {}
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue  # hidden files (.DS_Store, ...)
        path = Path(entry.path)
        if entry.is_dir():
            problems.append(f"{label}/{name}: sub-folder ignored")
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(
                f"{label}/{name}: ignored, not an image extension ({', '.join(IMAGE_EXTENSIONS)})"
            )
            continue
        found.setdefault(path.stem, []).append(path)
    out: dict[str, Path] = {}
    for stem, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            problems.append(f"{label}/: several files share the name {stem!r} ({names}); skipped")
            continue
        out[stem] = paths[0]
    return out


def find_pairs(directory) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Find the (A, B) image pairs of a data folder.

    ``directory`` holds ``a/`` (structural images) and ``b/`` (salient images);
    files with the same stem form a pair (``a/x.png`` + ``b/x.jpg`` is a pair).
    Extensions png, jpg, jpeg, tif, tiff are recognised case-insensitively; stems
    are compared exactly.  Hidden files (starting with ``.``) are skipped; every
    other file that cannot be paired is reported.

    Args:
        directory: str or os.PathLike, the data folder holding ``a/`` and ``b/``.

    Returns:
        pairs: list of (name, path_a, path_b), sorted by name; ``name`` is the
            common stem.
        problems: list of str, human-readable reports: missing/unreadable folders,
            files without a partner, non-image files, ambiguous names.  Empty if
            everything paired.
    """
    root = Path(directory)
    problems: list[str] = []
    if not root.is_dir():
        problems.append(f"not a folder: {root}")
        return [], problems
    fa = _list_images(root / "a", "a", problems)
    fb = _list_images(root / "b", "b", problems)
    pairs = [(stem, fa[stem], fb[stem]) for stem in sorted(set(fa) & set(fb))]
    lower_b = {s.lower(): s for s in fb}
    lower_a = {s.lower(): s for s in fa}
    for stem in sorted(set(fa) - set(fb)):
        hint = ""
        if stem.lower() in lower_b and lower_b[stem.lower()] not in fa:
            hint = f" (b/ has {fb[lower_b[stem.lower()]].name}, which differs in letter case)"
        problems.append(f"a/{fa[stem].name}: no partner in b/{hint}")
    for stem in sorted(set(fb) - set(fa)):
        hint = ""
        if stem.lower() in lower_a and lower_a[stem.lower()] not in fb:
            hint = f" (a/ has {fa[lower_a[stem.lower()]].name}, which differs in letter case)"
        problems.append(f"b/{fb[stem].name}: no partner in a/{hint}")
    return pairs, problems


def to_gray01(img) -> np.ndarray:
    """Convert an image array to a float32 grey image in [0, 1].

    * unsigned / signed integers are divided by the dtype maximum (uint8 / 255,
      uint16 / 65535, ...), negative values clipped to 0; bool -> 0 / 1;
    * floats are assumed to be in [0, 1] already and clipped to it;
    * colour ``(H, W, 3)`` (or ``(H, W, 4)``, alpha dropped) -> luminance
      Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601); ``(H, W, 1)`` is squeezed.

    Args:
        img: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array_like.

    Returns:
        (H, W) float32 in [0, 1].

    Raises:
        ValueError: For other shapes, non-numeric dtypes or NaN / Inf values.
    """
    arr = np.asarray(img)
    x = dtype_to_unit(arr)
    if x is None:
        raise ValueError(f"to_gray01: unsupported dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise ValueError("to_gray01: image contains NaN or Inf values")
    if x.ndim == 3 and x.shape[-1] in (1, 3, 4):
        if x.shape[-1] == 1:
            x = x[..., 0]
        else:
            x = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
    elif x.ndim != 2:
        raise ValueError(
            f"to_gray01: expected (H, W) or (H, W, 3) image, got shape {arr.shape}"
        )
    return np.clip(x, 0.0, 1.0).astype(np.float32)
