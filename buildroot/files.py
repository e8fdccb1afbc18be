"""Writing what the builders make: beside the target, then renamed into place.

(``server.fsutil`` does the same for the master's files; buildroot does not import the
server.)
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["beside"]


@contextmanager
def beside(target: Path, mode: int = 0o644) -> Iterator[Path]:
    """A temporary path next to ``target``: fill it in the block; on success it replaces
    ``target`` durably (mode set, data and rename synced), on failure it is removed."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))  # a secret is never readable
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
    dirfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
