"""Unpacking an image into a directory, trusting nothing in it.

Each frame's sha256 is checked before it is decompressed; its declared and actual sizes
are bounded by the chunk table; then its archive is unpacked by
:class:`perceus.common.unpack.Unpacker` (names normalised, ``..``/absolute names refused,
every path resolved with ``O_NOFOLLOW``, so no symlink is ever followed).
"""

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import zstandard

from perceus.common.newc import NewcError, Reader
from perceus.common.unpack import Specials, Unpacker
from perceus.imagefmt.image.errors import ImageError
from perceus.imagefmt.image.frames import (
    FRAME_HEADER_MAX,
    MAX_WINDOW,
    READ_PIECE,
    check_frame_header,
    read_frame_into,
)
from perceus.imagefmt.image.table import Chunk, check_table

__all__ = ["extract"]

SPOOL_IN_MEMORY = 32 << 20  # a verified frame larger than this waits in a temporary file


class _ChunkStream:
    """A chunk's decompressed archive, ending where the table says it ends (``usize``)."""

    def __init__(self, reader, usize: int, i: int):
        self.reader, self.left, self.i, self.pos = reader, usize, i, 0

    def read(self, n: int) -> bytes:
        data = self._raw(min(n, self.left))
        self.left -= len(data)
        return data

    def _raw(self, n: int) -> bytes:
        if n <= 0:
            return b""
        try:
            data = self.reader.read(n)
        except zstandard.ZstdError as exc:
            raise ImageError(f"chunk {self.i}: corrupt zstd data: {exc}") from None
        self.pos += len(data)
        return data

    def overran(self) -> bool:
        """Whether the frame decompresses beyond the declared size (read only once it is reached)."""
        return self.left == 0 and bool(self._raw(1))

    def check_end(self) -> None:
        """After the archive: the frame must have been exactly the declared size."""
        if self.left:
            raise ImageError(
                f"chunk {self.i}: decompressed {self.pos} bytes, the table declares {self.pos + self.left}"
            )
        if self.overran():
            raise ImageError(f"chunk {self.i}: decompresses beyond its declared usize (bomb?)")


def _chunk_error(i: int, exc: NewcError) -> ImageError:
    if exc.name is not None:
        return ImageError(f"chunk {i}: {exc.name}: {exc.reason}")
    if exc.offset is not None:
        return ImageError(f"chunk {i} at byte {exc.offset}: {exc.reason}")
    return ImageError(f"chunk {i}: {exc.reason}")


def _check_sizes(table: list[Chunk], max_usize: int) -> None:
    total = 0
    for i, c in enumerate(table):
        if c.usize > max_usize:
            raise ImageError(f"chunk {i}: declared usize {c.usize} exceeds the limit {max_usize}")
        total += c.usize
    if total > max_usize:
        raise ImageError(f"image declares {total} uncompressed bytes, more than the limit {max_usize}")


def _unpack_chunk(unpacker: Unpacker, stream: _ChunkStream, i: int, usize: int) -> None:
    reader = Reader(stream, size=usize, unit="chunk")
    try:
        unpacker.archive(reader)
        reader.finish()
    except NewcError as exc:
        if stream.overran():
            raise ImageError(f"chunk {i}: decompresses beyond its declared usize (bomb?)") from None
        raise _chunk_error(i, exc) from None
    except OSError as exc:
        raise ImageError(f"chunk {i}: cannot write: {exc}") from None
    stream.check_end()


def extract(
    src: BinaryIO,
    chunks: Sequence[Chunk],
    dest: Path,
    *,
    base: int = 0,
    allow_devices: bool = True,
    same_owner: bool = True,
    max_usize: int = 64 << 30,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Unpack the image into ``dest`` (created if missing); returns the entries written.

    Each frame's sha256 is checked before it is decompressed; a frame whose declared or
    actual size exceeds its table usize, or a table whose total exceeds ``max_usize``, is
    refused. Names with ``..`` or a leading ``/``, paths through symlinks, device nodes
    unless ``allow_devices``, malformed headers: :class:`ImageError` naming the chunk and
    entry; nothing is ever written outside ``dest``. Owners are restored if
    ``same_owner`` (else setuid/setgid bits are dropped); directories get their modes and
    mtimes last. ``progress`` is called with each chunk's uncompressed bytes.
    """
    table = check_table(chunks)
    _check_sizes(table, max_usize)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    specials = Specials.CREATE if allow_devices else Specials.NO_DEVICES
    unpacker = Unpacker(dest_fd, same_owner=same_owner, specials=specials)
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    try:
        for i, c in enumerate(table):
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
                read_frame_into(src, c, i, base, spool.write)
                spool.seek(0)
                check_frame_header(spool.read(FRAME_HEADER_MAX), c, i)
                spool.seek(0)
                reader = dctx.stream_reader(
                    spool, read_size=READ_PIECE, read_across_frames=True, closefd=False
                )
                _unpack_chunk(unpacker, _ChunkStream(reader, c.usize, i), i, c.usize)
            if progress is not None:
                progress(c.usize)
        unpacker.finish()
    finally:
        unpacker.close()
        os.close(dest_fd)
    return unpacker.entries
