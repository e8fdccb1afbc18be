"""cpio "newc" (SVR4, no CRC): the archive format of every initramfs the project makes or reads.

An entry is a 110-byte ASCII header (magic ``070701`` and 13 fields of 8 hex digits),
the NUL-terminated name padded to a multiple of 4 bytes from the header's start, then
``filesize`` bytes of data padded to a multiple of 4. A symlink's data is its target; a
hard-link group shares ``ino``/``nlink`` and, by the kernel's and GNU cpio's convention,
only its last member carries the data. An archive ends with an entry named
``TRAILER!!!``; the kernel forgets hard-link inode numbers at each trailer, so a group
must stay within one archive.

This is the one pure-Python implementation, standard library only (stage one carries it
frozen): the header (:class:`Header`), the writer (:func:`write_entry`,
:func:`write_trailer`, :func:`write_tree`) and the :class:`Reader`, which believes no
length it reads: names, fields and sizes are bounded and checked, data is handed out in
pieces, and every malformed or truncated archive is a :class:`NewcError`. Unpacking into
a directory is :mod:`perceus.common.unpack`; the chunks of whole-tree images are written
by the native ``perceus.native.cpiopack``, the measured hot path.
"""

import io
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

from perceus.common.errors import ReasonError

__all__ = [
    "FIELDS",
    "HEADER_SIZE",
    "MAX_FIELD",
    "MAX_NAME_SIZE",
    "MAX_NEWC_FILESIZE",
    "MAX_SYMLINK_TARGET",
    "NEWC_MAGIC",
    "TRAILER",
    "Entry",
    "Header",
    "Member",
    "NewcError",
    "Reader",
    "entry_size",
    "iter_entries",
    "pad4",
    "parse_header",
    "read_entries",
    "shown",
    "write_entry",
    "write_trailer",
    "write_tree",
]

NEWC_MAGIC = b"070701"
CRC_MAGIC = b"070702"  # the same layout with a checksum in ``check``: read (as the kernel does), not written
HEADER_SIZE = 110
TRAILER = b"TRAILER!!!"
MAX_FIELD = 0xFFFFFFFF
MAX_NEWC_FILESIZE = MAX_FIELD  # filesize is 8 hex digits: 4 GiB - 1 is the largest file newc holds
MAX_NAME_SIZE = 4096  # namesize (with the NUL) as the kernel accepts it: PATH_MAX
MAX_SYMLINK_TARGET = 4095  # PATH_MAX without the NUL
FIELDS = (
    "ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
    "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check",
)  # fmt: skip
PIECE = 1 << 20  # data is read and copied this many bytes at a time

_HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")


class NewcError(ReasonError, ValueError):
    """A malformed, truncated or unsafe archive, or an entry newc cannot hold.

    ``name`` is the entry's name when known, ``offset`` the archive byte where its header
    starts; ``str()`` is one line."""

    def __init__(self, reason: str, name: str | None = None, offset: int | None = None) -> None:
        where = name if name is not None or offset is None else f"at byte {offset}"
        super().__init__(reason, where)
        self.name = name
        self.offset = offset


def pad4(n: int) -> int:
    """Bytes of padding after ``n`` bytes to reach a multiple of 4."""
    return -n & 3


def entry_size(namelen: int, filesize: int) -> int:
    """Archive bytes taken by one entry: header, name + NUL, data, paddings."""
    return ((HEADER_SIZE + 4 + namelen) & ~3) + ((filesize + 3) & ~3)


def shown(name: bytes) -> str:
    """An entry name for a message (never fails, whatever the bytes)."""
    return name.decode(errors="replace")


class Header(NamedTuple):
    """The 13 numeric fields of an entry header, in archive order."""

    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    filesize: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    namesize: int
    check: int

    def encode(self) -> bytes:
        """The 110 header bytes (``NewcError`` for a field outside 0..2**32-1)."""
        for name, value in zip(FIELDS, self, strict=True):
            if not isinstance(value, int) or not 0 <= value <= MAX_FIELD:
                raise NewcError(f"{name} {value!r} does not fit cpio newc (0..{MAX_FIELD})")
        return NEWC_MAGIC + b"".join(b"%08X" % value for value in self)


def parse_header(raw: bytes, offset: int | None = None) -> Header:
    """The fields of a 110-byte header, checked; :class:`NewcError` names what is wrong."""
    if len(raw) != HEADER_SIZE:
        raise NewcError(f"truncated header ({len(raw)} of {HEADER_SIZE} bytes)", offset=offset)
    if raw[:6] not in (NEWC_MAGIC, CRC_MAGIC):
        raise NewcError(f"bad magic {bytes(raw[:6])!r} (not a cpio newc header)", offset=offset)
    values = []
    for i, name in enumerate(FIELDS):
        text = raw[6 + 8 * i : 14 + 8 * i]
        if not _HEX8.fullmatch(text):
            raise NewcError(f"bad header field {name}: {bytes(text)!r} is not 8 hex digits", offset=offset)
        values.append(int(text, 16))
    header = Header(*values)
    if not 1 <= header.namesize <= MAX_NAME_SIZE:
        raise NewcError(f"name size {header.namesize} out of range 1..{MAX_NAME_SIZE}", offset=offset)
    return header


# -- writing ----------------------------------------------------------------------------------


def _encode_name(name: str | bytes) -> bytes:
    bname = os.fsencode(name)
    if not bname or b"\0" in bname:
        raise NewcError(f"bad entry name {bname!r}")
    if len(bname) + 1 > MAX_NAME_SIZE:
        raise NewcError(f"name longer than {MAX_NAME_SIZE - 1} bytes", shown(bname))
    return bname


def entry_head(
    name: str | bytes,
    *,
    mode: int,
    filesize: int = 0,
    ino: int = 0,
    uid: int = 0,
    gid: int = 0,
    nlink: int = 1,
    mtime: int = 0,
    devmajor: int = 0,
    devminor: int = 0,
    rdevmajor: int = 0,
    rdevminor: int = 0,
) -> bytes:
    """An entry's header, name, NUL and padding: what goes before its ``filesize`` bytes of data."""
    bname = _encode_name(name)
    if not isinstance(filesize, int) or not 0 <= filesize <= MAX_NEWC_FILESIZE:
        raise NewcError(f"{filesize} bytes is too large for cpio newc", shown(bname))
    namesize = len(bname) + 1
    header = Header(
        ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, 0
    )
    try:
        head = header.encode() + bname + b"\0"
    except NewcError as exc:
        raise NewcError(exc.reason, shown(bname)) from None
    return head + b"\0" * pad4(len(head))


def _put(out: BinaryIO | bytearray, piece: bytes) -> None:
    if isinstance(out, bytearray):
        out += piece
    else:
        out.write(piece)


def write_entry(
    out: BinaryIO | bytearray, name: str | bytes, *, mode: int, data: bytes = b"", **fields: int
) -> int:
    """Append one entry (header, name, data, paddings) to ``out``; returns the bytes written.

    ``data`` is the file's contents, a symlink's target, or empty (directories, devices,
    the data-less members of a hard-link group); ``fields`` are the other header fields
    (``ino``, ``uid``, ``gid``, ``nlink``, ``mtime``, ``devmajor``, ``devminor``,
    ``rdevmajor``, ``rdevminor``), 0 if not given (``nlink`` 1)."""
    piece = entry_head(name, mode=mode, filesize=len(data), **fields) + bytes(data) + b"\0" * pad4(len(data))
    _put(out, piece)
    return len(piece)


def write_trailer(out: BinaryIO | bytearray) -> int:
    """Append the ``TRAILER!!!`` entry that ends an archive."""
    return write_entry(out, TRAILER, mode=0)


def _clamp_mtime(seconds: float) -> int:
    return max(0, min(int(seconds), MAX_FIELD))


def write_tree(out: BinaryIO, root: Path) -> int:
    """Archive everything under ``root`` (not root itself) as newc with a trailer; returns the bytes written.

    Writes nothing and returns 0 when ``root`` is empty. Entries are in sorted walk order, a
    directory before its contents, numbered from 1; owners are root:root, modes and mtimes
    kept; regular files (streamed in pieces: one that changes size is an error),
    directories, symlinks, device nodes, FIFOs and sockets are kept (hard links become
    separate copies).
    """
    entries = _walk(Path(root))
    if not entries:
        return 0
    written = 0
    for ino, (rel, path, st) in enumerate(entries, start=1):
        fields = {"mode": st.st_mode, "ino": ino, "mtime": _clamp_mtime(st.st_mtime)}
        if stat.S_ISREG(st.st_mode):
            written += _write_file(out, rel, path, st.st_size, fields)
            continue
        if stat.S_ISLNK(st.st_mode):
            data = os.fsencode(os.readlink(path))
        else:
            data = b""
            fields["nlink"] = 2 if stat.S_ISDIR(st.st_mode) else 1
            fields["rdevmajor"], fields["rdevminor"] = os.major(st.st_rdev), os.minor(st.st_rdev)
        written += write_entry(out, rel, data=data, **fields)
    return written + write_trailer(out)


def _write_file(out: BinaryIO, name: str, path: Path, size: int, fields: dict) -> int:
    head = entry_head(name, filesize=size, **fields)
    out.write(head)
    left = size
    with open(path, "rb") as f:
        while left:
            piece = f.read(min(left, PIECE))
            if not piece:
                raise OSError(f"{path}: file shrank while archiving it")
            out.write(piece)
            left -= len(piece)
    out.write(b"\0" * pad4(size))
    return len(head) + size + pad4(size)


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


# -- reading ----------------------------------------------------------------------------------


class Member(NamedTuple):
    """One entry read from an archive: its name (as stored, without the NUL), header and
    where it starts; its data is still in the :class:`Reader`."""

    name: bytes
    header: Header
    offset: int

    @property
    def shown(self) -> str:
        return shown(self.name)


class Reader:
    """The members of one archive read from ``src`` in order, never trusting a length.

    ``src`` needs only ``read(n)`` (which may return fewer bytes). Iterate for each
    :class:`Member` up to the trailer; read the current member's data with :meth:`read`
    (or leave it: the next member skips what is left). With ``size`` (the archive's known
    length) a member declaring more data than is left is refused before any is read;
    ``unit`` names the sized thing in that message. :meth:`finish` then checks that only
    zero padding follows the trailer.
    """

    def __init__(self, src: BinaryIO, *, size: int | None = None, unit: str = "archive") -> None:
        self.src, self.size, self.unit = src, size, unit
        self.pos = 0  # archive bytes consumed
        self.ended = False  # the trailer has been read
        self._data = 0  # data bytes of the current member not read yet
        self._pad = 0  # and its padding

    def __iter__(self) -> Iterator[Member]:
        while (member := self.next()) is not None:
            yield member

    def _read(self, n: int) -> bytes:
        """Up to ``n`` bytes: fewer only at the end of ``src``."""
        parts, left = [], n
        while left:
            piece = self.src.read(min(left, PIECE))
            if not piece:
                break
            parts.append(piece)
            left -= len(piece)
        data = b"".join(parts)
        self.pos += len(data)
        return data

    def _exact(self, n: int) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise NewcError(f"truncated archive at byte {self.pos} (wanted {n - len(data)} more)")
        return data

    def next(self) -> Member | None:
        """The next member, or None once the trailer is read."""
        if self.ended:
            return None
        self.skip()
        at = self.pos
        head = b"" if self.size is not None and at >= self.size else self._read(HEADER_SIZE)
        if not head and (self.size is None or at >= self.size):
            raise NewcError(f"archive ends without {TRAILER.decode()}", offset=at)
        if len(head) != HEADER_SIZE:
            raise NewcError(f"truncated archive at byte {self.pos} (wanted {HEADER_SIZE - len(head)} more)")
        header = parse_header(head, at)
        namesize = header.namesize
        raw = self._exact(namesize + pad4(HEADER_SIZE + namesize))
        name = raw[: namesize - 1]
        if raw[namesize - 1] != 0 or b"\0" in name:
            raise NewcError(f"entry name {shown(name)!r} is not NUL-terminated", offset=at)
        member = Member(name, header, at)
        self._data, self._pad = header.filesize, pad4(header.filesize)
        if self.size is not None and self._data + self._pad > self.size - self.pos:
            reason = f"declared size {header.filesize} goes beyond the {self.unit} (truncated or bomb)"
            raise NewcError(reason, member.shown)
        if name == TRAILER:
            self.skip()
            self.ended = True
            return None
        return member

    def read(self, n: int) -> bytes:
        """The next ``min(n, what is left)`` bytes of the current member's data (b"" at its end)."""
        n = min(n, self._data)
        if n <= 0:
            return b""
        data = self._exact(n)
        self._data -= n
        return data

    def skip(self) -> None:
        """Pass over what is left of the current member's data and its padding."""
        left, self._data, self._pad = self._data + self._pad, 0, 0
        while left:
            n = min(left, PIECE)
            self._exact(n)
            left -= n

    def finish(self) -> None:
        """After the trailer: only zero padding may follow, to the end of ``src`` (or ``size``)."""
        if not self.ended:
            raise NewcError(f"archive ends without {TRAILER.decode()}", offset=self.pos)
        while True:
            want = PIECE if self.size is None else min(PIECE, self.size - self.pos)
            at = self.pos
            rest = self._read(want) if want > 0 else b""
            if not rest:
                return
            if rest.strip(b"\0"):
                junk = at + len(rest) - len(rest.lstrip(b"\0"))
                raise NewcError(f"junk after {TRAILER.decode()} at byte {junk}")


@dataclass
class Entry:
    """One entry with its data, as :func:`iter_entries` reads it (or a test writes it)."""

    name: bytes
    mode: int
    ino: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    mtime: int = 0
    filesize: int = 0
    devmajor: int = 0
    devminor: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0
    data: bytes = field(default=b"", repr=False)


def _entries(reader: Reader) -> Iterator[Entry]:
    for member in reader:
        h = member.header
        data = reader.read(h.filesize)
        yield Entry(
            member.name, h.mode, h.ino, h.uid, h.gid, h.nlink, h.mtime, h.filesize,
            h.devmajor, h.devminor, h.rdevmajor, h.rdevminor, data,
        )  # fmt: skip


def iter_entries(src: BinaryIO) -> Iterator[Entry]:
    """Entries of one archive read from ``src``, data included, up to its trailer (small archives)."""
    return _entries(Reader(src))


def read_entries(data: bytes) -> list[Entry]:
    """All entries of one archive held in ``data`` (trailer excluded). Strict: a missing
    trailer, bad padding or junk after the trailer (other than zeros) is a :class:`NewcError`."""
    reader = Reader(io.BytesIO(data), size=len(data))
    entries = list(_entries(reader))
    reader.finish()
    return entries
