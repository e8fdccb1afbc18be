"""The capsule's bytes: the fixed header (construct), the JSON manifest, and their total parse.

Layout of a capsule file (docs/capsule-format.md is the specification)::

    [header, 80 bytes][members, each at its offset][manifest JSON][end of file]

The header names the format version and where the manifest is, and carries the
manifest's sha256; the manifest names every member with its offset, size and sha256;
so a verified header is the root of a hash tree over every byte of the file.

Nothing here trusts its input: every number is range-checked against the file it came
from, every JSON value is type-checked, and each refusal is a :class:`CapsuleError`
whose message names the reason in one line.
"""

import dataclasses
import hashlib
import json
import os
import re
import stat
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from construct import Bytes, ConstructError, Int16ul, Int32ul, Int64ul, Struct

from perceus.capsule.names import ARCHES, KINDS, NAME_RE, REVISION_RE, STATES, VERSION_RE, capsule_basename
from perceus.common.errors import InvalidInput, ReasonError

# The version this code reads and writes; see "Version rule" in docs/capsule-format.md.
FORMAT_VERSION = 1
MAGIC = b"\x89PCAP\r\n\x1a"
HEADER_SIZE = 80

FLAG_MODULE = 0x0001  # the capsule is a module (.pmod); must agree with the manifest's kind
KNOWN_FLAGS = FLAG_MODULE

# Limits a reader enforces before it believes a number.
MAX_MANIFEST = 16 << 20  # bytes of manifest JSON
MAX_MEMBERS = 4096
MAX_CHUNKS = 1 << 20
MAX_STRING = 4096
DEFAULT_MAX_USIZE = 64 << 30  # declared unpacked size of the root tree

ALIGN_SMALL = 8
ALIGN_LARGE = 4096  # kernel and rootfs start on a page boundary (reflink- and mmap-friendly)

HEADER = Struct(
    "magic" / Bytes(8),
    "version" / Int16ul,
    "flags" / Int16ul,
    "header_size" / Int32ul,
    "manifest_offset" / Int64ul,
    "manifest_length" / Int64ul,
    "file_length" / Int64ul,
    "manifest_sha256" / Bytes(32),
    "reserved" / Int32ul,
    "header_crc32" / Int32ul,
)
assert HEADER.sizeof() == HEADER_SIZE

ENCODING_RAW = "raw"
ENCODING_CHUNKED = "cpio-zstd-chunks"
ROOTFS = "rootfs"

_COMPONENT = r"[A-Za-z0-9_+@=,-][A-Za-z0-9._+@=,-]{0,127}"
MEMBER_RE = re.compile(rf"{_COMPONENT}(/{_COMPONENT}){{0,7}}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
CREATED_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CapsuleError(ReasonError, ValueError):
    """A capsule, a legacy capsule or a tree to pack was refused; ``str()`` is one line."""


class MetaError(CapsuleError, InvalidInput):
    """The metadata asked for is wrong (a bad name, an --arch the tree contradicts)."""


def open_regular(path: object) -> BinaryIO:
    """Open a file for reading, refusing (without blocking on a FIFO) anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise CapsuleError(f"cannot open: {exc.strerror}", path) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CapsuleError("not a regular file", path)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


# -- header ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    version: int
    flags: int
    manifest_offset: int
    manifest_length: int
    file_length: int
    manifest_sha256: bytes

    def build(self) -> bytes:
        fields = dict(
            magic=MAGIC,
            version=self.version,
            flags=self.flags,
            header_size=HEADER_SIZE,
            manifest_offset=self.manifest_offset,
            manifest_length=self.manifest_length,
            file_length=self.file_length,
            manifest_sha256=self.manifest_sha256,
            reserved=0,
            header_crc32=0,
        )
        raw = HEADER.build(fields)
        fields["header_crc32"] = zlib.crc32(raw[: HEADER_SIZE - 4])
        return HEADER.build(fields)

    @classmethod
    def parse(cls, raw: bytes, file_size: int) -> "Header":
        """Check the header against the file's real size; the order gives the most useful reason."""
        if file_size == 0:
            raise CapsuleError("empty file, not a capsule")
        if len(raw) < len(MAGIC) and MAGIC.startswith(raw):
            raise CapsuleError(f"truncated: {file_size} bytes, shorter than the {HEADER_SIZE}-byte header")
        if raw[: len(MAGIC)] != MAGIC:
            if raw[:3] == b"BZh":
                raise CapsuleError("not a capsule but a bzip2 file (a legacy capsule? import it)")
            raise CapsuleError("not a capsule: wrong magic")
        if len(raw) < HEADER_SIZE:
            raise CapsuleError(f"truncated: {file_size} bytes, shorter than the {HEADER_SIZE}-byte header")
        try:
            h = HEADER.parse(raw[:HEADER_SIZE])
        except ConstructError as exc:  # pragma: no cover - fixed-size fields cannot fail
            raise CapsuleError(f"unreadable header: {exc}") from None
        if h.version != FORMAT_VERSION:
            supported = f"this perceus reads version {FORMAT_VERSION}"
            raise CapsuleError(f"unsupported capsule format version {h.version} ({supported})")
        if zlib.crc32(raw[: HEADER_SIZE - 4]) != h.header_crc32:
            raise CapsuleError("header CRC mismatch: the header is damaged")
        if h.header_size != HEADER_SIZE or h.reserved != 0:
            raise CapsuleError("header size or reserved field is wrong")
        if h.flags & ~KNOWN_FLAGS:
            raise CapsuleError(f"unknown header flags 0x{h.flags & ~KNOWN_FLAGS:04x} (format version 1)")
        if h.file_length != file_size:
            if file_size < h.file_length:
                raise CapsuleError(f"truncated: {file_size} bytes of {h.file_length}")
            raise CapsuleError(f"{file_size - h.file_length} bytes of trailing data after the capsule")
        if not 0 < h.manifest_length <= MAX_MANIFEST:
            raise CapsuleError(f"manifest length {h.manifest_length} outside 1..{MAX_MANIFEST}")
        end = h.manifest_offset + h.manifest_length
        if h.manifest_offset < HEADER_SIZE or end > h.file_length:
            raise CapsuleError("manifest lies outside the file")
        return cls(h.version, h.flags, h.manifest_offset, h.manifest_length, h.file_length, h.manifest_sha256)


# -- manifest -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkInfo:
    """One zstd frame of the root tree, offset relative to the rootfs member's start."""

    offset: int
    csize: int
    usize: int
    sha256: str

    def as_dict(self) -> dict:
        return {"offset": self.offset, "csize": self.csize, "usize": self.usize, "sha256": self.sha256}


@dataclass(frozen=True)
class Member:
    """A named byte range of the capsule: raw bytes, or (``rootfs``) the chunked image."""

    name: str
    offset: int
    size: int
    sha256: str
    mode: int = 0o644
    encoding: str = ENCODING_RAW
    usize: int = 0
    entries: int = 0
    chunks: tuple[ChunkInfo, ...] = ()

    def as_dict(self) -> dict:
        d: dict[str, Any] = {
            "name": self.name,
            "encoding": self.encoding,
            "offset": self.offset,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.encoding == ENCODING_RAW:
            d["mode"] = self.mode
        else:
            d.update(usize=self.usize, entries=self.entries, chunks=[c.as_dict() for c in self.chunks])
        return d


@dataclass(frozen=True)
class Manifest:
    """Everything a capsule says about itself (format version 1)."""

    kind: str
    name: str
    version: str
    revision: str
    state: str | None
    arch: str
    os: str
    kernel_version: str | None
    kernel_args: str
    created: str
    tool: str
    members: tuple[Member, ...] = field(default=())

    @property
    def fullname(self) -> str:
        """``name-version-revision.state.arch`` (the guide's name without the suffix)."""
        return capsule_basename(self.kind, self.name, self.version, self.revision, self.state, self.arch)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise CapsuleError(f"no member {name!r} in this capsule")

    def has(self, name: str) -> bool:
        return any(m.name == name for m in self.members)

    @property
    def rootfs(self) -> Member | None:
        return next((m for m in self.members if m.name == ROOTFS), None)

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "revision": self.revision,
            "state": self.state,
            "arch": self.arch,
            "os": self.os,
            "kernel_version": self.kernel_version,
            "kernel_args": self.kernel_args,
            "created": self.created,
            "tool": self.tool,
            "members": [m.as_dict() for m in self.members],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), indent=1, sort_keys=False, ensure_ascii=True).encode() + b"\n"

    @property
    def created_datetime(self) -> datetime:
        return datetime.strptime(self.created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise CapsuleError(f"manifest: duplicate key {key!r}")
        seen[key] = value
    return seen


def _no_constant(name: str) -> None:
    raise CapsuleError(f"manifest: {name} is not allowed")


def _keys(where: str, d: object, required: set[str]) -> dict:
    if not isinstance(d, dict):
        raise CapsuleError(f"manifest: {where} must be an object")
    missing, unknown = required - set(d), set(d) - required
    if missing:
        raise CapsuleError(f"manifest: {where} lacks {', '.join(sorted(missing))}")
    if unknown:
        raise CapsuleError(f"manifest: {where} has unknown key {sorted(unknown)[0]!r}")
    return d


def _int(where: str, value: object, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise CapsuleError(f"manifest: {where} must be an integer in {lo}..{hi}")
    return value


def _str(where: str, value: object, pattern: re.Pattern | None = None, *, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or len(value) > MAX_STRING or _CONTROL.search(value):
        raise CapsuleError(f"manifest: {where} must be a one-line string")
    if pattern is not None and not pattern.fullmatch(value):
        raise CapsuleError(f"manifest: {where} {value!r} is not allowed")
    return value


def _choice(where: str, value: object, choices: tuple, *, nullable: bool = False) -> Any:
    if (value is None and nullable) or (isinstance(value, str) and value in choices):
        return value
    raise CapsuleError(f"manifest: {where} must be one of {', '.join(choices)}")


MANIFEST_KEYS = {
    "kind",
    "name",
    "version",
    "revision",
    "state",
    "arch",
    "os",
    "kernel_version",
    "kernel_args",
    "created",
    "tool",
    "members",
}
RAW_KEYS = {"name", "encoding", "offset", "size", "sha256", "mode"}
CHUNKED_KEYS = {"name", "encoding", "offset", "size", "sha256", "usize", "entries", "chunks"}
CHUNK_KEYS = {"offset", "csize", "usize", "sha256"}


def _member(i: int, d: object, data_end: int, max_usize: int) -> Member:
    where = f"members[{i}]"
    if not isinstance(d, dict):
        raise CapsuleError(f"manifest: {where} must be an object")
    encoding = _choice(f"{where}.encoding", d.get("encoding"), (ENCODING_RAW, ENCODING_CHUNKED))
    _keys(where, d, RAW_KEYS if encoding == ENCODING_RAW else CHUNKED_KEYS)
    name = _str(f"{where}.name", d["name"], MEMBER_RE)
    where = f"member {name!r}"
    if (name == ROOTFS) != (encoding == ENCODING_CHUNKED):
        raise CapsuleError(f"manifest: {where} cannot have encoding {encoding}")
    offset = _int(f"{where} offset", d["offset"], HEADER_SIZE, data_end)
    size = _int(f"{where} size", d["size"], 0, data_end - offset)
    sha = _str(f"{where} sha256", d["sha256"], SHA256_RE)
    if encoding == ENCODING_RAW:
        mode = _int(f"{where} mode", d["mode"], 0, 0o777)
        return Member(name, offset, size, sha, mode=mode)
    usize = _int(f"{where} usize", d["usize"], 0, 1 << 62)
    if usize > max_usize:
        raise CapsuleError(f"declared unpacked size {usize} of {name} exceeds the limit {max_usize}")
    entries = _int(f"{where} entries", d["entries"], 0, 1 << 40)
    raw_chunks = d["chunks"]
    if not isinstance(raw_chunks, list) or len(raw_chunks) > MAX_CHUNKS:
        raise CapsuleError(f"manifest: {where} chunks must be a list of at most {MAX_CHUNKS}")
    chunks, pos, total = [], 0, 0
    for j, c in enumerate(raw_chunks):
        cw = f"{where} chunk {j}"
        _keys(cw, c, CHUNK_KEYS)
        chunk = ChunkInfo(
            _int(f"{cw} offset", c["offset"], 0, size),
            _int(f"{cw} csize", c["csize"], 1, size),
            _int(f"{cw} usize", c["usize"], 0, usize),
            _str(f"{cw} sha256", c["sha256"], SHA256_RE),
        )
        if chunk.offset != pos:
            raise CapsuleError(f"manifest: {cw} is not where the previous chunk ends (gap or overlap)")
        pos += chunk.csize
        total += chunk.usize
        chunks.append(chunk)
    if pos != size:
        raise CapsuleError(f"manifest: {where} chunks cover {pos} bytes, the member has {size}")
    if total != usize:
        raise CapsuleError(f"manifest: {where} chunks unpack to {total} bytes, the member declares {usize}")
    return Member(
        name, offset, size, sha, encoding=ENCODING_CHUNKED, usize=usize, entries=entries, chunks=tuple(chunks)
    )


def parse_manifest(raw: bytes, header: Header, *, max_usize: int = DEFAULT_MAX_USIZE) -> Manifest:
    """The manifest, parsed totally and checked against the header and the file's size."""
    if hashlib.sha256(raw).digest() != header.manifest_sha256:
        raise CapsuleError("manifest sha256 mismatch: the manifest is damaged")
    try:
        text = raw.decode("utf-8")
        d = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except CapsuleError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CapsuleError(f"manifest is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
    _keys("the manifest", d, MANIFEST_KEYS)
    kind = _choice("kind", d["kind"], KINDS)
    if bool(header.flags & FLAG_MODULE) != (kind == "module"):
        raise CapsuleError("header flags and manifest kind disagree")
    manifest = Manifest(
        kind=kind,
        name=_str("name", d["name"], NAME_RE),
        version=_str("version", d["version"], VERSION_RE),
        revision=_str("revision", d["revision"], REVISION_RE),
        state=_choice("state", d["state"], STATES, nullable=kind == "module"),
        arch=_choice("arch", d["arch"], ARCHES),
        os=_str("os", d["os"]),
        kernel_version=_str("kernel_version", d["kernel_version"], nullable=True),
        kernel_args=_str("kernel_args", d["kernel_args"]),
        created=_str("created", d["created"], CREATED_RE),
        tool=_str("tool", d["tool"]),
    )
    try:
        manifest.created_datetime  # noqa: B018 - a real date, not only the right shape
    except ValueError:
        raise CapsuleError(f"manifest: created {manifest.created!r} is not a date") from None
    members_raw = d["members"]
    if not isinstance(members_raw, list) or len(members_raw) > MAX_MEMBERS:
        raise CapsuleError(f"manifest: members must be a list of at most {MAX_MEMBERS}")
    members = [_member(i, m, header.manifest_offset, max_usize) for i, m in enumerate(members_raw)]
    _check_layout(members)
    if kind == "vnfs" and not any(m.name == ROOTFS for m in members):
        raise CapsuleError("manifest: a vnfs capsule must have a rootfs member")
    if kind == "vnfs" and manifest.arch == "noarch":
        raise CapsuleError("manifest: a vnfs capsule needs a real architecture, not noarch")
    if any(m.name == "kernel" for m in members) != (manifest.kernel_version is not None):
        raise CapsuleError("manifest: kernel_version must be given exactly when there is a kernel member")
    return dataclasses.replace(manifest, members=tuple(members))


def _check_layout(members: list[Member]) -> None:
    """Unique names, no name inside another (unpack makes files of them), no overlapping ranges."""
    names = set()
    for m in members:
        if m.name in names:
            raise CapsuleError(f"manifest: member {m.name!r} appears twice")
        names.add(m.name)
    for m in members:
        parts = m.name.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in names:
                raise CapsuleError(f"manifest: member {m.name!r} lies inside member {'/'.join(parts[:i])!r}")
    ordered = sorted((m for m in members if m.size), key=lambda m: m.offset)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.offset + a.size > b.offset:
            raise CapsuleError(f"manifest: members {a.name!r} and {b.name!r} overlap")


def utc_timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
