"""Replacing files so a crash leaves the old one or the new, never a mix.

Write beside the target, set the final mode before any data, fsync, rename over the
target, fsync the directory. Everything the project writes goes through here.
"""

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "atomic_copy",
    "atomic_write",
    "beside",
    "exchange",
    "fsync_dir",
    "remove_path",
    "replace_tree",
    "replacing",
    "sync_filesystem",
]

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def fsync_dir(path: os.PathLike | str) -> None:
    """Make a rename (or a create, or an unlink) in directory ``path`` durable."""
    dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def sync_filesystem(path: os.PathLike | str) -> None:
    """Make everything written to the filesystem holding ``path`` durable: syncfs(2), for a
    tree of too many files to fsync one by one (``os.sync()`` where libc has no syncfs)."""
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        syncfs = None
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


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


def exchange(a: os.PathLike | str, b: os.PathLike | str) -> bool:
    """Swap two paths in one step (renameat2 RENAME_EXCHANGE); False where the kernel or filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def remove_path(path: os.PathLike | str) -> None:
    """Remove ``path``, a directory tree or anything else; gone already is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def replace_tree(new: os.PathLike | str, target: os.PathLike | str) -> None:
    """Put the finished directory ``new`` at ``target`` durably, replacing whatever is there.

    Nothing there: one rename. Otherwise one rename exchange, so a reader sees the old tree
    or the new; where the kernel cannot exchange, the old tree is renamed aside first (for
    a moment there is none). The old tree is removed once the new one is in place.
    """
    new, target = Path(new), Path(target)
    old: Path | None = None
    if not os.path.lexists(target):
        os.rename(new, target)
    elif exchange(new, target):
        old = new  # now holds the old tree
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        try:
            os.rename(target, old / "tree")
        except BaseException:
            old.rmdir()
            raise
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(old / "tree", target)
            old.rmdir()
            raise
    fsync_dir(target.parent)
    if old is not None:
        remove_path(old)
