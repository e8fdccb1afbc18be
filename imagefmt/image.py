"""Node images: a root tree as a sequence of zstd-compressed cpio newc chunks.

An image member is a run of zstd frames, one per *chunk*. Each chunk decompresses to a
complete cpio newc archive (its own ``TRAILER!!!``) of whole files, about ``chunk_size``
(4 MiB) uncompressed: a file larger than that gets a chunk of its own, and a hard-link
group always stays within one chunk (the kernel forgets inode numbers at each trailer).
The Linux kernel unpacks such concatenated, separately compressed archives as one
initramfs; one cpio stream cut at arbitrary offsets would not boot. The chunk table
(:class:`Chunk`: offset, sizes, sha256 of the compressed frame) lets packing run on
every core, a transfer resume at any chunk, a node verify each frame as it arrives, and
a rebuilt image reuse the frames of unchanged chunks: chunk boundaries fall at
content-defined cut points where they can (see :class:`_Planner`), and inode numbers
restart in every chunk, so an unchanged run of files yields byte-identical frames.

Inside a chunk, entries follow a sorted walk of the tree, each directory before its
contents; the root itself is the entry ``.``. Hard-link groups are gathered during the
walk and written after it, each group in one chunk with the data on its last member
(earlier members have size 0, the same ``ino`` and ``nlink``), as GNU cpio and the kernel
expect. Device fields ``devmajor/devminor`` are 0, directories have ``nlink`` 2, mtimes
are whole seconds clamped to newc's 32 bits.

The cpio writer is native (``perceus.native.cpiopack``: headers and file data read with
open/read in C, without the GIL); chunks are built and compressed by a pool of threads
(python-zstandard also releases the GIL), a bounded number in flight, and their frames
written to ``out`` in order. A chunk larger than :data:`STREAM_OVER` is built piece by
piece and compressed by zstd's own worker threads as one frame, so memory stays bounded
however large a file is. Every frame records its content size.

Extraction trusts nothing: each frame's sha256 is checked before it is decompressed, its
declared and actual sizes are bounded, names are normalised and ``..``/absolute names
refused, and every path is resolved from the destination one directory at a time with
``O_NOFOLLOW``, so no symlink (from the archive or already there) is ever followed.
"""

import hashlib
import os
import stat
import tempfile
import threading
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from perceus.imagefmt import cpio
from perceus.native import cpiopack

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_NEWC_FILESIZE",
    "Chunk",
    "ImageError",
    "PackResult",
    "archive_directories",
    "build_archive",
    "extract",
    "iter_frames",
    "pack_tree",
    "verify",
]

DEFAULT_CHUNK_SIZE = 4 << 20
MAX_NEWC_FILESIZE = cpio.MAX_NEWC_FILESIZE
STREAM_PIECE = 4 << 20  # a streamed chunk is built and compressed this many bytes at a time
STREAM_OVER = 16 << 20  # a chunk above max(this, 4 * chunk_size) is streamed (a file that large)
WINDOW_LOG = 22  # zstd window: a whole default chunk (see _params)
HASH_LOG = 18
STREAM_JOB = 4 << 20  # zstd's job size for a streamed chunk (its default, 8 MiB at level 3, costs 25 MB more)
MAX_WINDOW = 1 << 27  # largest zstd window a frame may ask of the decompressor (128 MiB)
SPOOL_IN_MEMORY = 32 << 20  # a verified frame larger than this waits in a temporary file
READ_PIECE = 1 << 20
DIR_FDS = 64  # directory fds kept open while extracting (least recently used go)
MAX_SYMLINK_TARGET = 4095
_U32 = 0xFFFFFFFF
_INT64_MAX = (1 << 63) - 1


class ImageError(Exception):
    """A bad image, chunk table or tree; the message names the reason and where."""


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Chunk:
    """One entry of the chunk table."""

    offset: int  # byte offset of this zstd frame from the start of the image member
    csize: int  # compressed size
    usize: int  # uncompressed size (the cpio archive)
    sha256: str  # hex sha256 of the compressed frame

    def as_dict(self) -> dict:
        return {"offset": self.offset, "csize": self.csize, "usize": self.usize, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d) -> "Chunk":
        """A Chunk from untrusted data (a manifest): exact keys, types and ranges."""
        if not isinstance(d, Mapping):
            raise ImageError(f"chunk table entry is not a mapping: {type(d).__name__}")
        keys = {"offset", "csize", "usize", "sha256"}
        if set(d) != keys:
            missing, extra = sorted(keys - set(d)), sorted(map(str, set(d) - keys))
            raise ImageError(f"chunk table entry has missing keys {missing} / unknown keys {_short(extra)}")
        for key in ("offset", "csize", "usize"):
            value = d[key]
            if type(value) is not int or not 0 <= value <= _INT64_MAX:
                raise ImageError(f"chunk table entry: {key} {_short(value)} is not an integer in 0..2**63-1")
        if d["csize"] == 0:
            raise ImageError("chunk table entry: csize 0 (a zstd frame is never empty)")
        digest = d["sha256"]
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
            raise ImageError(f"chunk table entry: sha256 {_short(digest)} is not 64 lowercase hex digits")
        return cls(d["offset"], d["csize"], d["usize"], digest)


@dataclass(frozen=True)
class PackResult:
    chunks: list[Chunk]
    usize: int  # total uncompressed bytes (all archives)
    csize: int  # total compressed bytes written to ``out``
    entries: int  # cpio entries written (trailers not counted)


# --------------------------------------------------------------------------- packing

# A planned entry, as perceus.native.cpiopack takes it:
# (name, mode, uid, gid, nlink, mtime, ino, rdevmajor, rdevminor, filesize, path, data)
_S_IFLNK_777 = stat.S_IFLNK | 0o777
_DIR_MODE = stat.S_IFDIR | 0o755


def _entry_size(namelen: int, filesize: int) -> int:
    return ((114 + namelen) & ~3) + ((filesize + 3) & ~3)


def _mtime(st: os.stat_result) -> int:
    seconds = st.st_mtime_ns // 1_000_000_000
    return 0 if seconds < 0 else _U32 if seconds > _U32 else seconds


def _norm_rel(key: str, what: str) -> bytes:
    """A relative path as the archive names it: no leading '/', './', empty or '.' parts."""
    if not isinstance(key, str):
        raise ImageError(f"{what}: path {key!r} is not a string")
    parts = [p for p in key.split("/") if p and p != "."]
    if not parts or ".." in parts or "\0" in key:
        raise ImageError(f"{what}: bad path {key!r} (must name something inside the tree)")
    return os.fsencode("/".join(parts))


class _Planner:
    """Cuts the walk into chunks: lists of entry tuples with per-chunk inode numbers.

    A cut goes before a unit (an entry or a whole hard-link group) that would overflow
    ``chunk_size``, and after a unit larger than it. Once a chunk is 3/4 full, a cut also
    goes before an entry when ``crc32(name) / 2**32 < size / (chunk_size / 8)``: a
    content-defined cut point, taken with a probability proportional to the entry's size
    (so about every chunk_size/8 bytes), that depends on nothing before it. After an
    insertion or a change in size, cuts fall on the same entries again within a chunk
    or two, and the chunks after that come out identical.
    """

    def __init__(self, chunk_size: int):
        self.chunk_size = chunk_size
        self.soft = chunk_size * 3 // 4
        self.gap = max(chunk_size // 8, 1)
        self.cur: list[tuple] = []
        self.size = 0
        self.ready: list[tuple[list[tuple], int]] = []
        self.entries = 0

    def _cut(self) -> None:
        if self.cur:
            self.ready.append((self.cur, self.size + cpiopack.TRAILER_SIZE))
            self.cur, self.size = [], 0

    def _before(self, name: bytes, size: int) -> None:
        if self.cur and (
            self.size + size > self.chunk_size
            or (self.size >= self.soft and zlib.crc32(name) * self.gap < size << 32)
        ):
            self._cut()

    def add(self, name, mode, uid, gid, mtime, rmaj=0, rmin=0, filesize=0, path=None, data=None):
        size = _entry_size(len(name), filesize)
        self._before(name, size)
        nlink = 2 if stat.S_ISDIR(mode) else 1
        self.cur.append(
            (name, mode, uid, gid, nlink, mtime, len(self.cur) + 1, rmaj, rmin, filesize, path, data)
        )
        self.size += size
        self.entries += 1
        if size > self.chunk_size:
            self._cut()

    def add_group(self, members: list[tuple]) -> None:
        """Members (name, mode, uid, gid, mtime, rmaj, rmin, filesize, path) of one inode."""
        if len(members) == 1:
            self.add(*members[0])
            return
        size = sum(_entry_size(len(m[0]), 0) for m in members) + ((members[-1][7] + 3) & ~3)
        self._before(members[0][0], size)
        ino, nlink, last = len(self.cur) + 1, len(members), len(members) - 1
        for i, (name, mode, uid, gid, mtime, rmaj, rmin, filesize, path) in enumerate(members):
            if i != last:
                filesize, path = 0, None
            self.cur.append((name, mode, uid, gid, nlink, mtime, ino, rmaj, rmin, filesize, path, None))
        self.size += size
        self.entries += nlink
        if size > self.chunk_size:
            self._cut()

    def take(self) -> list[tuple[list[tuple], int]]:
        ready, self.ready = self.ready, []
        return ready

    def finish(self) -> list[tuple[list[tuple], int]]:
        self._cut()
        return self.take()


def _listdir(path: bytes) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        entries = list(it)
    entries.sort(key=lambda e: e.name)
    return entries


def _plan_tree(
    root: bytes,
    planner: _Planner,
    symlink_over: dict[bytes, bytes],
    replace_files: dict[bytes, bytes],
    skip: Callable[[str], bool] | None,
) -> Iterator[list[tuple[list[tuple], int]]]:
    """Walk ``root`` and feed the planner; yields the chunks it completes as it goes."""
    add = planner.add
    special = symlink_over or replace_files
    groups: dict[tuple[int, int], list[tuple]] = {}
    dirs: set[bytes] = {b""}
    done: set[bytes] = set()  # symlink_over / replace_files keys already packed
    stopped: set[bytes] = set()  # relpaths whose subtree is left out (skip or replaced)
    st = os.stat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{os.fsdecode(root)}: the root tree is not a directory")
    add(b".", st.st_mode, st.st_uid, st.st_gid, _mtime(st))

    stack = [(b"", iter(_listdir(root)))]
    while stack:
        prefix, it = stack[-1]
        entry = next(it, None)
        if entry is None:
            stack.pop()
            if planner.ready:
                yield planner.take()
            continue
        rel = prefix + entry.name
        if special and (rel in symlink_over or rel in replace_files):
            done.add(rel)
            stopped.add(rel)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                st = None
            _add_special(planner, rel, st, symlink_over, replace_files)
            continue
        if skip is not None and skip(os.fsdecode(rel)):
            stopped.add(rel)
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # vanished between listing and lstat: as if never there
        mode = st.st_mode
        if stat.S_ISREG(mode):
            size = st.st_size
            if size > MAX_NEWC_FILESIZE:
                raise ImageError(
                    f"{os.fsdecode(rel)}: {size} bytes is too large for cpio newc "
                    f"(the limit is {MAX_NEWC_FILESIZE} bytes)"
                )
            if st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append(
                    (rel, mode, st.st_uid, st.st_gid, _mtime(st), 0, 0, size, entry.path)
                )
            else:
                add(rel, mode, st.st_uid, st.st_gid, _mtime(st), 0, 0, size, entry.path)
        elif stat.S_ISDIR(mode):
            add(rel, mode, st.st_uid, st.st_gid, _mtime(st))
            dirs.add(rel)
            try:
                listing = _listdir(entry.path)
            except OSError as exc:
                raise ImageError(f"{os.fsdecode(rel)}: cannot list directory: {exc.strerror}") from None
            stack.append((rel + b"/", iter(listing)))
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(entry.path)
            except OSError as exc:
                raise ImageError(f"{os.fsdecode(rel)}: cannot read symlink: {exc.strerror}") from None
            if len(target) > MAX_SYMLINK_TARGET:
                raise ImageError(f"{os.fsdecode(rel)}: symlink target longer than {MAX_SYMLINK_TARGET} bytes")
            add(rel, mode, st.st_uid, st.st_gid, _mtime(st), 0, 0, len(target), None, target)
        else:  # character/block devices, fifos, sockets
            rmaj = rmin = 0
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                rmaj, rmin = os.major(st.st_rdev), os.minor(st.st_rdev)
            member = (rel, mode, st.st_uid, st.st_gid, _mtime(st), rmaj, rmin, 0, None)
            if st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append(member)
            else:
                add(*member)
        if planner.ready:
            yield planner.take()

    # symlink_over / replace_files entries the walk did not meet: create them, with
    # any missing parent directories, unless they lie below something left out.
    for rel in sorted((set(symlink_over) | set(replace_files)) - done):
        parts = rel.split(b"/")
        ancestors = [b"/".join(parts[:i]) for i in range(1, len(parts))]
        if any(a in stopped for a in ancestors):
            continue
        if skip is not None and any(skip(os.fsdecode(a)) for a in [*ancestors, rel]):
            continue
        for a in ancestors:
            if a in dirs:
                continue
            try:
                ast = os.lstat(os.path.join(root, a))
            except FileNotFoundError:
                ast = None
            if ast is not None:
                what = (
                    "it is not a directory in the tree"
                    if not stat.S_ISDIR(ast.st_mode)
                    else "it was left out"
                )
                raise ImageError(
                    f"{os.fsdecode(rel)}: parent {os.fsdecode(a)} is not a packed directory ({what})"
                )
            add(a, _DIR_MODE, 0, 0, 0)
            dirs.add(a)
        _add_special(planner, rel, None, symlink_over, replace_files)
        if planner.ready:
            yield planner.take()

    for members in groups.values():
        planner.add_group(members)
        if planner.ready:
            yield planner.take()
    yield planner.finish()


def _add_special(planner: _Planner, rel: bytes, st, symlink_over, replace_files) -> None:
    mtime = _mtime(st) if st is not None else 0
    if rel in symlink_over:
        target = symlink_over[rel]
        planner.add(rel, _S_IFLNK_777, 0, 0, mtime, 0, 0, len(target), None, target)
        return
    data = replace_files[rel]
    if len(data) > MAX_NEWC_FILESIZE:
        raise ImageError(f"{os.fsdecode(rel)}: replacement of {len(data)} bytes is too large for cpio newc")
    if st is not None and stat.S_ISREG(st.st_mode):
        mode, uid, gid = stat.S_IFREG | stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    else:
        mode, uid, gid = stat.S_IFREG | 0o644, 0, 0
    planner.add(rel, mode, uid, gid, mtime, 0, 0, len(data), None, data)


_tls = threading.local()


def _params(level: int, threads: int = 0) -> zstandard.ZstdCompressionParameters:
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
        cctx = cache[level] = zstandard.ZstdCompressor(compression_params=_params(level))
    return cctx


def _build_frame(entries: list[tuple], level: int) -> tuple[int, bytes, str]:
    """Worker: one chunk's archive (native, into this thread's reused buffer, so no fresh
    pages are faulted in per chunk), compressed as one frame, hashed."""
    writer = cpiopack.ChunkWriter(entries)
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


def _stream_frame(entries: list[tuple], level: int, threads: int, out: BinaryIO) -> tuple[int, int, str]:
    """A chunk too large to hold twice in memory: built and compressed a piece at a time
    (zstd's workers share the frame), written to ``out`` as it comes."""
    writer = cpiopack.ChunkWriter(entries)
    params = _params(level, threads=max(threads, 1))
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


def _pack_error(exc: BaseException) -> ImageError:
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return ImageError(f"cannot pack: {exc.strerror}{where}")
    return ImageError(f"cannot pack: {exc}")


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
    if not isinstance(level, int) or not -7 <= level <= 22 or level == 0:
        raise ValueError(f"zstd level {level!r} is not in -7..-1 or 1..22")
    if not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads {threads!r} must be 0 (all cores) or more")
    if not isinstance(chunk_size, int) or chunk_size < 1024:
        raise ValueError(f"chunk_size {chunk_size!r} must be at least 1024")
    nthreads = threads or len(os.sched_getaffinity(0)) or 1
    over = {_norm_rel(k, "symlink_over"): os.fsencode(v) for k, v in (symlink_over or {}).items()}
    for rel, target in over.items():
        if not target or b"\0" in target or len(target) > MAX_SYMLINK_TARGET:
            raise ImageError(f"symlink_over: {os.fsdecode(rel)}: bad symlink target {target!r}")
    replace = {_norm_rel(k, "replace_files"): bytes(v) for k, v in (replace_files or {}).items()}
    both = set(over) & set(replace)
    if both:
        raise ImageError(f"{os.fsdecode(min(both))}: both in symlink_over and replace_files")

    planner = _Planner(chunk_size)
    stream_over = max(4 * chunk_size, STREAM_OVER)
    max_inflight = 2 * nthreads
    chunks: list[Chunk] = []
    pos = 0
    inflight: deque[Future | list[tuple]] = deque()

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
            record(*_stream_frame(head, level, nthreads, out))

    def head_done() -> bool:
        return bool(inflight) and isinstance(inflight[0], Future) and inflight[0].done()

    pool = ThreadPoolExecutor(max_workers=nthreads, thread_name_prefix="perceus-pack")
    try:
        for planned in _plan_tree(os.fsencode(root), planner, over, replace, skip):
            for entries, usize in planned:
                # A streamed chunk waits in line as a plain list; the chunks after it are
                # already being built by the pool while this thread streams it.
                inflight.append(entries if usize > stream_over else pool.submit(_build_frame, entries, level))
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
            raise ImageError(f"build_archive: {key}: bad symlink target {_short(data)}")
        return _S_IFLNK_777, data
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
    have = {_norm_rel(d, "build_archive existing directory") for d in existing_dirs}
    archive = bytearray()
    made: set[bytes] = set()  # directories
    written: set[bytes] = set()  # files and symlinks
    ino = 0
    for key in sorted(files, key=lambda k: _norm_rel(k, "build_archive")):
        rel = _norm_rel(key, "build_archive")
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
                cpio.write_entry(archive, parent, mode=_DIR_MODE, ino=ino, nlink=2)
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
            cpio.write_entry(archive, rel, mode=cpio_mode, ino=ino, nlink=nlink, data=data)
        except cpio.CpioError as exc:
            raise ImageError(f"build_archive: {exc}") from None
    cpio.write_trailer(archive)
    return zstandard.ZstdCompressor(compression_params=_params(level)).compress(bytes(archive))


def archive_directories(src: BinaryIO, chunks: Sequence[Chunk], *, base: int = 0) -> frozenset[str]:
    """The directories an image holds (relative paths, "." excluded), from its cpio headers.

    Each frame is decompressed as a stream and file data skipped, so memory stays at one
    read piece; sha256s are not checked (the image is the master's own)."""
    found: set[str] = set()
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    for i, c in enumerate(_check_table(chunks)):
        src.seek(base + c.offset)
        reader = dctx.stream_reader(_Limited(src, c.csize), read_across_frames=False, closefd=False)
        try:
            while True:
                head = _read_full(reader, cpio.HEADER_SIZE)
                if len(head) != cpio.HEADER_SIZE:
                    raise ImageError(f"chunk {i}: truncated cpio archive")
                h = cpio.parse_header(head)
                namesize = h["namesize"]
                raw = _read_full(reader, namesize + cpio.pad4(cpio.HEADER_SIZE + namesize))
                name = raw[: namesize - 1]
                if name == cpio.TRAILER:
                    break
                _skip(reader, h["filesize"] + cpio.pad4(h["filesize"]))
                if stat.S_ISDIR(h["mode"]):
                    parts = [p for p in os.fsdecode(name).split("/") if p and p != "."]
                    if parts:
                        found.add("/".join(parts))
        except (cpio.CpioError, zstandard.ZstdError) as exc:
            raise ImageError(f"chunk {i}: {exc}") from None
    return frozenset(found)


class _Limited:
    """A read-only view of the next ``size`` bytes of ``src``."""

    def __init__(self, src: BinaryIO, size: int) -> None:
        self.src, self.left = src, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.src.read(n) if n else b""
        self.left -= len(data)
        return data


def _read_full(reader, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = reader.read(n - len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def _skip(reader, n: int) -> None:
    while n > 0:
        piece = reader.read(min(n, READ_PIECE))
        if not piece:
            raise ImageError("truncated cpio archive")
        n -= len(piece)


# --------------------------------------------------------------------------- reading


def _check_table(chunks: Sequence[Chunk]) -> list[Chunk]:
    table = list(chunks)
    for i, c in enumerate(table):
        if not isinstance(c, Chunk):
            raise ImageError(f"chunk {i}: not a Chunk but {type(c).__name__}")
    return table


def _read_frame_into(src: BinaryIO, c: Chunk, i: int, base: int, sink) -> None:
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


def _check_header(head: bytes, c: Chunk, i: int) -> None:
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
    for i, c in enumerate(_check_table(chunks)):
        head = bytearray()

        def keep_head(piece, head=head):
            if len(head) < 18:
                head.extend(piece[: 18 - len(head)])

        _read_frame_into(src, c, i, base, keep_head)
        _check_header(bytes(head), c, i)


def iter_frames(src: BinaryIO, chunks: Sequence[Chunk], *, base: int = 0, start: int = 0) -> Iterator[bytes]:
    """The verified compressed frames from chunk index ``start`` on (to resume a transfer)."""
    table = _check_table(chunks)
    if not isinstance(start, int) or not 0 <= start <= len(table):
        raise ImageError(f"resume index {start!r} is not in 0..{len(table)}")
    for i in range(start, len(table)):
        parts: list[bytes] = []
        _read_frame_into(src, table[i], i, base, parts.append)
        frame = b"".join(parts)
        _check_header(frame[:18], table[i], i)
        yield frame


class _Bounded:
    """Reads a chunk's decompressed archive, never more than its declared size."""

    def __init__(self, reader, usize: int, i: int):
        self.reader, self.left, self.i, self.pos = reader, usize, i, 0

    def read(self, n: int) -> bytes:
        if n > self.left:
            left = self.left
            extra = self._raw(n)  # is there really more than declared?
            if len(extra) > left:
                raise ImageError(f"chunk {self.i}: decompresses beyond its declared usize (bomb?)")
            raise ImageError(
                f"chunk {self.i}: truncated archive at byte {self.pos + len(extra)} (wanted {n} more)"
            )
        data = self._raw(n)
        if len(data) != n:
            raise ImageError(
                f"chunk {self.i}: truncated archive at byte {self.pos + len(data)} (wanted {n} more)"
            )
        return data

    def _raw(self, n: int) -> bytes:
        out = bytearray()
        try:
            while len(out) < n:
                piece = self.reader.read(n - len(out))
                if not piece:
                    break
                out += piece
        except zstandard.ZstdError as exc:
            raise ImageError(f"chunk {self.i}: corrupt zstd data: {exc}") from None
        self.left -= len(out)
        self.pos += len(out)
        return bytes(out)

    def finish(self) -> None:
        """After the trailer: only zero padding may follow, up to exactly the declared size."""
        while True:
            rest = self._raw(min(READ_PIECE, self.left + 1))
            if self.left < 0:
                raise ImageError(f"chunk {self.i}: decompresses beyond its declared usize (bomb?)")
            if rest.strip(b"\0"):
                raise ImageError(f"chunk {self.i}: junk after TRAILER!!! at byte {self.pos - len(rest)}")
            if not rest:
                break
        if self.left:
            raise ImageError(
                f"chunk {self.i}: decompressed {self.pos} bytes, the table declares {self.pos + self.left}"
            )


_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_LINKABLE = (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


class _Extractor:
    """Writes entries under one destination directory fd, never following a symlink."""

    def __init__(self, dest_fd: int, allow_devices: bool, same_owner: bool):
        self.root = dest_fd
        self.allow_devices = allow_devices
        self.same_owner = same_owner
        self.cache: OrderedDict[bytes, int] = OrderedDict()
        self.dirs: dict[tuple[bytes, ...], tuple[int, int, int, int]] = {}
        self.count = 0

    def close(self) -> None:
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()

    # ---- paths
    def _dir_fd(self, parts: Sequence[bytes], where: str, create: bool = True) -> int:
        """An fd of the directory dest/parts, walked with O_NOFOLLOW (missing ones made 0755)."""
        if not parts:
            return self.root
        key = b"/".join(parts)
        fd = self.cache.get(key)
        if fd is not None:
            self.cache.move_to_end(key)
            return fd
        parent = self._dir_fd(parts[:-1], where, create)
        name = parts[-1]
        try:
            fd = os.open(name, _O_DIR, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, _O_DIR, dir_fd=parent)
        except (NotADirectoryError, OSError) as exc:
            st = os.lstat(name, dir_fd=parent)
            if stat.S_ISLNK(st.st_mode):
                raise ImageError(
                    f"{where}: {os.fsdecode(key)} is a symlink: refusing to write through it"
                ) from None
            raise ImageError(f"{where}: {os.fsdecode(key)} is not a directory ({exc.strerror})") from None
        self.cache[key] = fd
        return fd

    def _trim(self) -> None:
        """Close the least recently used directory fds; only between entries, so an fd an
        entry is using is never closed under it."""
        while len(self.cache) > DIR_FDS:
            os.close(self.cache.popitem(last=False)[1])

    def _drop(self, key: bytes) -> None:
        """Forget the fds of a removed directory and of everything below it."""
        below = key + b"/"
        for k in [k for k in self.cache if k == key or k.startswith(below)]:
            os.close(self.cache.pop(k))

    def _clear(self, parent: int, parts: tuple[bytes, ...], where: str) -> None:
        """Remove what is at parent/leaf (never following it) so a new entry can be made."""
        leaf = parts[-1]
        try:
            st = os.lstat(leaf, dir_fd=parent)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(leaf, dir_fd=parent)
            except OSError as exc:
                raise ImageError(f"{where}: would replace a non-empty directory ({exc.strerror})") from None
            self._drop(b"/".join(parts))
        else:
            os.unlink(leaf, dir_fd=parent)

    # ---- entries
    def archive(self, src: _Bounded, i: int) -> None:
        links: dict[tuple[int, int, int, int], tuple[bytes, ...]] = {}
        while True:
            at = src.pos
            if not src.left:
                if src._raw(1):
                    raise ImageError(f"chunk {i}: decompresses beyond its declared usize (bomb?)")
                raise ImageError(f"chunk {i}: archive ends without TRAILER!!!")
            try:
                h = cpio.parse_header(src.read(cpio.HEADER_SIZE))
            except cpio.CpioError as exc:
                raise ImageError(f"chunk {i} at byte {at}: {exc}") from None
            namesize = h["namesize"]
            raw = src.read(namesize + cpio.pad4(cpio.HEADER_SIZE + namesize))
            name = raw[: namesize - 1]
            shown = name.decode(errors="replace")
            if raw[namesize - 1] != 0 or b"\0" in name:
                raise ImageError(f"chunk {i} at byte {at}: entry name {shown!r} is not NUL-terminated")
            if name == cpio.TRAILER:
                return
            where = f"chunk {i}: {shown}"
            size, mode = h["filesize"], h["mode"]
            if size + cpio.pad4(size) > src.left:
                raise ImageError(f"{where}: declared size {size} goes beyond the chunk (truncated or bomb)")
            parts = self._parts(name, where)
            self._trim()
            self._entry(src, parts, h, mode, size, where, links)
            self.count += 1

    @staticmethod
    def _parts(name: bytes, where: str) -> tuple[bytes, ...]:
        if not name:
            raise ImageError(f"{where}: empty entry name")
        if name.startswith(b"/"):
            raise ImageError(f"{where}: absolute path in archive")
        parts = tuple(p for p in name.split(b"/") if p and p != b".")
        if b".." in parts:
            raise ImageError(f"{where}: '..' in path")
        return parts

    def _entry(self, src, parts, h, mode, size, where, links) -> None:
        kind = stat.S_IFMT(mode)
        if kind in (stat.S_IFCHR, stat.S_IFBLK) and not self.allow_devices:
            raise ImageError(f"{where}: device node not allowed")
        if kind not in (stat.S_IFDIR, stat.S_IFLNK, *_LINKABLE):
            raise ImageError(f"{where}: unknown file type {oct(kind)}")
        if kind != stat.S_IFREG and kind != stat.S_IFLNK and size:
            raise ImageError(
                f"{where}: a {'directory' if kind == stat.S_IFDIR else 'special file'} with data"
            )
        if not parts:
            if kind != stat.S_IFDIR:
                raise ImageError(f"{where}: the root entry is not a directory")
            self.dirs[()] = (mode, h["uid"], h["gid"], h["mtime"])
            return
        parent = self._dir_fd(parts[:-1], where)
        leaf = parts[-1]
        if kind == stat.S_IFDIR:
            try:
                os.mkdir(leaf, 0o700, dir_fd=parent)
            except FileExistsError:
                st = os.lstat(leaf, dir_fd=parent)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(leaf, dir_fd=parent)
                    os.mkdir(leaf, 0o700, dir_fd=parent)
            self.dirs[parts] = (mode, h["uid"], h["gid"], h["mtime"])
            return
        self.dirs.pop(parts, None)
        ns = h["mtime"] * 1_000_000_000
        if kind == stat.S_IFLNK:
            if size > MAX_SYMLINK_TARGET:
                raise ImageError(f"{where}: symlink target longer than {MAX_SYMLINK_TARGET} bytes")
            target = src.read(size + cpio.pad4(size))[:size]
            if not target or b"\0" in target:
                raise ImageError(f"{where}: bad symlink target {target!r}")
            self._create(lambda: os.symlink(target, leaf, dir_fd=parent), parent, parts, where)
            if self.same_owner:
                os.chown(leaf, h["uid"], h["gid"], dir_fd=parent, follow_symlinks=False)
            os.utime(leaf, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
            return

        key = (h["ino"], h["devmajor"], h["devminor"], kind)
        first = links.get(key) if h["nlink"] > 1 else None
        if first is not None:
            try:
                src_parent = self._dir_fd(first[:-1], where, create=False)

                def link():
                    os.link(first[-1], leaf, src_dir_fd=src_parent, dst_dir_fd=parent, follow_symlinks=False)

                self._create(link, parent, parts, where)
            except (OSError, ImageError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else str(exc)
                shown = b"/".join(first).decode(errors="replace")
                raise ImageError(f"{where}: hard link to {shown} failed: {why}") from None
        elif h["nlink"] > 1:
            links[key] = parts

        if kind == stat.S_IFREG:
            if first is None:
                fd = self._create(lambda: os.open(leaf, _O_NEW, 0o600, dir_fd=parent), parent, parts, where)
            else:  # the shared inode: its data comes with whichever member carries it
                trunc = os.O_TRUNC if size else 0
                fd = os.open(leaf, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | trunc, dir_fd=parent)
            try:
                if first is not None and not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ImageError(f"{where}: hard link target is not a regular file")
                left = size
                while left:
                    data = src.read(min(left, READ_PIECE))
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    left -= len(data)
                src.read(cpio.pad4(size))
                self._meta_fd(fd, mode, h)
            finally:
                os.close(fd)
            return
        # devices, fifos, sockets
        if first is None:
            device = os.makedev(h["rdevmajor"], h["rdevminor"])
            self._create(lambda: os.mknod(leaf, kind | 0o600, device, dir_fd=parent), parent, parts, where)
        if self.same_owner:
            os.chown(leaf, h["uid"], h["gid"], dir_fd=parent, follow_symlinks=False)
        os.chmod(leaf, self._perm(mode), dir_fd=parent)  # made just now, in a dir walked with O_NOFOLLOW
        os.utime(leaf, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)

    def _create(self, make, parent: int, parts: tuple[bytes, ...], where: str):
        """``make()``; if something is in the way, remove it (never following it) and retry once."""
        try:
            return make()
        except FileExistsError:
            self._clear(parent, parts, where)
            return make()

    def _perm(self, mode: int) -> int:
        return stat.S_IMODE(mode) if self.same_owner else stat.S_IMODE(mode) & 0o1777

    def _meta_fd(self, fd: int, mode: int, h: dict) -> None:
        if self.same_owner:
            os.fchown(fd, h["uid"], h["gid"])
        os.fchmod(fd, self._perm(mode))
        ns = h["mtime"] * 1_000_000_000
        os.utime(fd, ns=(ns, ns))

    def finish(self) -> None:
        """Directories' owners, modes and mtimes, deepest first, once all they hold is written."""
        self.close()
        for parts in sorted(self.dirs, key=len, reverse=True):
            mode, uid, gid, mtime = self.dirs[parts]
            h = {"uid": uid, "gid": gid, "mtime": mtime}
            try:
                fd = self._open_dir_nofollow(parts)
            except OSError:
                continue  # replaced by a later entry: its metadata went with it
            try:
                self._meta_fd(fd, mode, h)
            finally:
                if fd != self.root:
                    os.close(fd)

    def _open_dir_nofollow(self, parts: tuple[bytes, ...]) -> int:
        fd = self.root
        for name in parts:
            nfd = os.open(name, _O_DIR, dir_fd=fd)
            if fd != self.root:
                os.close(fd)
            fd = nfd
        return fd


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
    table = _check_table(chunks)
    total = 0
    for i, c in enumerate(table):
        if c.usize > max_usize:
            raise ImageError(f"chunk {i}: declared usize {c.usize} exceeds the limit {max_usize}")
        total += c.usize
    if total > max_usize:
        raise ImageError(f"image declares {total} uncompressed bytes, more than the limit {max_usize}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    x = _Extractor(dest_fd, allow_devices, same_owner)
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    try:
        for i, c in enumerate(table):
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
                _read_frame_into(src, c, i, base, spool.write)
                spool.seek(0)
                _check_header(spool.read(18), c, i)
                spool.seek(0)
                reader = dctx.stream_reader(
                    spool, read_size=READ_PIECE, read_across_frames=True, closefd=False
                )
                bounded = _Bounded(reader, c.usize, i)
                try:
                    x.archive(bounded, i)
                    bounded.finish()
                except OSError as exc:
                    raise ImageError(f"chunk {i}: cannot write: {exc}") from None
            if progress is not None:
                progress(c.usize)
        x.finish()
    finally:
        x.close()
        os.close(dest_fd)
    return x.count
