"""What an image's archives hold: typed entry records and their names.

A :class:`TreeEntry` is what the walk finds (or what replaces it); the planner numbers it
into an :class:`ArchiveEntry`, a tuple in exactly the field order ``perceus.native.cpiopack``
takes, so a planned chunk crosses into the native writer as it is.
"""

import os
import stat
from typing import NamedTuple

from perceus.common import newc
from perceus.imagefmt.image.errors import ImageError

__all__ = [
    "DIR_MODE",
    "MAX_NEWC_FILESIZE",
    "MAX_SYMLINK_TARGET",
    "SYMLINK_MODE",
    "ArchiveEntry",
    "TreeEntry",
    "archive_name",
    "clamp_mtime",
]

MAX_NEWC_FILESIZE = newc.MAX_NEWC_FILESIZE
MAX_SYMLINK_TARGET = newc.MAX_SYMLINK_TARGET
SYMLINK_MODE = stat.S_IFLNK | 0o777
DIR_MODE = stat.S_IFDIR | 0o755


class TreeEntry(NamedTuple):
    """One thing to pack: a file's metadata and where its data comes from."""

    name: bytes  # the archive name (relative, no NUL)
    mode: int
    uid: int
    gid: int
    mtime: int
    rdevmajor: int = 0
    rdevminor: int = 0
    filesize: int = 0
    path: bytes | None = None  # a regular file whose ``filesize`` bytes are read when packing
    data: bytes | None = None  # stored as is instead (a symlink's target, replaced contents)


class ArchiveEntry(NamedTuple):
    """A planned entry of one chunk's archive, numbered within it (the native writer's order)."""

    name: bytes
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    ino: int
    rdevmajor: int
    rdevminor: int
    filesize: int
    path: bytes | None
    data: bytes | None


def clamp_mtime(st: os.stat_result) -> int:
    """Whole seconds, clamped to newc's 32 bits."""
    seconds = st.st_mtime_ns // 1_000_000_000
    return 0 if seconds < 0 else newc.MAX_FIELD if seconds > newc.MAX_FIELD else seconds


def archive_name(key: str, what: str) -> bytes:
    """A relative path as the archive names it: no leading '/', './', empty or '.' parts."""
    if not isinstance(key, str):
        raise ImageError(f"{what}: path {key!r} is not a string")
    parts = [p for p in key.split("/") if p and p != "."]
    if not parts or ".." in parts or "\0" in key:
        raise ImageError(f"{what}: bad path {key!r} (must name something inside the tree)")
    return os.fsencode("/".join(parts))
