"""cpio "newc" (SVR4, no CRC): the archive format of Linux initramfs images.

An entry is a 110-byte ASCII header (magic ``070701`` and 13 fields of 8 hex digits),
the NUL-terminated name padded to a multiple of 4 bytes from the header's start, then
``filesize`` bytes of data padded to a multiple of 4. A symlink's data is its target; a
hard-link group shares ``ino``/``nlink`` and, by the kernel's and GNU cpio's convention,
only its last member carries the data. An archive ends with an entry named
``TRAILER!!!``; the kernel forgets hard-link inode numbers at each trailer, so a group
must stay within one archive.

The header layout is :data:`NEWC_HEADER` (construct), used by the reader. The pure-Python
:func:`write_entry` / :func:`read_entries` are the reference implementation, for tests and
for small archives (the per-node overlay); images of whole trees are written by the
native ``perceus.native.cpiopack``.
"""

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from construct import Adapter, Bytes, Const, ConstructError, Struct, ValidationError

__all__ = [
    "FIELDS",
    "HEADER_SIZE",
    "MAX_FIELD",
    "MAX_NAME_SIZE",
    "MAX_NEWC_FILESIZE",
    "NEWC_HEADER",
    "NEWC_MAGIC",
    "TRAILER",
    "CpioError",
    "Entry",
    "entry_size",
    "iter_entries",
    "pad4",
    "parse_header",
    "read_entries",
    "write_entry",
    "write_trailer",
]

NEWC_MAGIC = b"070701"
HEADER_SIZE = 110
TRAILER = b"TRAILER!!!"
MAX_FIELD = 0xFFFFFFFF
MAX_NEWC_FILESIZE = 0xFFFFFFFF  # filesize is 8 hex digits: 4 GiB - 1 is the largest file newc holds
MAX_NAME_SIZE = 4096  # namesize (with the NUL) as the kernel accepts it: PATH_MAX
FIELDS = (
    "ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
    "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check",
)  # fmt: skip

_HEX = frozenset(b"0123456789abcdefABCDEF")


class CpioError(ValueError):
    """A malformed newc archive, or an entry newc cannot represent."""


class _Hex32(Adapter):
    """8 ASCII hex digits <-> int; anything but hex digits (sign, space, ``0x``) is refused."""

    def _decode(self, obj, context, path):
        if not _HEX.issuperset(obj):
            raise ValidationError(f"not 8 hex digits: {bytes(obj)!r}", path=path)
        return int(obj, 16)

    def _encode(self, obj, context, path):
        if not isinstance(obj, int) or not 0 <= obj <= MAX_FIELD:
            raise ValidationError(f"{obj!r} does not fit 8 hex digits", path=path)
        return b"%08X" % obj


NEWC_HEADER = Struct("magic" / Const(NEWC_MAGIC), *(name / _Hex32(Bytes(8)) for name in FIELDS))
_PARSER = NEWC_HEADER.compile()  # the same Struct, compiled by construct: twice as fast to parse


def pad4(n: int) -> int:
    """Bytes of padding after ``n`` bytes to reach a multiple of 4."""
    return -n & 3


def entry_size(namelen: int, filesize: int) -> int:
    """Archive bytes taken by one entry: header, name + NUL, data, paddings."""
    head = HEADER_SIZE + namelen + 1
    return head + pad4(head) + filesize + pad4(filesize)


@dataclass
class Entry:
    """One parsed (or to-be-written) entry; ``name`` as stored, without the NUL."""

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


def parse_header(raw: bytes) -> dict:
    """The fields of a 110-byte header, checked; :class:`CpioError` names what is wrong."""
    if len(raw) != HEADER_SIZE:
        raise CpioError(f"truncated header ({len(raw)} of {HEADER_SIZE} bytes)")
    if raw[:6] != NEWC_MAGIC:
        raise CpioError(f"bad magic {bytes(raw[:6])!r} (not a cpio newc header)")
    try:
        parsed = _PARSER.parse(raw)
    except ConstructError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CpioError(f"bad header field: {'; '.join(lines)}") from None
    fields = {name: parsed[name] for name in FIELDS}
    if not 1 <= fields["namesize"] <= MAX_NAME_SIZE:
        raise CpioError(f"name size {fields['namesize']} out of range 1..{MAX_NAME_SIZE}")
    return fields


def write_entry(
    out: BinaryIO | bytearray,
    name: str | bytes,
    *,
    mode: int,
    data: bytes = b"",
    ino: int = 0,
    uid: int = 0,
    gid: int = 0,
    nlink: int = 1,
    mtime: int = 0,
    devmajor: int = 0,
    devminor: int = 0,
    rdevmajor: int = 0,
    rdevminor: int = 0,
) -> int:
    """Append one entry (header, name, data, paddings) to ``out``; returns the bytes written.

    ``data`` is the file's contents, a symlink's target, or empty (directories, devices,
    the data-less members of a hard-link group)."""
    bname = name.encode() if isinstance(name, str) else bytes(name)
    if b"\0" in bname or not bname:
        raise CpioError(f"bad entry name {bname!r}")
    if len(bname) + 1 > MAX_NAME_SIZE:
        raise CpioError(f"{bname.decode(errors='replace')}: name longer than {MAX_NAME_SIZE - 1} bytes")
    if len(data) > MAX_NEWC_FILESIZE:
        raise CpioError(f"{bname.decode(errors='replace')}: {len(data)} bytes is too large for cpio newc")
    values = dict(
        ino=ino, mode=mode, uid=uid, gid=gid, nlink=nlink, mtime=mtime, filesize=len(data),
        devmajor=devmajor, devminor=devminor, rdevmajor=rdevmajor, rdevminor=rdevminor,
        namesize=len(bname) + 1, check=0,
    )  # fmt: skip
    try:
        header = NEWC_HEADER.build(values)
    except ConstructError as exc:
        raise CpioError(f"{bname.decode(errors='replace')}: {exc}") from None
    head = header + bname + b"\0"
    piece = head + b"\0" * pad4(len(head)) + data + b"\0" * pad4(len(data))
    if isinstance(out, bytearray):
        out += piece
    else:
        out.write(piece)
    return len(piece)


def write_trailer(out: BinaryIO | bytearray) -> int:
    """Append the ``TRAILER!!!`` entry that ends an archive."""
    return write_entry(out, TRAILER, mode=0, nlink=1)


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise CpioError(f"truncated archive: {what} needs {n} bytes, {len(data)} left")
    return data


def iter_entries(src: BinaryIO) -> Iterator[Entry]:
    """Entries of one archive read from ``src`` (data included), up to its trailer."""
    while True:
        fields = parse_header(_read_exact(src, HEADER_SIZE, "header"))
        namesize = fields["namesize"]
        raw = _read_exact(src, namesize + pad4(HEADER_SIZE + namesize), "name")
        name = raw[: namesize - 1]
        if raw[namesize - 1] != 0 or b"\0" in name:
            raise CpioError(f"entry name {name!r} is not NUL-terminated")
        if name == TRAILER:
            return
        size = fields["filesize"]
        data = _read_exact(src, size + pad4(size), f"data of {name.decode(errors='replace')}")[:size]
        kw = {k: v for k, v in fields.items() if k not in ("namesize", "check")}
        yield Entry(name=name, data=data, **kw)


def read_entries(data: bytes) -> list[Entry]:
    """All entries of one archive held in ``data`` (trailer excluded). Strict: a missing
    trailer, bad padding or junk after the trailer (other than zeros) is a :class:`CpioError`."""
    src = io.BytesIO(data)
    entries = list(iter_entries(src))
    rest = src.read()
    if rest.strip(b"\0"):
        raise CpioError(f"{len(rest)} bytes of junk after {TRAILER.decode()}")
    return entries
