"""Writing files safely: a fresh temporary file next to the target (``mkstemp``, ``O_EXCL``, so
a planted symlink or an existing ``.part`` file is never followed), fsync, then ``os.replace``;
the temporary file is removed on any error, and the result gets the usual umask permissions."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_writer", "atomic_write_bytes", "atomic_write_text", "check_writable", "check_not_input",
           "read_bounded", "rename_no_clobber", "same_file", "space_message"]


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


def space_message(e: OSError, path: str | os.PathLike) -> OSError:
    """A disk-full / quota / file-size-limit ``OSError`` as one that says what to do (others unchanged)."""
    import errno

    what = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file is larger than this system allows "
            "(a file-size limit, ulimit -f, or the file system's maximum)"}
    if hasattr(errno, "EDQUOT"):
        what[errno.EDQUOT] = "the disk quota is exhausted"
    if e.errno not in what:
        return e
    folder = Path(path).parent
    return OSError(e.errno, f"cannot write {path}: {what[e.errno]}; nothing was replaced. Free some space in "
                            f"{folder} (or raise the limit), or write somewhere else")


@contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", overwrite: bool = True) -> Iterator[IO]:
    """``with atomic_writer(p) as fh: ...`` writes ``p`` atomically through a new temporary file.

    Args:
        path: the file to write.
        mode: ``"wb"`` or ``"w"`` (UTF-8 text).
        overwrite: when false, ``p`` is put in place only if it does not exist at that moment (a hard link,
            atomic: of two writers racing for the same name, the second gets ``FileExistsError`` and its
            temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.close(fd)  # reopened by name (the file we just created exclusively): writers such as tifffile want .name
        try:
            with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:
            raise space_message(e, path) from None
        os.chmod(tmp, _umask_mode())
        if overwrite:
            os.replace(tmp, path)
        else:
            rename_no_clobber(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def rename_no_clobber(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists (atomically where hard links work)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} appeared while this was being written (another process?); it was not "
                              "replaced. Give another output name, or pass --overwrite to replace it") from None
    except OSError:  # no hard links here (some network / FAT file systems): exclusive create, then replace
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path, "w") as fh:
        fh.write(text)


def check_writable(path: str | os.PathLike, overwrite: bool = True, inputs=()) -> Path:
    """Fail early (before any work) when ``path`` cannot be written: it is one of ``inputs`` (never
    written, even with ``overwrite``), its parent is a file or not writable, or it exists and
    ``overwrite`` is false. Creates missing parent folders."""
    path = Path(path)
    check_not_input(path, inputs)
    if path.exists() and path.is_dir():
        raise OSError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists and was left as it is; give another output name, or add --overwrite "
                              "if it is an old result you want replaced")
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


def check_not_input(path: str | os.PathLike, inputs) -> None:
    """``ValueError`` when ``path`` is one of ``inputs`` (see :func:`same_file`): outputs never replace inputs."""
    for i in inputs:
        if i is not None and same_file(path, i):
            raise ValueError(f"{path} is an input of this command ({i}); napari-derun never writes onto its "
                             "inputs, even with --overwrite: give another output name")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file: equal resolved paths, or (both existing) the same
    device and inode (a hard link, a symlink, another spelling of the path)."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return os.path.samefile(a, b)
    except (OSError, RuntimeError, ValueError):
        return False


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of a *regular* file of at most ``limit`` bytes, or ``ValueError``.

    Opened without blocking (a FIFO never hangs the caller) and checked with ``fstat`` before reading
    (a link to ``/dev/zero`` or a device is refused); at most ``limit + 1`` bytes are ever read.
    """
    import stat

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what} {path} is not a regular file (a FIFO, device or socket); refused")
        if st.st_size > limit:
            raise ValueError(f"{what} {path} is {st.st_size:,} bytes, more than the {limit:,} allowed; refused")
        chunks, n = [], 0
        while n <= limit:
            b = os.read(fd, min(1 << 20, limit + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
        if n > limit:
            raise ValueError(f"{what} {path} grew beyond the {limit:,} bytes allowed while being read; refused")
        return b"".join(chunks)
    finally:
        os.close(fd)
