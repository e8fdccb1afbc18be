"""Reading an image's frames: each checked against the chunk table before it is believed.

A frame's length and sha256 must be the table's, and the content size its zstd header
declares must be the table's ``usize``; a frame asking for a window above
:data:`MAX_WINDOW` is refused. :func:`verify` checks every frame, :func:`iter_frames`
hands them out (to resume a transfer), :func:`archive_directories` lists the directories
an image holds.
"""

import hashlib
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

import zstandard

from perceus.common import newc
from perceus.imagefmt.image.errors import ImageError
from perceus.imagefmt.image.table import Chunk, check_table

__all__ = ["MAX_WINDOW", "READ_PIECE", "archive_directories", "check_frame_header", "iter_frames",
           "read_frame_into", "verify"]  # fmt: skip

MAX_WINDOW = 1 << 27  # largest zstd window a frame may ask of the decompressor (128 MiB)
READ_PIECE = 1 << 20
FRAME_HEADER_MAX = 18  # bytes of a zstd frame header, at most


def read_frame_into(
    src: BinaryIO, c: Chunk, i: int, base: int, sink: Callable[[bytes], object] | None
) -> None:
    """Copy chunk ``i``'s frame to ``sink`` (a write method, or None), checking length and
    sha256; ImageError on truncation or mismatch."""
    try:
        src.seek(base + c.offset)
    except (OSError, ValueError, OverflowError) as exc:
        raise ImageError(f"chunk {i}: cannot seek to offset {base + c.offset}: {exc}") from None
    digest, left = hashlib.sha256(), c.csize
    while left:
        piece = src.read(min(READ_PIECE, left))
        if not piece:
            raise ImageError(
                f"chunk {i}: truncated: {c.csize - left} of {c.csize} bytes at offset {base + c.offset}"
            )
        digest.update(piece)
        if sink is not None:
            sink(piece)
        left -= len(piece)
    if digest.hexdigest() != c.sha256:
        raise ImageError(f"chunk {i}: sha256 mismatch (frame at offset {base + c.offset} is corrupt)")


def check_frame_header(head: bytes, c: Chunk, i: int) -> None:
    """The frame header's declared content size must be the table's usize."""
    try:
        params = zstandard.get_frame_parameters(head)
    except zstandard.ZstdError as exc:
        raise ImageError(f"chunk {i}: not a zstd frame ({exc})") from None
    if params.content_size != zstandard.CONTENTSIZE_UNKNOWN and params.content_size != c.usize:
        raise ImageError(
            f"chunk {i}: frame declares {params.content_size} bytes, the table {c.usize} (size mismatch)"
        )
    if params.window_size > MAX_WINDOW:
        raise ImageError(f"chunk {i}: frame asks for a {params.window_size}-byte window (limit {MAX_WINDOW})")


def verify(src: BinaryIO, chunks: Sequence[Chunk], *, base: int = 0) -> None:
    """Check every frame's length and sha256 (and its declared size); ImageError on the first bad one."""
    for i, c in enumerate(check_table(chunks)):
        head = bytearray()

        def keep_head(piece, head=head):
            if len(head) < FRAME_HEADER_MAX:
                head.extend(piece[: FRAME_HEADER_MAX - len(head)])

        read_frame_into(src, c, i, base, keep_head)
        check_frame_header(bytes(head), c, i)


def iter_frames(src: BinaryIO, chunks: Sequence[Chunk], *, base: int = 0, start: int = 0) -> Iterator[bytes]:
    """The verified compressed frames from chunk index ``start`` on (to resume a transfer)."""
    table = check_table(chunks)
    if not isinstance(start, int) or not 0 <= start <= len(table):
        raise ImageError(f"resume index {start!r} is not in 0..{len(table)}")
    for i in range(start, len(table)):
        parts: list[bytes] = []
        read_frame_into(src, table[i], i, base, parts.append)
        frame = b"".join(parts)
        check_frame_header(frame[:FRAME_HEADER_MAX], table[i], i)
        yield frame


class _Limited:
    """A read-only view of the next ``size`` bytes of ``src``."""

    def __init__(self, src: BinaryIO, size: int) -> None:
        self.src, self.left = src, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.src.read(n) if n else b""
        self.left -= len(data)
        return data


def archive_directories(src: BinaryIO, chunks: Sequence[Chunk], *, base: int = 0) -> frozenset[str]:
    """The directories an image holds (relative paths, "." excluded), from its cpio headers.

    Each frame is decompressed as a stream and file data skipped, so memory stays at one
    read piece; sha256s are not checked (the image is the master's own)."""
    found: set[str] = set()
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    for i, c in enumerate(check_table(chunks)):
        src.seek(base + c.offset)
        reader = dctx.stream_reader(_Limited(src, c.csize), read_across_frames=False, closefd=False)
        try:
            for member in newc.Reader(reader):
                if stat.S_ISDIR(member.header.mode):
                    parts = [p for p in os.fsdecode(member.name).split("/") if p and p != "."]
                    if parts:
                        found.add("/".join(parts))
        except (newc.NewcError, zstandard.ZstdError) as exc:
            raise ImageError(f"chunk {i}: {exc}") from None
    return frozenset(found)
