"""The per-node overlay: one small newc archive in one zstd frame, appended after an image."""

import os
import stat
from collections.abc import Collection, Mapping

import zstandard

from perceus.common import newc
from perceus.imagefmt.image.compress import compressor_params
from perceus.imagefmt.image.entries import DIR_MODE, MAX_SYMLINK_TARGET, SYMLINK_MODE, archive_name
from perceus.imagefmt.image.errors import ImageError, short

__all__ = ["build_archive"]


def _archive_entry(key: str, data: bytes, mode: int) -> tuple[int, bytes]:
    """The cpio mode and data of one build_archive entry: a file, a directory or a symlink."""
    if not isinstance(mode, int) or isinstance(mode, bool) or mode < 0:
        raise ImageError(f"build_archive: {key}: mode {mode!r} is not an integer")
    kind = stat.S_IFMT(mode) or stat.S_IFREG
    if mode & ~0o7777 and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
        raise ImageError(
            f"build_archive: {key}: mode {mode!r} is not a regular file's, a directory's or a symlink's"
        )
    data = bytes(data)
    if kind == stat.S_IFDIR and data:
        raise ImageError(f"build_archive: {key}: a directory has no data")
    if kind == stat.S_IFLNK:
        if not data or len(data) > MAX_SYMLINK_TARGET or b"\0" in data:
            raise ImageError(f"build_archive: {key}: bad symlink target {short(data)}")
        return SYMLINK_MODE, data
    return kind | stat.S_IMODE(mode), data


def build_archive(
    files: Mapping[str, tuple[bytes, int]], *, level: int = 3, existing_dirs: Collection[str] = ()
) -> bytes:
    """One zstd frame holding one cpio newc archive of ``files`` (relpath -> (data, mode)),
    for per-node overlays appended after an image.

    A mode without file type bits, or with S_IFREG, is a regular file; S_IFDIR a directory
    (data empty) with that mode; S_IFLNK a symlink whose data is its target. Parent
    directories not given are added 0755, except those in ``existing_dirs`` (relative
    paths the image already has): unpacking an entry for an existing directory would
    reset its mode, so ``/root`` would lose its 0700. Everything is root:root with mtime
    0, so the same input gives the same bytes."""
    have = {archive_name(d, "build_archive existing directory") for d in existing_dirs}
    archive = bytearray()
    made: set[bytes] = set()  # directories
    written: set[bytes] = set()  # files and symlinks
    ino = 0
    for key in sorted(files, key=lambda k: archive_name(k, "build_archive")):
        rel = archive_name(key, "build_archive")
        data, mode = files[key]
        cpio_mode, data = _archive_entry(key, data, mode)
        parts = rel.split(b"/")
        for i in range(1, len(parts)):
            parent = b"/".join(parts[:i])
            if parent in written:
                raise ImageError(f"build_archive: {os.fsdecode(parent)} is also a parent directory")
            if parent not in made and parent not in have:
                made.add(parent)
                ino += 1
                newc.write_entry(archive, parent, mode=DIR_MODE, ino=ino, nlink=2)
        if rel in made or rel in written:
            raise ImageError(f"build_archive: {key} is also a parent directory or given twice")
        ino += 1
        if stat.S_ISDIR(cpio_mode):
            made.add(rel)
            nlink = 2
        else:
            written.add(rel)
            nlink = 1
        try:
            newc.write_entry(archive, rel, mode=cpio_mode, ino=ino, nlink=nlink, data=data)
        except newc.NewcError as exc:
            raise ImageError(f"build_archive: {exc}") from None
    newc.write_trailer(archive)
    return zstandard.ZstdCompressor(compression_params=compressor_params(level)).compress(bytes(archive))
