"""Packing a root tree into an image: plan, build and compress on a pool, write in order.

Chunks are built and compressed by a pool of threads, a bounded number in flight, and
their frames written to ``out`` in order. A chunk larger than :data:`STREAM_OVER` (a file
that large) waits in line and is streamed by this thread while the pool goes on with the
chunks after it, so memory stays bounded however large a file is.
"""

import os
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from perceus.imagefmt.image.compress import build_frame, stream_frame
from perceus.imagefmt.image.entries import MAX_SYMLINK_TARGET, ArchiveEntry, archive_name
from perceus.imagefmt.image.errors import ImageError
from perceus.imagefmt.image.plan import Planner, plan_tree
from perceus.imagefmt.image.table import Chunk

__all__ = ["DEFAULT_CHUNK_SIZE", "PackResult", "pack_tree"]

DEFAULT_CHUNK_SIZE = 4 << 20
STREAM_OVER = 16 << 20  # a chunk above max(this, 4 * chunk_size) is streamed (a file that large)


@dataclass(frozen=True)
class PackResult:
    chunks: list[Chunk]
    usize: int  # total uncompressed bytes (all archives)
    csize: int  # total compressed bytes written to ``out``
    entries: int  # cpio entries written (trailers not counted)


def _pack_error(exc: BaseException) -> ImageError:
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return ImageError(f"cannot pack: {exc.strerror}{where}")
    return ImageError(f"cannot pack: {exc}")


def _check_options(level: int, threads: int, chunk_size: int) -> None:
    if not isinstance(level, int) or not -7 <= level <= 22 or level == 0:
        raise ValueError(f"zstd level {level!r} is not in -7..-1 or 1..22")
    if not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads {threads!r} must be 0 (all cores) or more")
    if not isinstance(chunk_size, int) or chunk_size < 1024:
        raise ValueError(f"chunk_size {chunk_size!r} must be at least 1024")


def _overrides(
    symlink_over: Mapping[str, str] | None, replace_files: Mapping[str, bytes] | None
) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """``symlink_over`` and ``replace_files`` keyed by archive name, checked."""
    over = {archive_name(k, "symlink_over"): os.fsencode(v) for k, v in (symlink_over or {}).items()}
    for rel, target in over.items():
        if not target or b"\0" in target or len(target) > MAX_SYMLINK_TARGET:
            raise ImageError(f"symlink_over: {os.fsdecode(rel)}: bad symlink target {target!r}")
    replace = {archive_name(k, "replace_files"): bytes(v) for k, v in (replace_files or {}).items()}
    both = set(over) & set(replace)
    if both:
        raise ImageError(f"{os.fsdecode(min(both))}: both in symlink_over and replace_files")
    return over, replace


def pack_tree(
    root: Path,
    out: BinaryIO,
    *,
    level: int = 3,
    threads: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    symlink_over: Mapping[str, str] | None = None,
    replace_files: Mapping[str, bytes] | None = None,
    skip: Callable[[str], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> PackResult:
    """Pack the tree at ``root`` into zstd-compressed cpio chunks written to ``out``.

    Frames are written consecutively from ``out``'s current position; each
    :class:`Chunk`'s offset is relative to that start. ``threads`` 0 means every core.
    ``symlink_over`` maps a relpath to a symlink target packed in place of whatever is
    there (its subtree is left out); ``replace_files`` maps a relpath to the contents
    packed instead of the file on disk (mode and owner from the on-disk regular file,
    else 0644 root:root; its mtime if it exists, else 0). Either is created if missing,
    with missing parent directories (0755 root:root), unless it lies below something
    left out. Both win over ``skip`` for the path they name; ``skip(relpath)`` True
    leaves an entry and its subtree out. ``progress`` is called with the uncompressed
    bytes of each chunk as it is written. Raises :class:`ImageError` naming the path
    (a file too large for newc, unreadable, changed while packing, ...).
    """
    _check_options(level, threads, chunk_size)
    nthreads = threads or len(os.sched_getaffinity(0)) or 1
    over, replace = _overrides(symlink_over, replace_files)

    planner = Planner(chunk_size)
    stream_over = max(4 * chunk_size, STREAM_OVER)
    max_inflight = 2 * nthreads
    chunks: list[Chunk] = []
    pos = 0
    inflight: deque[Future | list[ArchiveEntry]] = deque()

    def record(usize: int, csize: int, digest: str) -> None:
        nonlocal pos
        chunks.append(Chunk(pos, csize, usize, digest))
        pos += csize
        if progress is not None:
            progress(usize)

    def write_oldest() -> None:
        head = inflight.popleft()
        if isinstance(head, Future):
            usize, frame, digest = head.result()
            out.write(frame)
            record(usize, len(frame), digest)
        else:  # a chunk to stream, now that every frame before it is written
            record(*stream_frame(head, level, nthreads, out))

    def head_done() -> bool:
        return bool(inflight) and isinstance(inflight[0], Future) and inflight[0].done()

    pool = ThreadPoolExecutor(max_workers=nthreads, thread_name_prefix="perceus-pack")
    try:
        for planned in plan_tree(os.fsencode(root), planner, over, replace, skip):
            for entries, usize in planned:
                # A streamed chunk waits in line as a plain list; the chunks after it are
                # already being built by the pool while this thread streams it.
                inflight.append(entries if usize > stream_over else pool.submit(build_frame, entries, level))
                while len(inflight) > max_inflight or head_done():
                    write_oldest()
        while inflight:
            write_oldest()
    except ImageError:
        raise
    except FileNotFoundError as exc:
        if exc.filename is not None and os.fsencode(exc.filename) == os.fsencode(root):
            raise ImageError(f"{root}: the root tree does not exist") from None
        raise _pack_error(exc) from None
    except (OSError, ValueError) as exc:
        raise _pack_error(exc) from None
    finally:
        for fut in inflight:
            if isinstance(fut, Future):
                fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    return PackResult(chunks, sum(c.usize for c in chunks), pos, planner.entries)
