"""Writing files safely: a fresh temporary file next to the target (``mkstemp``, ``O_EXCL``, so
a planted symlink or an existing ``.part`` file is never followed), fsync, then ``os.replace``;
the temporary file is removed on any error, and the result gets the usual umask permissions."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_writer", "atomic_write_bytes", "atomic_write_text", "check_writable"]


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


STALE_SECONDS = 3600


def _remove_stale(path: Path) -> None:
    """Remove this target's temporary files left by a killed writer (older than an hour; regular files only)."""
    import time

    now = time.time()
    for p in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        try:
            st = p.lstat()
            if p.is_file() and not p.is_symlink() and now - st.st_mtime > STALE_SECONDS:
                p.unlink()
        except OSError:
            pass


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


@contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_writer(p) as fh: ...`` writes ``p`` atomically through a new temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.close(fd)  # reopened by name (the file we just created exclusively): writers such as tifffile want .name
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path, "w") as fh:
        fh.write(text)


def check_writable(path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Fail early (before any work) when ``path`` cannot be written: its parent is a file or not
    writable, or it exists and ``overwrite`` is false. Creates missing parent folders."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise OSError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    parent = path.parent
    for p in [parent, *parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"cannot write {path}: {p} is a file, not a folder")
            break
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write to {parent}: permission denied")
    return path
