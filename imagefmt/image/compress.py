"""One chunk into one zstd frame: the archive built natively, compressed, hashed.

The cpio writer is native (``perceus.native.cpiopack``: headers and file data read with
open/read in C, without the GIL) and python-zstandard releases the GIL too, so a pool of
threads builds and compresses chunks side by side. A chunk too large to hold twice in
memory is built piece by piece and compressed by zstd's own worker threads as one frame.
Every frame records its content size.
"""

import hashlib
import threading
from typing import BinaryIO

import zstandard

from perceus.imagefmt.image.entries import ArchiveEntry
from perceus.native import cpiopack

__all__ = ["build_frame", "compressor_params", "stream_frame"]

STREAM_PIECE = 4 << 20  # a streamed chunk is built and compressed this many bytes at a time
WINDOW_LOG = 22  # zstd window: a whole default chunk (see compressor_params)
HASH_LOG = 18
STREAM_JOB = 4 << 20  # zstd's job size for a streamed chunk (its default, 8 MiB at level 3, costs 25 MB more)

_tls = threading.local()


def compressor_params(level: int, threads: int = 0) -> zstandard.ZstdCompressionParameters:
    """zstd ``level`` with a window and hash table sized for a whole chunk.

    A chunk restarts the window, where one stream would not: letting a 4 MiB chunk see
    all of itself (windowLog 22, not level 3's 21) and indexing it with a 2**18-entry
    hash table (not 2**17) wins back more than the split costs, for ~4% more time. The
    decoder then needs a 4 MiB window (the kernel's and every zstd accept it). Higher
    levels already use at least these."""
    base = zstandard.ZstdCompressionParameters.from_level(level)
    extra = {"threads": threads, "job_size": STREAM_JOB} if threads else {}
    return zstandard.ZstdCompressionParameters.from_level(
        level,
        window_log=max(base.window_log, WINDOW_LOG),
        hash_log=max(base.hash_log, HASH_LOG),
        write_content_size=True,
        **extra,
    )


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_tls, "cctx", None)
    if cache is None:
        cache = _tls.cctx = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(compression_params=compressor_params(level))
    return cctx


def _writer(entries: list[ArchiveEntry]) -> cpiopack.ChunkWriter:
    # The boundary into Cython: an ArchiveEntry is a tuple in the order cpiopack takes, so it crosses as is.
    return cpiopack.ChunkWriter(entries)


def build_frame(entries: list[ArchiveEntry], level: int) -> tuple[int, bytes, str]:
    """Worker: one chunk's archive (native, into this thread's reused buffer, so no fresh
    pages are faulted in per chunk), compressed as one frame, hashed: (usize, frame, sha256)."""
    writer = _writer(entries)
    usize = writer.usize
    buf = getattr(_tls, "buf", None)
    if buf is None or len(buf) < usize:
        buf = _tls.buf = bytearray(max(usize, 1 << 20))
    view = memoryview(buf)[:usize]
    try:
        if writer.fill(view) != usize:
            raise RuntimeError("cpiopack: short archive")
        frame = _compressor(level).compress(view)
    finally:
        view.release()
    return usize, frame, hashlib.sha256(frame).hexdigest()


def stream_frame(
    entries: list[ArchiveEntry], level: int, threads: int, out: BinaryIO
) -> tuple[int, int, str]:
    """A chunk too large to hold twice in memory: built and compressed a piece at a time
    (zstd's workers share the frame), written to ``out`` as it comes: (usize, csize, sha256)."""
    writer = _writer(entries)
    params = compressor_params(level, threads=max(threads, 1))
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj(size=writer.usize)
    digest, csize, buf = hashlib.sha256(), 0, bytearray(min(STREAM_PIECE, writer.usize))
    view = memoryview(buf)
    while n := writer.fill(buf):
        piece = cobj.compress(view[:n])
        if piece:
            digest.update(piece)
            out.write(piece)
            csize += len(piece)
    piece = cobj.flush()
    digest.update(piece)
    out.write(piece)
    csize += len(piece)
    return writer.usize, csize, digest.hexdigest()
