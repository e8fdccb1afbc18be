"""A small cpio "newc" writer and reader, stdlib only (imagefmt is not in the initramfs).

Writer: stage one appends an archive of the node-side DESTDIR staging directory,
uncompressed, to the initrd after the image and the overlay, so files a nodescript leaves
in DESTDIR land in the runtime root. Owners are root:root, modes and mtimes kept.

Reader: the simulated node unpacks its overlay into ``DIR/<MAC>/root`` with :func:`extract`
(regular files, directories, symlinks and hard links; never anything outside that root).
"""

import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["MAX_LINK_SIZE", "MAX_NAME_SIZE", "TRAILER", "NewcError", "extract", "write_tree"]

TRAILER = "TRAILER!!!"
_MAGIC = b"070701"


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class _Writer:
    """Writes entries with consecutive inode numbers; counts the bytes written."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 0
        self.written = 0

    def _put(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def entry(
        self, name: str, st_mode: int, mtime: int, data: bytes = b"", rdev: int = 0, nlink: int = 1
    ) -> None:
        self.ino += 1
        raw = name.encode("utf-8", "surrogateescape") + b"\0"
        fields = (
            self.ino, st_mode, 0, 0, nlink, max(0, min(mtime, 0xFFFFFFFF)), len(data),
            0, 0, os.major(rdev), os.minor(rdev), len(raw), 0,
        )  # fmt: skip
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        self._put(header + raw + _pad(len(header) + len(raw)))
        if data:
            self._put(data + _pad(len(data)))

    def stream(self, name: str, st: os.stat_result, path: Path) -> None:
        """A regular file, copied in pieces (sizes are checked: a file that changes is an error)."""
        self.ino += 1
        raw = name.encode("utf-8", "surrogateescape") + b"\0"
        size = st.st_size
        fields = (
            self.ino, st.st_mode, 0, 0, 1, max(0, min(int(st.st_mtime), 0xFFFFFFFF)), size,
            0, 0, 0, 0, len(raw), 0,
        )  # fmt: skip
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        self._put(header + raw + _pad(len(header) + len(raw)))
        left = size
        with open(path, "rb") as f:
            while left:
                piece = f.read(min(left, 1 << 20))
                if not piece:
                    raise OSError(f"{path}: file shrank while archiving it")
                self._put(piece)
                left -= len(piece)
        self._put(_pad(size))


def write_tree(out: BinaryIO, root: Path) -> int:
    """Archive everything under ``root`` (not root itself) as newc with a trailer; returns bytes.

    Writes nothing and returns 0 when ``root`` is empty. Entries are in sorted walk order, a
    directory before its contents; regular files, directories, symlinks, device nodes, FIFOs
    and sockets are kept (hard links become separate copies).
    """
    entries = _walk(root)
    if not entries:
        return 0
    w = _Writer(out)
    for rel, path, st in entries:
        if stat.S_ISREG(st.st_mode):
            w.stream(rel, st, path)
        elif stat.S_ISLNK(st.st_mode):
            w.entry(rel, st.st_mode, int(st.st_mtime), os.readlink(path).encode("utf-8", "surrogateescape"))
        elif stat.S_ISDIR(st.st_mode):
            w.entry(rel, st.st_mode, int(st.st_mtime), nlink=2)
        else:
            w.entry(rel, st.st_mode, int(st.st_mtime), rdev=st.st_rdev)
    w.entry(TRAILER, 0, 0)
    return w.written


def _walk(root: Path) -> list[tuple[str, Path, os.stat_result]]:
    found: list[tuple[str, Path, os.stat_result]] = []

    def visit(directory: Path, prefix: str) -> None:
        for name in sorted(os.listdir(directory)):
            path = directory / name
            st = os.lstat(path)
            rel = prefix + name
            found.append((rel, path, st))
            if stat.S_ISDIR(st.st_mode):
                visit(path, rel + "/")

    visit(root, "")
    return found


# -- reader ---------------------------------------------------------------------------------------------

MAX_NAME_SIZE = 4096  # namesize with its NUL, as the kernel accepts it (PATH_MAX)
MAX_LINK_SIZE = 4096  # a symlink's target
_HEADER_SIZE = 110
_HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")
_FIELDS = (
    "ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
    "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check",
)  # fmt: skip
_PIECE = 1 << 20


class NewcError(ValueError):
    """A truncated, corrupt or unsafe archive (the message says which entry and why)."""


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    parts, left = [], n
    while left:
        piece = src.read(min(left, _PIECE))
        if not piece:
            raise NewcError(f"truncated archive: it ends inside {what}")
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def _parse_header(raw: bytes, index: int) -> dict[str, int]:
    if raw[:6] not in (b"070701", b"070702"):
        raise NewcError(f"entry {index}: bad magic {raw[:6]!r} (not a cpio newc archive, or corrupt)")
    fields = {}
    for i, name in enumerate(_FIELDS):
        text = raw[6 + 8 * i : 14 + 8 * i]
        if not _HEX8.fullmatch(text):
            raise NewcError(f"entry {index}: bad {name} field {text!r}")
        fields[name] = int(text, 16)
    if not 1 <= fields["namesize"] <= MAX_NAME_SIZE:
        raise NewcError(f"entry {index}: name size {fields['namesize']} out of range 1..{MAX_NAME_SIZE}")
    return fields


def _safe_parts(name: str) -> list[str]:
    """The path components of an entry name; [] for the root itself; unsafe names refused."""
    if name.startswith("/"):
        raise NewcError(f"{name!r}: absolute path refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise NewcError(f"{name!r}: '..' in the path refused")
    return parts


class _Extractor:
    def __init__(self, dest: Path, keep: Callable[[os.stat_result], bool] | None) -> None:
        self.dest = Path(dest)
        self.real = os.path.realpath(self.dest)
        self.keep = keep
        self.as_root = os.geteuid() == 0
        self.links: dict[tuple[int, int, int], str] = {}  # hard-link groups: (ino, dev) -> first path
        self.dirs: list[tuple[str, int, int, int, int]] = []  # modes and mtimes, applied at the end
        self.written = 0

    def _inside(self, path: str) -> bool:
        return os.path.commonpath([self.real, os.path.realpath(path)]) == self.real

    def target(self, name: str, parts: list[str]) -> str:
        """The host path of an entry; its parent made (0755) and checked to stay inside the root."""
        parent = os.path.join(self.dest, *parts[:-1])
        if not self._inside(parent):
            raise NewcError(f"{name!r}: the path goes through a symlink leaving the root")
        os.makedirs(parent, 0o755, exist_ok=True)
        if not self._inside(parent):  # paranoia: what makedirs walked through
            raise NewcError(f"{name!r}: the path goes through a symlink leaving the root")
        return os.path.join(parent, parts[-1])

    def _clear(self, path: str, is_dir: bool) -> bool:
        """Make room for a new entry at ``path``; False to leave what is there (``keep``)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True
        if self.keep is not None and self.keep(st):
            return False
        if stat.S_ISDIR(st.st_mode):
            if is_dir:
                return True
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return True

    def _chown(self, path: str, f: dict[str, int], fd: int | None = None) -> None:
        if not self.as_root:
            return
        if fd is not None:
            os.fchown(fd, f["uid"], f["gid"])
        else:
            os.lchown(path, f["uid"], f["gid"])

    def directory(self, path: str, f: dict[str, int]) -> bool:
        if not self._clear(path, is_dir=True):
            return False
        if not os.path.isdir(path) or os.path.islink(path):
            os.mkdir(path, 0o700)
        self._chown(path, f)
        self.dirs.append((path, stat.S_IMODE(f["mode"]), f["mtime"], f["uid"], f["gid"]))
        return True

    def symlink(self, path: str, f: dict[str, int], target: bytes) -> bool:
        if not self._clear(path, is_dir=False):
            return False
        os.symlink(os.fsdecode(target), path)
        self._chown(path, f)
        os.utime(path, (f["mtime"], f["mtime"]), follow_symlinks=False)
        return True

    def regular(self, path: str, f: dict[str, int], src: BinaryIO, name: str) -> bool:
        size = f["filesize"]
        key = (f["ino"], f["devmajor"], f["devminor"])
        flags = os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        write = self._clear(path, is_dir=False)
        if write and f["nlink"] > 1 and key in self.links:
            os.link(self.links[key], path)  # the kernel's convention: the group's last member has the data
        elif write:
            flags |= os.O_CREAT | os.O_EXCL
            if f["nlink"] > 1:
                self.links[key] = path
        fd = os.open(path, flags, 0o600) if write else -1
        try:
            left = size
            while left:
                piece = src.read(min(left, _PIECE))
                if not piece:
                    raise NewcError(f"truncated archive: it ends inside the data of {name!r}")
                if fd >= 0:
                    os.write(fd, piece)  # regular file: a short write raises
                left -= len(piece)
            if fd >= 0:
                self._chown(path, f, fd)
                os.fchmod(fd, stat.S_IMODE(f["mode"]))
                os.utime(fd, (f["mtime"], f["mtime"]))
        finally:
            if fd >= 0:
                os.close(fd)
        return write

    def finish(self) -> None:
        for path, mode, mtime, _uid, _gid in reversed(self.dirs):  # children first
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))


def extract(src: BinaryIO, dest: Path, *, keep: Callable[[os.stat_result], bool] | None = None) -> int:
    """Unpack one newc archive from ``src`` under the directory ``dest``; returns the entries written.

    Regular files (with hard links), directories and symlinks are made with the archive's modes
    and mtimes (owners too when running as root); device nodes, FIFOs and sockets are skipped.
    An entry replaces what is at its path (a directory keeps its contents and takes the new mode),
    unless ``keep(os.lstat(path))`` says to leave what is there. Missing parent directories
    are made 0755. Absolute names, ``..`` components and paths through symlinks that leave
    ``dest`` are refused: nothing is ever written outside ``dest``. Raises :class:`NewcError`
    for a truncated, corrupt or unsafe archive (what was unpacked before stays) and OSError
    for local errors. Reads up to the trailer, then checks that only zero padding follows.
    """
    x = _Extractor(dest, keep)
    index = 0
    while True:
        index += 1
        head = src.read(_HEADER_SIZE)
        if not head:
            raise NewcError(f"truncated archive: no {TRAILER} after {index - 1} entries")
        if len(head) < _HEADER_SIZE:
            head += _read_exact(src, _HEADER_SIZE - len(head), f"the header of entry {index}")
        f = _parse_header(head, index)
        namesize = f["namesize"]
        raw = _read_exact(src, namesize + (-(_HEADER_SIZE + namesize) % 4), f"the name of entry {index}")
        bname = raw[: namesize - 1]
        if raw[namesize - 1] != 0 or b"\0" in bname:
            raise NewcError(f"entry {index}: the name {bname!r} is not NUL-terminated")
        name = os.fsdecode(bname)
        size = f["filesize"]
        if name == TRAILER:
            _read_exact(src, size + (-size % 4), "the trailer")
            break
        kind = stat.S_IFMT(f["mode"])
        parts = _safe_parts(name)
        if kind == stat.S_IFLNK:
            if not 1 <= size <= MAX_LINK_SIZE:
                raise NewcError(f"{name!r}: symlink target size {size} out of range 1..{MAX_LINK_SIZE}")
            link = _read_exact(src, size, f"the target of {name!r}")
            if b"\0" in link:
                raise NewcError(f"{name!r}: NUL in the symlink target")
        if not parts:  # "." : the root itself
            if kind != stat.S_IFDIR:
                raise NewcError(f"{name!r}: the root entry is not a directory")
        elif kind == stat.S_IFDIR:
            x.written += x.directory(x.target(name, parts), f)
        elif kind == stat.S_IFLNK:
            x.written += x.symlink(x.target(name, parts), f, link)
        elif kind == stat.S_IFREG:
            x.written += x.regular(x.target(name, parts), f, src, name)
            size = 0  # consumed
        elif kind not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise NewcError(f"{name!r}: unknown file type {kind:o}")
        if kind == stat.S_IFLNK:
            size = 0
        _read_exact(src, size, f"the data of {name!r}")
        _read_exact(src, -f["filesize"] % 4, f"the padding of {name!r}")
    while rest := src.read(_PIECE):
        if rest.strip(b"\0"):
            raise NewcError(f"data after the {TRAILER} entry (one archive expected)")
    x.finish()
    return x.written
