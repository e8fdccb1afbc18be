"""Unpacking newc archives under a directory, trusting nothing in them.

Names are normalised and ``..`` or absolute names refused; every path is resolved from
the destination one directory at a time with ``O_NOFOLLOW``, so no symlink (from the
archive or already there) is followed, unless ``follow_inside`` asks to follow those
whose relative target stays inside the destination (as the kernel follows them when it
unpacks an overlay onto a root that has ``lib -> usr/lib``). Whatever is in the way of
an entry is removed, never written through; a non-empty directory is never replaced.
Owners are restored when asked; directories get their modes and mtimes last, deepest
first, once all they hold is written. Nothing is ever written outside the destination.

:class:`Unpacker` unpacks one or more archives (the chunks of an image) into one
destination; :func:`extract` unpacks one archive read from a stream.
"""

import enum
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from perceus.common.newc import MAX_SYMLINK_TARGET, PIECE, Member, NewcError, Reader, shown

__all__ = ["Specials", "Unpacker", "extract"]

DIR_FDS = 64  # directory fds kept open (least recently used go)
MAX_HOPS = 40  # symlinks followed for one path, as the kernel's path walk
NAME_MAX = 255  # bytes of one path component

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DEVICES = (stat.S_IFCHR, stat.S_IFBLK)
_SPECIALS = (*_DEVICES, stat.S_IFIFO, stat.S_IFSOCK)
_KINDS = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, *_SPECIALS)

Parts = tuple[bytes, ...]


class Specials(enum.Enum):
    """What becomes of device nodes, FIFOs and sockets."""

    CREATE = "create"  # all made
    NO_DEVICES = "no-devices"  # a device node is refused; FIFOs and sockets are made
    SKIP = "skip"  # none made (an unprivileged unpack): they are passed over


class Unpacker:
    """Writes archive members under one destination directory fd.

    Call :meth:`archive` for each archive (hard links join only within one), then
    :meth:`finish`; :meth:`close` in any case. ``keep(os.lstat(path))`` True leaves what is
    at an entry's path as it is. ``entries`` counts the members read, ``written`` those
    made (neither the root nor what was kept or passed over).
    """

    def __init__(
        self,
        dest_fd: int,
        *,
        same_owner: bool = True,
        specials: Specials = Specials.CREATE,
        keep: Callable[[os.stat_result], bool] | None = None,
        follow_inside: bool = False,
    ) -> None:
        self.root = dest_fd
        self.same_owner = same_owner
        self.specials = specials
        self.keep = keep
        self.follow_inside = follow_inside
        self.cache: OrderedDict[Parts, tuple[int, Parts]] = OrderedDict()  # path -> (fd, symlink-free path)
        self.dirs: dict[Parts, tuple[int, int, int, int]] = {}  # mode, uid, gid, mtime, applied last
        self.entries = 0
        self.written = 0

    def close(self) -> None:
        for fd, _ in self.cache.values():
            os.close(fd)
        self.cache.clear()

    # ---- paths
    def _dir(self, parts: Parts, where: str, create: bool = True, hops: int = 0) -> tuple[int, Parts]:
        """An fd of the directory dest/parts and its symlink-free path (missing ones made 0755)."""
        if not parts:
            return self.root, ()
        cached = self.cache.get(parts)
        if cached is not None:
            self.cache.move_to_end(parts)
            return cached
        parent, real = self._dir(parts[:-1], where, create, hops)
        name = parts[-1]
        try:
            fd = os.open(name, _O_DIR, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, _O_DIR, dir_fd=parent)
        except OSError as exc:
            key = shown(b"/".join(parts))
            if not stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode):
                raise NewcError(f"{key} is not a directory ({exc.strerror})", where) from None
            if not self.follow_inside:
                raise NewcError(f"{key} is a symlink: refusing to write through it", where) from None
            return self._follow(parent, real, name, key, where, create, hops)
        self.cache[parts] = (fd, (*real, name))
        return fd, (*real, name)

    def _follow(
        self, parent: int, real: Parts, name: bytes, key: str, where: str, create: bool, hops: int
    ) -> tuple[int, Parts]:
        """The directory the symlink ``real/name`` points at, if it stays inside the destination."""
        if hops >= MAX_HOPS:
            raise NewcError(f"{key}: too many levels of symbolic links", where)
        target = os.readlink(name, dir_fd=parent)
        if target.startswith(b"/"):
            raise NewcError(f"{key} is a symlink leaving the destination ({shown(target)})", where)
        resolved = list(real)
        for part in target.split(b"/"):
            if part == b"..":
                if not resolved:
                    raise NewcError(f"{key} is a symlink leaving the destination ({shown(target)})", where)
                resolved.pop()
            elif part not in (b"", b"."):
                resolved.append(part)
        return self._dir(tuple(resolved), where, create, hops + 1)

    def _trim(self) -> None:
        """Close the least recently used directory fds; only between entries, so an fd an
        entry is using is never closed under it."""
        while len(self.cache) > DIR_FDS:
            os.close(self.cache.popitem(last=False)[1][0])

    def _drop(self, real: Parts) -> None:
        """Forget the fds of a removed directory and of everything below it."""
        for key in [k for k, (_, r) in self.cache.items() if r[: len(real)] == real]:
            os.close(self.cache.pop(key)[0])

    def _clear(self, parent: int, path: Parts, where: str) -> None:
        """Remove what is at parent/leaf (never following it) so a new entry can be made."""
        leaf = path[-1]
        try:
            st = os.lstat(leaf, dir_fd=parent)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(leaf, dir_fd=parent)
            except OSError as exc:
                raise NewcError(f"would replace a non-empty directory ({exc.strerror})", where) from None
            self._drop(path)
        else:
            os.unlink(leaf, dir_fd=parent)

    def _create(self, make: Callable, parent: int, path: Parts, where: str):
        """``make()``; if something is in the way, remove it (never following it) and retry once."""
        try:
            return make()
        except FileExistsError:
            self._clear(parent, path, where)
            return make()

    # ---- members
    def archive(self, reader: Reader) -> None:
        """Every member of one archive, up to its trailer."""
        links: dict[tuple[int, int, int, int], Parts] = {}
        for member in reader:
            self._trim()
            if self._member(reader, member, links):
                self.written += 1
            self.entries += 1

    @staticmethod
    def _parts(name: bytes, where: str) -> Parts:
        if not name:
            raise NewcError("empty entry name", where)
        if name.startswith(b"/"):
            raise NewcError("absolute path in archive", where)
        parts = tuple(p for p in name.split(b"/") if p and p != b".")
        if b".." in parts:
            raise NewcError("'..' in path", where)
        if any(len(p) > NAME_MAX for p in parts):
            raise NewcError(f"a path component longer than {NAME_MAX} bytes", where)
        return parts

    def _member(self, reader: Reader, member: Member, links: dict) -> bool:
        """Make one member; False when nothing was made (the root, kept, passed over)."""
        h, where = member.header, member.shown
        kind, size = stat.S_IFMT(h.mode), h.filesize
        parts = self._parts(member.name, where)
        if kind in _DEVICES and self.specials is Specials.NO_DEVICES:
            raise NewcError("device node not allowed", where)
        if kind not in _KINDS:
            raise NewcError(f"unknown file type {oct(kind)}", where)
        if kind not in (stat.S_IFREG, stat.S_IFLNK) and size:
            raise NewcError(f"a {'directory' if kind == stat.S_IFDIR else 'special file'} with data", where)
        if not parts:
            if kind != stat.S_IFDIR:
                raise NewcError("the root entry is not a directory", where)
            self.dirs[()] = (h.mode, h.uid, h.gid, h.mtime)
            return False
        if kind in _SPECIALS and self.specials is Specials.SKIP:
            return False
        target = b""
        if kind == stat.S_IFLNK:
            if size > MAX_SYMLINK_TARGET:
                raise NewcError(f"symlink target longer than {MAX_SYMLINK_TARGET} bytes", where)
            target = reader.read(size)
            if not target or b"\0" in target:
                raise NewcError(f"bad symlink target {target!r}", where)
        parent, real = self._dir(parts[:-1], where)
        path, leaf = (*real, parts[-1]), parts[-1]
        if self.keep is not None:
            try:
                if self.keep(os.lstat(leaf, dir_fd=parent)):
                    return False
            except FileNotFoundError:
                pass
        if kind == stat.S_IFDIR:
            self._directory(parent, path, h)
        elif kind == stat.S_IFLNK:
            self.dirs.pop(path, None)
            self._create(lambda: os.symlink(target, leaf, dir_fd=parent), parent, path, where)
            if self.same_owner:
                os.chown(leaf, h.uid, h.gid, dir_fd=parent, follow_symlinks=False)
            ns = h.mtime * 1_000_000_000
            os.utime(leaf, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
        else:
            self.dirs.pop(path, None)
            self._linkable(reader, parent, path, h, where, links)
        return True

    def _directory(self, parent: int, path: Parts, h) -> None:
        leaf = path[-1]
        try:
            os.mkdir(leaf, 0o700, dir_fd=parent)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(leaf, dir_fd=parent).st_mode):
                os.unlink(leaf, dir_fd=parent)
                os.mkdir(leaf, 0o700, dir_fd=parent)
        self.dirs[path] = (h.mode, h.uid, h.gid, h.mtime)

    def _linkable(self, reader: Reader, parent: int, path: Parts, h, where: str, links: dict) -> None:
        """A regular file or a special file, possibly a member of a hard-link group."""
        kind, leaf = stat.S_IFMT(h.mode), path[-1]
        key = (h.ino, h.devmajor, h.devminor, kind)
        first = links.get(key) if h.nlink > 1 else None
        if first is not None:
            try:
                src_parent, _ = self._dir(first[:-1], where, create=False)

                def link():
                    os.link(first[-1], leaf, src_dir_fd=src_parent, dst_dir_fd=parent, follow_symlinks=False)

                self._create(link, parent, path, where)
            except (OSError, NewcError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise NewcError(f"hard link to {shown(b'/'.join(first))} failed: {why}", where) from None
        elif h.nlink > 1:
            links[key] = path

        if kind == stat.S_IFREG:
            self._regular(reader, parent, path, h, where, linked=first is not None)
            return
        if first is None:
            device = os.makedev(h.rdevmajor, h.rdevminor)
            self._create(lambda: os.mknod(leaf, kind | 0o600, device, dir_fd=parent), parent, path, where)
        if self.same_owner:
            os.chown(leaf, h.uid, h.gid, dir_fd=parent, follow_symlinks=False)
        os.chmod(leaf, self._perm(h.mode), dir_fd=parent)  # made just now, in a dir walked with O_NOFOLLOW
        ns = h.mtime * 1_000_000_000
        os.utime(leaf, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)

    def _regular(self, reader: Reader, parent: int, path: Parts, h, where: str, linked: bool) -> None:
        leaf = path[-1]
        if not linked:
            fd = self._create(lambda: os.open(leaf, _O_NEW, 0o600, dir_fd=parent), parent, path, where)
        else:  # the shared inode: its data comes with whichever member carries it
            trunc = os.O_TRUNC if h.filesize else 0
            fd = os.open(leaf, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | trunc, dir_fd=parent)
        try:
            if linked and not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NewcError("hard link target is not a regular file", where)
            while data := reader.read(PIECE):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            self._meta_fd(fd, h.mode, h.uid, h.gid, h.mtime)
        finally:
            os.close(fd)

    def _perm(self, mode: int) -> int:
        return stat.S_IMODE(mode) if self.same_owner else stat.S_IMODE(mode) & 0o1777

    def _meta_fd(self, fd: int, mode: int, uid: int, gid: int, mtime: int) -> None:
        if self.same_owner:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, self._perm(mode))
        ns = mtime * 1_000_000_000
        os.utime(fd, ns=(ns, ns))

    def finish(self) -> None:
        """Directories' owners, modes and mtimes, deepest first, once all they hold is written."""
        self.close()
        for path in sorted(self.dirs, key=len, reverse=True):
            try:
                fd = self._open_dir_nofollow(path)
            except OSError:
                continue  # replaced by a later entry: its metadata went with it
            try:
                self._meta_fd(fd, *self.dirs[path])
            finally:
                if fd != self.root:
                    os.close(fd)

    def _open_dir_nofollow(self, path: Parts) -> int:
        fd = self.root
        for name in path:
            nfd = os.open(name, _O_DIR, dir_fd=fd)
            if fd != self.root:
                os.close(fd)
            fd = nfd
        return fd


def extract(
    src: BinaryIO,
    dest: os.PathLike | str,
    *,
    keep: Callable[[os.stat_result], bool] | None = None,
    follow_inside: bool = False,
    specials: Specials = Specials.CREATE,
    same_owner: bool | None = None,
) -> int:
    """Unpack one newc archive from ``src`` under the directory ``dest`` (made if missing); returns the
    members made.

    Reads up to the trailer, then checks that only zero padding follows. Owners are restored
    if ``same_owner`` (by default: when running as root; else setuid/setgid bits are
    dropped). Raises :class:`NewcError` for a truncated, corrupt or unsafe archive (what
    was unpacked before stays) and OSError for local errors.
    """
    Path(dest).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(dest), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    unpacker = Unpacker(
        fd,
        same_owner=os.geteuid() == 0 if same_owner is None else same_owner,
        specials=specials,
        keep=keep,
        follow_inside=follow_inside,
    )
    try:
        reader = Reader(src)
        unpacker.archive(reader)
        reader.finish()
        unpacker.finish()
    finally:
        unpacker.close()
        os.close(fd)
    return unpacker.written
