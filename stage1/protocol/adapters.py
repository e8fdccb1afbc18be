"""Construct field types that check their bounds both ways: what a message's ``STRUCT`` is built of.

Decoding a peer's bytes and encoding our own go through the same checks, so a message that
encodes also decodes. A broken rule raises :class:`Invalid`, which the codec turns into a
Local- or RemoteProtocolError.
"""

import enum
import re
import struct
import uuid
from dataclasses import fields

import construct as cs
from construct.core import stream_read, stream_write

from perceus.stage1.protocol.enums import ErrorCode
from perceus.stage1.protocol.limits import CHUNK_ENTRY_SIZE, I63, MAX_CHUNKS, MAX_HWADDR, MAX_OBJECT_SIZE

ONE_LINE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters other than tab
MULTI_LINE_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # ... other than tab, CR, LF
STATE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
VNFS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
IFNAME_RE = re.compile(r"(?!\.\.?\Z)[!-.0-9;-~]{1,15}")  # printable ASCII without / and :, not . or ..
MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
HWADDR_RE = re.compile(r"([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){0,31})?")
HEX_RE = re.compile(r"[0-9a-fA-F]*")


class Invalid(Exception):
    """A field or message breaks a rule; becomes a Local- or RemoteProtocolError."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.MALFORMED) -> None:
        super().__init__(message)
        self.code = code


def short(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to fit in an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def int_value(obj: object, what: str) -> int:
    """``obj`` if it is an integer (not a bool); Invalid otherwise."""
    if not isinstance(obj, int) or isinstance(obj, bool):
        raise Invalid(f"{what}: expected an integer, got {type(obj).__name__}")
    return int(obj)


class Int(cs.Adapter):
    """An integer field with an inclusive range."""

    def __init__(self, subcon: cs.Construct, lo: int, hi: int, what: str) -> None:
        super().__init__(subcon)
        self.lo, self.hi, self.what = lo, hi, what

    def _check(self, value: int) -> int:
        if not self.lo <= value <= self.hi:
            raise Invalid(f"{self.what} {value} is outside {self.lo}..{self.hi}")
        return value

    def _decode(self, obj, context, path):
        return self._check(obj)

    def _encode(self, obj, context, path):
        return self._check(int_value(obj, self.what))


class Enum(cs.Adapter):
    """An integer field naming a member of an IntEnum."""

    def __init__(self, subcon: cs.Construct, enum_cls: type[enum.IntEnum], what: str) -> None:
        super().__init__(subcon)
        self.enum_cls, self.what = enum_cls, what

    def _decode(self, obj, context, path):
        try:
            return self.enum_cls(obj)
        except ValueError:
            known = ", ".join(f"{m.value} {m.name}" for m in self.enum_cls)
            raise Invalid(f"{self.what} {obj} is unknown (known: {known})") from None

    def _encode(self, obj, context, path):
        return int(self._decode(int_value(obj, self.what), context, path))


class Flags(cs.Adapter):
    """An integer field of IntFlag bits; unknown bits are refused."""

    def __init__(self, subcon: cs.Construct, flag_cls: type[enum.IntFlag], what: str) -> None:
        super().__init__(subcon)
        self.flag_cls, self.what = flag_cls, what
        self.known = 0
        for member in flag_cls:
            self.known |= member.value

    def _decode(self, obj, context, path):
        if obj & ~self.known:
            raise Invalid(f"{self.what} 0x{obj:x} has unknown bits 0x{obj & ~self.known:x}")
        return self.flag_cls(obj)

    def _encode(self, obj, context, path):
        return int(self._decode(int_value(obj, self.what), context, path))


class Text(cs.Adapter):
    """UTF-8 text behind a length prefix: at most ``maximum`` bytes, no control characters."""

    def __init__(
        self,
        prefix: cs.Construct,
        maximum: int,
        what: str,
        pattern: re.Pattern | None = None,
        *,
        multiline: bool = False,
        empty: bool = True,
    ) -> None:
        super().__init__(cs.Prefixed(prefix, cs.GreedyBytes))
        self.maximum, self.what, self.pattern, self.empty = maximum, what, pattern, empty
        self.bad = MULTI_LINE_BAD if multiline else ONE_LINE_BAD

    def _check(self, raw: bytes, text: str) -> str:
        if len(raw) > self.maximum:
            raise Invalid(f"{self.what}: {len(raw)} bytes, more than {self.maximum}")
        if not text:
            if not self.empty:
                raise Invalid(f"{self.what}: empty")
            return text
        if self.pattern is not None and not self.pattern.fullmatch(text):
            raise Invalid(f"{self.what} {short(text)} is not of the form {self.pattern.pattern}")
        bad = self.bad.search(text)
        if bad:
            raise Invalid(f"{self.what}: control character {bad.group()!r}")
        return text

    def _decode(self, obj, context, path):
        if len(obj) > self.maximum:
            raise Invalid(f"{self.what}: {len(obj)} bytes, more than {self.maximum}")
        try:
            text = obj.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Invalid(f"{self.what}: invalid UTF-8 at byte {exc.start}") from None
        return self._check(obj, text)

    def _encode(self, obj, context, path):
        if not isinstance(obj, str):
            raise Invalid(f"{self.what}: expected str, got {type(obj).__name__}")
        try:
            raw = obj.encode("utf-8")
        except UnicodeEncodeError:
            raise Invalid(f"{self.what}: not encodable as UTF-8 (lone surrogate)") from None
        self._check(raw, obj)
        return raw


class Blob(cs.Adapter):
    """Opaque bytes: behind a length prefix, or (prefix None) the rest of the payload."""

    def __init__(self, prefix: cs.Construct | None, maximum: int, what: str, sizes: tuple = ()) -> None:
        super().__init__(cs.GreedyBytes if prefix is None else cs.Prefixed(prefix, cs.GreedyBytes))
        self.maximum, self.what, self.sizes = maximum, what, sizes

    def _check(self, obj: bytes) -> bytes:
        if len(obj) > self.maximum:
            raise Invalid(f"{self.what}: {len(obj)} bytes, more than {self.maximum}", ErrorCode.TOO_LARGE)
        if self.sizes and len(obj) not in self.sizes:
            raise Invalid(f"{self.what}: {len(obj)} bytes, not one of {self.sizes}")
        return obj

    def _decode(self, obj, context, path):
        return self._check(obj)

    def _encode(self, obj, context, path):
        if not isinstance(obj, bytes | bytearray | memoryview):
            raise Invalid(f"{self.what}: expected bytes, got {type(obj).__name__}")
        return self._check(bytes(obj))


class Fixed(cs.Adapter):
    """Exactly ``size`` opaque bytes."""

    def __init__(self, size: int, what: str) -> None:
        super().__init__(cs.Bytes(size))
        self.size, self.what = size, what

    def _decode(self, obj, context, path):
        return obj

    def _encode(self, obj, context, path):
        if not isinstance(obj, bytes | bytearray) or len(obj) != self.size:
            raise Invalid(f"{self.what}: expected {self.size} bytes")
        return bytes(obj)


class Hex(cs.Adapter):
    """``size`` bytes on the wire, lowercase hex in the event (a sha256)."""

    def __init__(self, size: int, what: str) -> None:
        super().__init__(cs.Bytes(size))
        self.size, self.what = size, what

    def _decode(self, obj, context, path):
        return obj.hex()

    def _encode(self, obj, context, path):
        if not isinstance(obj, str) or len(obj) != 2 * self.size or not HEX_RE.fullmatch(obj):
            raise Invalid(f"{self.what}: expected {2 * self.size} hex digits, got {short(obj)}")
        return bytes.fromhex(obj)


class ColonHex(cs.Adapter):
    """Bytes on the wire, uppercase colon hex in the event: MACs and other hardware addresses."""

    def __init__(self, subcon: cs.Construct, pattern: re.Pattern, expected: str, what: str) -> None:
        super().__init__(subcon)
        self.pattern, self.expected, self.what = pattern, expected, what

    def _decode(self, obj, context, path):
        if len(obj) > MAX_HWADDR:
            raise Invalid(f"{self.what}: {len(obj)} bytes, more than {MAX_HWADDR}")
        return ":".join(f"{b:02X}" for b in obj)

    def _encode(self, obj, context, path):
        if not isinstance(obj, str) or not self.pattern.fullmatch(obj):
            raise Invalid(f"{self.what} {short(obj)} is not {self.expected}")
        return bytes.fromhex(obj.replace(":", ""))


def Mac(what: str) -> ColonHex:  # noqa: N802 - reads like the other field types
    """A 6-byte Ethernet MAC on the wire, ``AA:BB:CC:DD:EE:FF`` (uppercase) in the event."""
    return ColonHex(cs.Bytes(6), MAC_RE, "a MAC address AA:BB:CC:DD:EE:FF", what)


def HwAddr(what: str) -> ColonHex:  # noqa: N802
    """A hardware address of 0-32 bytes behind a u8 length."""
    expected = "a hardware address (hex octets joined by :)"
    return ColonHex(cs.Prefixed(cs.Int8ub, cs.GreedyBytes), HWADDR_RE, expected, what)


class Uuid(cs.Adapter):
    """16 bytes on the wire (all zero: unknown), canonical lowercase text or "" in the event."""

    def __init__(self, what: str) -> None:
        super().__init__(cs.Bytes(16))
        self.what = what

    def _decode(self, obj, context, path):
        return "" if obj == bytes(16) else str(uuid.UUID(bytes=obj))

    def _encode(self, obj, context, path):
        if obj == "":
            return bytes(16)
        try:
            return uuid.UUID(obj).bytes
        except (TypeError, ValueError, AttributeError):
            raise Invalid(f"{self.what} {short(obj)} is not a UUID") from None


class List(cs.Construct):
    """A count prefix (checked against ``maximum`` before any item is read), then the items."""

    def __init__(self, prefix: cs.Construct, item: cs.Construct, maximum: int, what: str, minimum: int = 0):
        super().__init__()
        self.prefix, self.item, self.maximum, self.minimum, self.what = prefix, item, maximum, minimum, what

    def _count(self, n: int) -> int:
        if n > self.maximum:
            raise Invalid(f"{self.what}: {n} entries, more than {self.maximum}", ErrorCode.TOO_LARGE)
        if n < self.minimum:
            raise Invalid(f"{self.what}: {n} entries, fewer than {self.minimum}")
        return n

    def _parse(self, stream, context, path):
        n = self._count(self.prefix._parsereport(stream, context, path))
        return tuple(self.item._parsereport(stream, context, path) for _ in range(n))

    def _build(self, obj, stream, context, path):
        if not isinstance(obj, list | tuple):
            raise Invalid(f"{self.what}: expected a tuple, got {type(obj).__name__}")
        self.prefix._build(self._count(len(obj)), stream, context, path)
        for item in obj:
            self.item._build(item, stream, context, path)
        return obj

    def _sizeof(self, context, path):
        raise cs.SizeofError(path=path)


class Record(cs.Adapter):
    """A construct Struct in the wire, a frozen dataclass in the event."""

    def __init__(self, subcon: cs.Construct, cls: type) -> None:
        super().__init__(subcon)
        self.cls = cls
        self.names = [f.name for f in fields(cls)]

    def _decode(self, obj, context, path):
        return self.cls(**{name: obj[name] for name in self.names})

    def _encode(self, obj, context, path):
        if not isinstance(obj, self.cls):
            raise Invalid(f"expected {self.cls.__name__}, got {type(obj).__name__}")
        return {name: getattr(obj, name) for name in self.names}


class ChunkTable(cs.Construct):
    """u32 count (checked first), then count x (csize u64, usize u64, sha256[32]).

    In the event each chunk is an ``entry_cls(offset, csize, usize, sha256_hex)``; on the wire
    the offset is implied, since chunks are contiguous from 0.
    """

    ENTRY = struct.Struct(">QQ32s")

    def __init__(self, entry_cls: type) -> None:
        super().__init__()
        self.entry_cls = entry_cls

    def _parse(self, stream, context, path):
        (count,) = struct.unpack(">I", stream_read(stream, 4, path))
        if count > MAX_CHUNKS:
            raise Invalid(f"chunk table: {count} entries, more than {MAX_CHUNKS}", ErrorCode.TOO_LARGE)
        raw = stream_read(stream, count * CHUNK_ENTRY_SIZE, path)
        chunks = []
        offset = 0
        for csize, usize, digest in self.ENTRY.iter_unpack(raw):
            if not 1 <= csize <= MAX_OBJECT_SIZE or usize > I63:
                raise Invalid(f"chunk {len(chunks)}: csize {csize} / usize {usize} out of range")
            chunks.append(self.entry_cls(offset, csize, usize, digest.hex()))
            offset += csize
        return tuple(chunks)

    def _build(self, obj, stream, context, path):
        if not isinstance(obj, list | tuple):
            raise Invalid(f"chunk table: expected a tuple, got {type(obj).__name__}")
        if len(obj) > MAX_CHUNKS:
            raise Invalid(f"chunk table: {len(obj)} entries, more than {MAX_CHUNKS}", ErrorCode.TOO_LARGE)
        out = [struct.pack(">I", len(obj))]
        offset = 0
        for i, chunk in enumerate(obj):
            if not isinstance(chunk, self.entry_cls):
                raise Invalid(f"chunk {i}: expected {self.entry_cls.__name__}, got {type(chunk).__name__}")
            csize, usize = int_value(chunk.csize, "csize"), int_value(chunk.usize, "usize")
            if int_value(chunk.offset, "offset") != offset:
                raise Invalid(f"chunk {i}: offset {chunk.offset}, expected {offset} (chunks are contiguous)")
            if not 1 <= csize <= MAX_OBJECT_SIZE or not 0 <= usize <= I63:
                raise Invalid(f"chunk {i}: csize {csize} / usize {usize} out of range")
            if (
                not isinstance(chunk.sha256, str)
                or len(chunk.sha256) != 64
                or not HEX_RE.fullmatch(chunk.sha256)
            ):
                raise Invalid(f"chunk {i}: sha256 {short(chunk.sha256)} is not 64 hex digits")
            out.append(self.ENTRY.pack(csize, usize, bytes.fromhex(chunk.sha256)))
            offset += csize
        data = b"".join(out)
        stream_write(stream, data, len(data), path)
        return obj

    def _sizeof(self, context, path):
        raise cs.SizeofError(path=path)
