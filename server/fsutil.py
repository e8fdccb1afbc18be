"""Atomic file writes: write beside the target, fsync, rename into place."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


@contextmanager
def replacing(path: Path, mode: int = 0o644, like: os.stat_result | None = None) -> Iterator[BinaryIO]:
    """A file beside ``path`` that replaces it, durably, when the block ends without error.

    With ``like`` the new file takes that file's mode and (as root) owner. Mode and owner
    are set before any data is written, so a secret is never readable by others.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    path: Path, data: bytes | str, mode: int = 0o644, like: os.stat_result | None = None
) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old file or the new, never a mix."""
    with replacing(path, mode, like) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def atomic_copy(source: Path, target: Path, mode: int = 0o644) -> None:
    """Replace ``target`` with a copy of ``source``, the same way."""
    with replacing(target, mode) as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)
