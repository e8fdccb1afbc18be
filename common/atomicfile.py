"""Replacing files so a crash leaves the old one or the new, never a mix.

Write beside the target, set the final mode before any data, fsync, rename over the
target, fsync the directory. Everything the project writes goes through here.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_copy", "atomic_write", "beside", "fsync_dir", "replacing"]


def fsync_dir(path: os.PathLike | str) -> None:
    """Make a rename (or a create, or an unlink) in directory ``path`` durable."""
    dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


@contextmanager
def replacing(
    path: os.PathLike | str, mode: int = 0o644, like: os.stat_result | None = None, suffix: str = ".tmp"
) -> Iterator[BinaryIO]:
    """A file beside ``path`` (``.NAME.XXXX<suffix>``) that replaces it, durably, when the block
    ends without error.

    With ``like`` the new file takes that file's mode and (as root) owner. Mode and owner
    are set before any data is written, so a secret is never readable by others. The
    file descriptor is open for reading too (``os.pread`` on it works).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if like is not None and os.geteuid() == 0:
                os.fchown(handle.fileno(), like.st_uid, like.st_gid)
            os.fchmod(handle.fileno(), (like.st_mode & 0o7777) if like is not None else mode)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write(
    path: os.PathLike | str, data: bytes | str, mode: int = 0o644, like: os.stat_result | None = None
) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8)."""
    with replacing(path, mode, like) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def atomic_copy(source: os.PathLike | str, target: os.PathLike | str, mode: int = 0o644) -> None:
    """Replace ``target`` with a copy of ``source``."""
    with replacing(target, mode) as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)


@contextmanager
def beside(target: os.PathLike | str, mode: int = 0o644) -> Iterator[Path]:
    """A temporary *path* next to ``target``, for tools that write by name (objcopy, zstd).

    Created empty with ``mode`` first, so a secret is never readable by others; on success
    it replaces ``target`` durably, on failure it is removed.
    """
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)
