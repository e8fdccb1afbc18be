"""Walking a root tree and cutting it into chunks: what goes in which archive, in what order.

Inside a chunk, entries follow a sorted walk of the tree, each directory before its
contents; the root itself is the entry ``.``. Hard-link groups are gathered during the
walk and written after it, each group in one chunk with the data on its last member
(earlier members have size 0, the same ``ino`` and ``nlink``), as GNU cpio and the kernel
expect. Device fields ``devmajor/devminor`` are 0, directories have ``nlink`` 2, mtimes
are whole seconds clamped to newc's 32 bits. Inode numbers restart in every chunk, so an
unchanged run of files yields byte-identical chunks.
"""

import os
import stat
import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

from perceus.common.newc import entry_size
from perceus.imagefmt.image.entries import (
    DIR_MODE,
    MAX_NEWC_FILESIZE,
    MAX_SYMLINK_TARGET,
    SYMLINK_MODE,
    ArchiveEntry,
    TreeEntry,
    clamp_mtime,
)
from perceus.imagefmt.image.errors import ImageError

__all__ = ["PlannedChunk", "Planner", "plan_tree"]

TRAILER_SIZE = entry_size(len(b"TRAILER!!!"), 0)


class PlannedChunk(NamedTuple):
    """One chunk's entries and the size of its archive (trailer included)."""

    entries: list[ArchiveEntry]
    usize: int


class Planner:
    """Cuts the walk into chunks of numbered entries.

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
        self.cur: list[ArchiveEntry] = []
        self.size = 0
        self.ready: list[PlannedChunk] = []
        self.entries = 0

    def _cut(self) -> None:
        if self.cur:
            self.ready.append(PlannedChunk(self.cur, self.size + TRAILER_SIZE))
            self.cur, self.size = [], 0

    def _before(self, name: bytes, size: int) -> None:
        if self.cur and (
            self.size + size > self.chunk_size
            or (self.size >= self.soft and zlib.crc32(name) * self.gap < size << 32)
        ):
            self._cut()

    def add(self, e: TreeEntry) -> None:
        size = entry_size(len(e.name), e.filesize)
        self._before(e.name, size)
        nlink = 2 if stat.S_ISDIR(e.mode) else 1
        ino = len(self.cur) + 1
        self.cur.append(
            ArchiveEntry(e.name, e.mode, e.uid, e.gid, nlink, e.mtime, ino, e.rdevmajor, e.rdevminor,
                         e.filesize, e.path, e.data)
        )  # fmt: skip
        self.size += size
        self.entries += 1
        if size > self.chunk_size:
            self._cut()

    def add_group(self, members: list[TreeEntry]) -> None:
        """The members of one inode (a hard-link group): one chunk, the data on the last."""
        if len(members) == 1:
            self.add(members[0])
            return
        size = sum(entry_size(len(m.name), 0) for m in members) + ((members[-1].filesize + 3) & ~3)
        self._before(members[0].name, size)
        ino, nlink, last = len(self.cur) + 1, len(members), len(members) - 1
        for i, m in enumerate(members):
            filesize, path = (m.filesize, m.path) if i == last else (0, None)
            self.cur.append(
                ArchiveEntry(m.name, m.mode, m.uid, m.gid, nlink, m.mtime, ino, m.rdevmajor, m.rdevminor,
                             filesize, path, None)
            )  # fmt: skip
        self.size += size
        self.entries += nlink
        if size > self.chunk_size:
            self._cut()

    def take(self) -> list[PlannedChunk]:
        ready, self.ready = self.ready, []
        return ready

    def finish(self) -> list[PlannedChunk]:
        self._cut()
        return self.take()


def _listdir(path: bytes) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        entries = list(it)
    entries.sort(key=lambda e: e.name)
    return entries


def _found(rel: bytes, entry: os.DirEntry, st: os.stat_result) -> TreeEntry | None:
    """What the walk packs for one non-directory entry (None: nothing)."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        size = st.st_size
        if size > MAX_NEWC_FILESIZE:
            raise ImageError(
                f"{os.fsdecode(rel)}: {size} bytes is too large for cpio newc "
                f"(the limit is {MAX_NEWC_FILESIZE} bytes)"
            )
        return TreeEntry(rel, mode, st.st_uid, st.st_gid, clamp_mtime(st), 0, 0, size, entry.path)
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(entry.path)
        except OSError as exc:
            raise ImageError(f"{os.fsdecode(rel)}: cannot read symlink: {exc.strerror}") from None
        if len(target) > MAX_SYMLINK_TARGET:
            raise ImageError(f"{os.fsdecode(rel)}: symlink target longer than {MAX_SYMLINK_TARGET} bytes")
        return TreeEntry(rel, mode, st.st_uid, st.st_gid, clamp_mtime(st), 0, 0, len(target), None, target)
    # character/block devices, fifos, sockets
    rmaj = rmin = 0
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        rmaj, rmin = os.major(st.st_rdev), os.minor(st.st_rdev)
    return TreeEntry(rel, mode, st.st_uid, st.st_gid, clamp_mtime(st), rmaj, rmin)


def plan_tree(
    root: bytes,
    planner: Planner,
    symlink_over: dict[bytes, bytes],
    replace_files: dict[bytes, bytes],
    skip: Callable[[str], bool] | None,
) -> Iterator[list[PlannedChunk]]:
    """Walk ``root`` and feed the planner; yields the chunks it completes as it goes.

    ``symlink_over`` and ``replace_files`` (archive names, see ``pack_tree``) are packed in
    place of what the tree has there; ``skip(relpath)`` True leaves an entry and its
    subtree out."""
    add = planner.add
    special = symlink_over or replace_files
    groups: dict[tuple[int, int], list[TreeEntry]] = {}
    dirs: set[bytes] = {b""}
    done: set[bytes] = set()  # symlink_over / replace_files keys already packed
    stopped: set[bytes] = set()  # relpaths whose subtree is left out (skip or replaced)
    st = os.stat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{os.fsdecode(root)}: the root tree is not a directory")
    add(TreeEntry(b".", st.st_mode, st.st_uid, st.st_gid, clamp_mtime(st)))

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
            add(_replacement(rel, st, symlink_over, replace_files))
            continue
        if skip is not None and skip(os.fsdecode(rel)):
            stopped.add(rel)
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # vanished between listing and lstat: as if never there
        if stat.S_ISDIR(st.st_mode):
            add(TreeEntry(rel, st.st_mode, st.st_uid, st.st_gid, clamp_mtime(st)))
            dirs.add(rel)
            try:
                listing = _listdir(entry.path)
            except OSError as exc:
                raise ImageError(f"{os.fsdecode(rel)}: cannot list directory: {exc.strerror}") from None
            stack.append((rel + b"/", iter(listing)))
        else:
            found = _found(rel, entry, st)
            if st.st_nlink > 1 and not stat.S_ISLNK(st.st_mode):
                groups.setdefault((st.st_dev, st.st_ino), []).append(found)
            else:
                add(found)
        if planner.ready:
            yield planner.take()

    for rel in sorted((set(symlink_over) | set(replace_files)) - done):
        if _add_missing_parents(planner, root, rel, dirs, stopped, skip):
            add(_replacement(rel, None, symlink_over, replace_files))
        if planner.ready:
            yield planner.take()

    for members in groups.values():
        planner.add_group(members)
        if planner.ready:
            yield planner.take()
    yield planner.finish()


def _add_missing_parents(
    planner: Planner, root: bytes, rel: bytes, dirs: set[bytes], stopped: set[bytes], skip
) -> bool:
    """For a symlink_over / replace_files entry the walk did not meet: add its missing parent
    directories (0755 root:root); False if it lies below something left out."""
    parts = rel.split(b"/")
    ancestors = [b"/".join(parts[:i]) for i in range(1, len(parts))]
    if any(a in stopped for a in ancestors):
        return False
    if skip is not None and any(skip(os.fsdecode(a)) for a in [*ancestors, rel]):
        return False
    for a in ancestors:
        if a in dirs:
            continue
        try:
            ast = os.lstat(os.path.join(root, a))
        except FileNotFoundError:
            ast = None
        if ast is not None:
            what = "it is not a directory in the tree" if not stat.S_ISDIR(ast.st_mode) else "it was left out"
            raise ImageError(
                f"{os.fsdecode(rel)}: parent {os.fsdecode(a)} is not a packed directory ({what})"
            )
        planner.add(TreeEntry(a, DIR_MODE, 0, 0, 0))
        dirs.add(a)
    return True


def _replacement(rel: bytes, st: os.stat_result | None, symlink_over, replace_files) -> TreeEntry:
    """The entry packed at ``rel`` instead of what the tree has (``st``, None if nothing)."""
    mtime = clamp_mtime(st) if st is not None else 0
    if rel in symlink_over:
        target = symlink_over[rel]
        return TreeEntry(rel, SYMLINK_MODE, 0, 0, mtime, 0, 0, len(target), None, target)
    data = replace_files[rel]
    if len(data) > MAX_NEWC_FILESIZE:
        raise ImageError(f"{os.fsdecode(rel)}: replacement of {len(data)} bytes is too large for cpio newc")
    if st is not None and stat.S_ISREG(st.st_mode):
        mode, uid, gid = stat.S_IFREG | stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    else:
        mode, uid, gid = stat.S_IFREG | 0o644, 0, 0
    return TreeEntry(rel, mode, uid, gid, mtime, 0, 0, len(data), None, data)
