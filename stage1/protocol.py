"""The node <-> master wire protocol: frames, messages and a sans-IO state machine for each side.

``docs/protocol.md`` is the specification, byte by byte; this module is its one implementation,
shared by perceusd, the stage-one program, provisiond and the simulator. It imports only the
standard library and construct, because it is frozen into the stage-one initramfs.

Layers, bottom up:

* **Frames** (:func:`encode_frame`, :func:`decode_frame`): a 12-byte header (magic, protocol
  version, type, flags, payload length), at most :data:`MAX_FRAME_PAYLOAD` bytes of payload,
  and a CRC-32 of header and payload.
* **Messages** (:class:`Message` subclasses, :func:`encode_message`, :func:`decode_payload`):
  one payload layout per type, each a construct ``Struct``; a message larger than one frame
  (a SCRIPT, a big IMAGE_OFFER) is carried in several frames chained with :data:`FLAG_MORE`.
* **Raw bytes**: after an IMAGE_DATA frame the master sends exactly ``length`` bytes that are
  not framed at all, so it can ``sendfile`` them; then framing resumes.
* **Sessions** (:class:`NodeConnection`, :class:`MasterConnection`), in the style of h11:
  ``receive_data(bytes)`` then ``next_event()`` until :data:`NEED_DATA`; ``send(event)``
  returns the bytes to write. Nothing here touches a socket or a clock: the I/O layer reads
  :attr:`Connection.timeout` to know how long to wait for the peer.

Totality: whatever bytes a peer sends, ``next_event`` returns events or raises
:class:`RemoteProtocolError` (never another exception), having buffered at most one bounded
message. The I/O layer answers a :class:`ProtocolError` with ``send(exc.to_event())`` (an
ERROR frame) and closes. Sending something out of turn or out of bounds raises
:class:`LocalProtocolError` and changes nothing.
"""

import enum
import hashlib
import hmac
import os
import re
import struct
import uuid
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import ClassVar, Final, NamedTuple

import construct as cs
from construct.core import stream_read, stream_write

__all__ = [
    "CLOSED",
    "DEFAULT_PORT",
    "FLAG_MORE",
    "MAGIC",
    "MAX_ASSET_TAG",
    "MAX_CHUNKS",
    "MAX_ERROR_MESSAGE",
    "MAX_FRAME_PAYLOAD",
    "MAX_HOSTNAME",
    "MAX_HWADDR",
    "MAX_IFNAME",
    "MAX_INTERFACES",
    "MAX_KERNEL_ARGS",
    "MAX_LOG",
    "MAX_MESSAGE",
    "MAX_OBJECT_SIZE",
    "MAX_OFFER",
    "MAX_OUTPUT_TAIL",
    "MAX_REASON",
    "MAX_SCRIPT",
    "MAX_SERIAL",
    "MAX_STATE",
    "MAX_VERSIONS",
    "MAX_VNFS_NAME",
    "MAX_WAIT",
    "MESSAGES",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "TIMEOUTS",
    "Assign",
    "AuthChallenge",
    "AuthResponse",
    "Bye",
    "ChunkEntry",
    "Connection",
    "Error",
    "ErrorCode",
    "Event",
    "Follows",
    "Frame",
    "Hello",
    "ImageData",
    "ImageOffer",
    "ImageRequest",
    "Interface",
    "LocalProtocolError",
    "Log",
    "MasterConnection",
    "Message",
    "MessageType",
    "NodeConnection",
    "ObjectKind",
    "Ping",
    "Pong",
    "ProtocolError",
    "RawBytes",
    "RemoteProtocolError",
    "Role",
    "Script",
    "ScriptResult",
    "State",
    "Wait",
    "check_site_key",
    "decode_frame",
    "decode_payload",
    "encode_frame",
    "encode_message",
    "encode_payload",
    "hello_digest",
    "master_proof",
    "node_response",
    "timeout_for_state",
]

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)  # every version this code speaks, ascending
DEFAULT_PORT: Final = 987  # the original Perceus port

MAGIC: Final = b"\x89PRC"  # high bit first: 7-bit mangling and text protocols fail at byte 0
HEADER_SIZE: Final = 12
TRAILER_SIZE: Final = 4  # CRC-32 (zlib / IEEE 802.3) of header + payload, big-endian
FLAG_MORE: Final = 0x0001  # another frame of the same message follows
KNOWN_FLAGS: Final = FLAG_MORE

# --- Bounds: every length a peer can state is checked against one of these first. ---
MAX_FRAME_PAYLOAD: Final = 1 << 20  # bytes of payload in one frame
MAX_SCRIPT: Final = 4 << 20  # bytes of nodescript in one SCRIPT message (several frames)
MAX_CHUNKS: Final = 65536  # entries in an IMAGE_OFFER chunk table
CHUNK_ENTRY_SIZE: Final = 48  # csize u64, usize u64, sha256
MAX_OFFER: Final = 4 << 20  # bytes of IMAGE_OFFER payload (several frames)
MAX_VERSIONS: Final = 16
MAX_STATE: Final = 32
MAX_HOSTNAME: Final = 63
MAX_VNFS_NAME: Final = 128
MAX_IFNAME: Final = 15  # IFNAMSIZ - 1
MAX_HWADDR: Final = 32  # MAX_ADDR_LEN: Ethernet is 6, InfiniBand 20
MAX_INTERFACES: Final = 64
MAX_SERIAL: Final = 128
MAX_ASSET_TAG: Final = 128
MAX_KERNEL_ARGS: Final = 4096
MAX_OUTPUT_TAIL: Final = 64 << 10
MAX_LOG: Final = 4096
MAX_ERROR_MESSAGE: Final = 1024
MAX_REASON: Final = 256
MAX_WAIT: Final = 86400  # seconds
MAX_OBJECT_SIZE: Final = 1 << 40  # image, overlay or kernel
NONCE_SIZE: Final = 32
TAG_SIZE: Final = 32  # HMAC-SHA256
MIN_SITE_KEY: Final = 16
MAX_SITE_KEY: Final = 4096
_U32: Final = (1 << 32) - 1
_U64: Final = (1 << 64) - 1
_I63: Final = (1 << 63) - 1

assert 1024 + MAX_CHUNKS * CHUNK_ENTRY_SIZE + MAX_KERNEL_ARGS + MAX_VNFS_NAME < MAX_OFFER


class MessageType(enum.IntEnum):
    """The ``type`` byte of a frame header."""

    HELLO = 0x01
    AUTH_CHALLENGE = 0x02
    AUTH_RESPONSE = 0x03
    ASSIGN = 0x04
    WAIT = 0x05
    SCRIPT = 0x06
    SCRIPT_RESULT = 0x07
    IMAGE_OFFER = 0x08
    IMAGE_REQUEST = 0x09
    IMAGE_DATA = 0x0A
    LOG = 0x0B
    PING = 0x0C
    PONG = 0x0D
    ERROR = 0x0E
    BYE = 0x0F


class ErrorCode(enum.IntEnum):
    """The ``code`` of an ERROR message (and of every :class:`ProtocolError`)."""

    BAD_MAGIC = 1
    UNSUPPORTED_VERSION = 2
    UNKNOWN_TYPE = 3
    BAD_CRC = 4
    TOO_LARGE = 5
    MALFORMED = 6
    UNEXPECTED = 7
    BAD_RANGE = 8
    AUTH_REQUIRED = 9
    AUTH_FAILED = 10
    TIMEOUT = 11
    CONNECTION_LOST = 12
    REFUSED = 13
    CHECKSUM = 14
    INTERNAL = 15


class Role(enum.Enum):
    NODE = "node"
    MASTER = "master"


class ObjectKind(enum.IntEnum):
    """What an IMAGE_REQUEST / IMAGE_DATA transfers."""

    IMAGE = 1  # the VNFS root tree: zstd frames of cpio archives (the chunk table's)
    OVERLAY = 2  # the per-node overlay archive, unpacked after the image
    KERNEL = 3  # the VNFS kernel, for kexec


class Follows(enum.IntFlag):
    """What an ASSIGN announces: the messages the master sends next, in this order."""

    NOTHING = 0
    SCRIPT = 1
    IMAGE = 2


class State(enum.Enum):
    """Where a session is; both ends step through the same states."""

    HELLO = "hello"  # node: HELLO
    ANSWER = "answer"  # master: AUTH_CHALLENGE | ASSIGN | WAIT
    AUTH = "auth"  # node: AUTH_RESPONSE
    ASSIGN = "assign"  # master: ASSIGN | WAIT
    SCRIPT = "script"  # master: SCRIPT
    SCRIPT_RESULT = "script_result"  # node: SCRIPT_RESULT (while it runs the script)
    OFFER = "offer"  # master: IMAGE_OFFER
    REQUEST = "request"  # node: IMAGE_REQUEST | BYE
    IMAGE_DATA = "image_data"  # master: IMAGE_DATA
    RAW = "raw"  # master: the raw bytes IMAGE_DATA announced
    FINISH = "finish"  # node: BYE
    DONE = "done"  # ended well (BYE or WAIT)
    FAILED = "failed"  # ended by ERROR or a protocol error


# Idle seconds a side waits for the peer's next move in each state (the I/O layer enforces
# them; in RAW the time between received bytes). SCRIPT_RESULT covers the nodescript's run.
TIMEOUTS: Final = {
    State.HELLO: 30.0,
    State.ANSWER: 60.0,
    State.AUTH: 30.0,
    State.ASSIGN: 60.0,
    State.SCRIPT: 60.0,
    State.SCRIPT_RESULT: 1800.0,
    State.OFFER: 120.0,
    State.REQUEST: 60.0,
    State.IMAGE_DATA: 60.0,
    State.RAW: 60.0,
    State.FINISH: 60.0,
}


def timeout_for_state(state: State) -> float | None:
    """Seconds the waiting side allows the speaking side in ``state`` (None once ended)."""
    return TIMEOUTS.get(state)


# --- Errors ---


class ProtocolError(Exception):
    """A broken rule of the protocol: ``code`` (an :class:`ErrorCode`) and a one-line message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = _error_code(code)
        self.message = message

    def to_event(self) -> "Error":
        """The ERROR message that tells the peer about this error."""
        return Error(int(self.code), _clip(_ONE_LINE_BAD.sub("?", self.message), MAX_ERROR_MESSAGE))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class LocalProtocolError(ProtocolError):
    """This side tried to send something the protocol forbids; nothing was sent."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; the session is over."""


class _Invalid(Exception):
    """A field or message breaks a rule; becomes a Local- or RemoteProtocolError."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.MALFORMED) -> None:
        super().__init__(message)
        self.code = code


def _error_code(code: int) -> int:
    try:
        return ErrorCode(code)
    except ValueError:
        return code


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw.decode("utf-8")
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


# --- Field types (construct adapters that check bounds both ways) ---

_ONE_LINE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters other than tab
_MULTI_LINE_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # ... other than tab, CR, LF
_STATE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_VNFS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_IFNAME_RE = re.compile(r"(?!\.\.?\Z)[!-.0-9;-~]{1,15}")  # printable ASCII without / and :, not . or ..
_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
_HWADDR_RE = re.compile(r"([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){0,31})?")
_HEX_RE = re.compile(r"[0-9a-fA-F]*")


def _int_value(obj: object, what: str) -> int:
    if not isinstance(obj, int) or isinstance(obj, bool):
        raise _Invalid(f"{what}: expected an integer, got {type(obj).__name__}")
    return int(obj)


class _Int(cs.Adapter):
    """An integer field with an inclusive range."""

    def __init__(self, subcon: cs.Construct, lo: int, hi: int, what: str) -> None:
        super().__init__(subcon)
        self.lo, self.hi, self.what = lo, hi, what

    def _check(self, value: int) -> int:
        if not self.lo <= value <= self.hi:
            raise _Invalid(f"{self.what} {value} is outside {self.lo}..{self.hi}")
        return value

    def _decode(self, obj, context, path):
        return self._check(obj)

    def _encode(self, obj, context, path):
        return self._check(_int_value(obj, self.what))


class _Enum(cs.Adapter):
    """An integer field naming a member of an IntEnum."""

    def __init__(self, subcon: cs.Construct, enum_cls: type[enum.IntEnum], what: str) -> None:
        super().__init__(subcon)
        self.enum_cls, self.what = enum_cls, what

    def _decode(self, obj, context, path):
        try:
            return self.enum_cls(obj)
        except ValueError:
            known = ", ".join(f"{m.value} {m.name}" for m in self.enum_cls)
            raise _Invalid(f"{self.what} {obj} is unknown (known: {known})") from None

    def _encode(self, obj, context, path):
        return int(self._decode(_int_value(obj, self.what), context, path))


class _Flags(cs.Adapter):
    """An integer field of IntFlag bits; unknown bits are refused."""

    def __init__(self, subcon: cs.Construct, flag_cls: type[enum.IntFlag], what: str) -> None:
        super().__init__(subcon)
        self.flag_cls, self.what = flag_cls, what
        self.known = 0
        for member in flag_cls:
            self.known |= member.value

    def _decode(self, obj, context, path):
        if obj & ~self.known:
            raise _Invalid(f"{self.what} 0x{obj:x} has unknown bits 0x{obj & ~self.known:x}")
        return self.flag_cls(obj)

    def _encode(self, obj, context, path):
        return int(self._decode(_int_value(obj, self.what), context, path))


class _Text(cs.Adapter):
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
        self.bad = _MULTI_LINE_BAD if multiline else _ONE_LINE_BAD

    def _check(self, raw: bytes, text: str) -> str:
        if len(raw) > self.maximum:
            raise _Invalid(f"{self.what}: {len(raw)} bytes, more than {self.maximum}")
        if not text:
            if not self.empty:
                raise _Invalid(f"{self.what}: empty")
            return text
        if self.pattern is not None and not self.pattern.fullmatch(text):
            raise _Invalid(f"{self.what} {_short(text)} is not of the form {self.pattern.pattern}")
        bad = self.bad.search(text)
        if bad:
            raise _Invalid(f"{self.what}: control character {bad.group()!r}")
        return text

    def _decode(self, obj, context, path):
        if len(obj) > self.maximum:
            raise _Invalid(f"{self.what}: {len(obj)} bytes, more than {self.maximum}")
        try:
            text = obj.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Invalid(f"{self.what}: invalid UTF-8 at byte {exc.start}") from None
        return self._check(obj, text)

    def _encode(self, obj, context, path):
        if not isinstance(obj, str):
            raise _Invalid(f"{self.what}: expected str, got {type(obj).__name__}")
        try:
            raw = obj.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid(f"{self.what}: not encodable as UTF-8 (lone surrogate)") from None
        self._check(raw, obj)
        return raw


class _Blob(cs.Adapter):
    """Opaque bytes: behind a length prefix, or (prefix None) the rest of the payload."""

    def __init__(self, prefix: cs.Construct | None, maximum: int, what: str, sizes: tuple = ()) -> None:
        super().__init__(cs.GreedyBytes if prefix is None else cs.Prefixed(prefix, cs.GreedyBytes))
        self.maximum, self.what, self.sizes = maximum, what, sizes

    def _check(self, obj: bytes) -> bytes:
        if len(obj) > self.maximum:
            raise _Invalid(f"{self.what}: {len(obj)} bytes, more than {self.maximum}", ErrorCode.TOO_LARGE)
        if self.sizes and len(obj) not in self.sizes:
            raise _Invalid(f"{self.what}: {len(obj)} bytes, not one of {self.sizes}")
        return obj

    def _decode(self, obj, context, path):
        return self._check(obj)

    def _encode(self, obj, context, path):
        if not isinstance(obj, bytes | bytearray | memoryview):
            raise _Invalid(f"{self.what}: expected bytes, got {type(obj).__name__}")
        return self._check(bytes(obj))


class _Fixed(cs.Adapter):
    """Exactly ``size`` opaque bytes."""

    def __init__(self, size: int, what: str) -> None:
        super().__init__(cs.Bytes(size))
        self.size, self.what = size, what

    def _decode(self, obj, context, path):
        return obj

    def _encode(self, obj, context, path):
        if not isinstance(obj, bytes | bytearray) or len(obj) != self.size:
            raise _Invalid(f"{self.what}: expected {self.size} bytes")
        return bytes(obj)


class _Hex(cs.Adapter):
    """``size`` bytes on the wire, lowercase hex in the event (a sha256)."""

    def __init__(self, size: int, what: str) -> None:
        super().__init__(cs.Bytes(size))
        self.size, self.what = size, what

    def _decode(self, obj, context, path):
        return obj.hex()

    def _encode(self, obj, context, path):
        if not isinstance(obj, str) or len(obj) != 2 * self.size or not _HEX_RE.fullmatch(obj):
            raise _Invalid(f"{self.what}: expected {2 * self.size} hex digits, got {_short(obj)}")
        return bytes.fromhex(obj)


def _colon_hex(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)


class _ColonHex(cs.Adapter):
    """Bytes on the wire, uppercase colon hex in the event: MACs and other hardware addresses."""

    def __init__(self, subcon: cs.Construct, pattern: re.Pattern, expected: str, what: str) -> None:
        super().__init__(subcon)
        self.pattern, self.expected, self.what = pattern, expected, what

    def _decode(self, obj, context, path):
        if len(obj) > MAX_HWADDR:
            raise _Invalid(f"{self.what}: {len(obj)} bytes, more than {MAX_HWADDR}")
        return _colon_hex(obj)

    def _encode(self, obj, context, path):
        if not isinstance(obj, str) or not self.pattern.fullmatch(obj):
            raise _Invalid(f"{self.what} {_short(obj)} is not {self.expected}")
        return bytes.fromhex(obj.replace(":", ""))


def _Mac(what: str) -> _ColonHex:  # noqa: N802 - reads like the other field types
    """A 6-byte Ethernet MAC on the wire, ``AA:BB:CC:DD:EE:FF`` (uppercase) in the event."""
    return _ColonHex(cs.Bytes(6), _MAC_RE, "a MAC address AA:BB:CC:DD:EE:FF", what)


def _HwAddr(what: str) -> _ColonHex:  # noqa: N802
    """A hardware address of 0-32 bytes behind a u8 length."""
    expected = "a hardware address (hex octets joined by :)"
    return _ColonHex(cs.Prefixed(cs.Int8ub, cs.GreedyBytes), _HWADDR_RE, expected, what)


class _Uuid(cs.Adapter):
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
            raise _Invalid(f"{self.what} {_short(obj)} is not a UUID") from None


class _List(cs.Construct):
    """A count prefix (checked against ``maximum`` before any item is read), then the items."""

    def __init__(self, prefix: cs.Construct, item: cs.Construct, maximum: int, what: str, minimum: int = 0):
        super().__init__()
        self.prefix, self.item, self.maximum, self.minimum, self.what = prefix, item, maximum, minimum, what

    def _count(self, n: int) -> int:
        if n > self.maximum:
            raise _Invalid(f"{self.what}: {n} entries, more than {self.maximum}", ErrorCode.TOO_LARGE)
        if n < self.minimum:
            raise _Invalid(f"{self.what}: {n} entries, fewer than {self.minimum}")
        return n

    def _parse(self, stream, context, path):
        n = self._count(self.prefix._parsereport(stream, context, path))
        return tuple(self.item._parsereport(stream, context, path) for _ in range(n))

    def _build(self, obj, stream, context, path):
        if not isinstance(obj, list | tuple):
            raise _Invalid(f"{self.what}: expected a tuple, got {type(obj).__name__}")
        self.prefix._build(self._count(len(obj)), stream, context, path)
        for item in obj:
            self.item._build(item, stream, context, path)
        return obj

    def _sizeof(self, context, path):
        raise cs.SizeofError(path=path)


class _Record(cs.Adapter):
    """A construct Struct in the wire, a frozen dataclass in the event."""

    def __init__(self, subcon: cs.Construct, cls: type) -> None:
        super().__init__(subcon)
        self.cls = cls
        self.names = [f.name for f in fields(cls)]

    def _decode(self, obj, context, path):
        return self.cls(**{name: obj[name] for name in self.names})

    def _encode(self, obj, context, path):
        if not isinstance(obj, self.cls):
            raise _Invalid(f"expected {self.cls.__name__}, got {type(obj).__name__}")
        return {name: getattr(obj, name) for name in self.names}


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- Events ---


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Sentinel("NEED_DATA")  # next_event: feed more bytes with receive_data
CLOSED: Final = _Sentinel("CLOSED")  # next_event: the session has ended; close the connection


@dataclass(frozen=True)
class Event:
    """What ``next_event`` returns and ``send`` takes."""


@dataclass(frozen=True)
class Message(Event):
    """An event carried by frames of one type."""

    TYPE: ClassVar[MessageType]
    STRUCT: ClassVar[cs.Construct]

    def _check(self) -> None:
        """Rules across fields (raise _Invalid); the field types check the rest."""


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


@dataclass(frozen=True)
class Interface:
    """One network interface of a node: kernel name and hardware address."""

    name: str
    hwaddr: str = ""


_INTERFACE = _Record(
    cs.Struct(
        "name" / _Text(cs.Int8ub, MAX_IFNAME, "interface name", _IFNAME_RE, empty=False),
        "hwaddr" / _HwAddr("interface hardware address"),
    ),
    Interface,
)


@dataclass(frozen=True)
class Hello(Message):
    """Node -> master, first: who I am (NodeID = MAC), what state I am in, what I am made of."""

    TYPE: ClassVar = MessageType.HELLO
    nodeid: str  # MAC of the interface the node talks on, AA:BB:CC:DD:EE:FF
    state: str  # provisional state: init, ready, boot, halt, reboot, ...
    versions: tuple[int, ...] = SUPPORTED_VERSIONS  # protocol versions the node speaks
    node_nonce: bytes = field(default_factory=new_nonce)  # fresh random per session (auth)
    interfaces: tuple[Interface, ...] = ()
    cpus: int = 0
    memory: int = 0  # bytes
    smbios_uuid: str = ""  # "" when unknown
    serial: str = ""
    asset_tag: str = ""

    STRUCT: ClassVar = cs.Struct(
        "versions" / _List(cs.Int8ub, _Int(cs.Int16ub, 1, 0xFFFF, "version"), MAX_VERSIONS, "versions", 1),
        "state" / _Text(cs.Int8ub, MAX_STATE, "state", _STATE_RE, empty=False),
        "nodeid" / _Mac("nodeid"),
        "node_nonce" / _Fixed(NONCE_SIZE, "node nonce"),
        "cpus" / _Int(cs.Int32ub, 0, _U32, "cpus"),
        "memory" / _Int(cs.Int64ub, 0, _U64, "memory"),
        "smbios_uuid" / _Uuid("SMBIOS UUID"),
        "serial" / _Text(cs.Int8ub, MAX_SERIAL, "serial"),
        "asset_tag" / _Text(cs.Int8ub, MAX_ASSET_TAG, "asset tag"),
        "interfaces" / _List(cs.Int8ub, _INTERFACE, MAX_INTERFACES, "interfaces"),
        cs.Terminated,
    )

    def __post_init__(self) -> None:
        _tuple_fields(self, "versions", "interfaces")


@dataclass(frozen=True)
class AuthChallenge(Message):
    """Master -> node: a fresh nonce, and the master's proof that it holds the site key."""

    TYPE: ClassVar = MessageType.AUTH_CHALLENGE
    nonce: bytes
    proof: bytes  # master_proof(key, hello_digest(HELLO payload), nonce)

    STRUCT: ClassVar = cs.Struct(
        "nonce" / _Fixed(NONCE_SIZE, "nonce"),
        "proof" / _Fixed(TAG_SIZE, "proof"),
        cs.Terminated,
    )


@dataclass(frozen=True)
class AuthResponse(Message):
    """Node -> master: node_response(key, hello_digest, nonce), or empty for a node without a key."""

    TYPE: ClassVar = MessageType.AUTH_RESPONSE
    tag: bytes = b""

    STRUCT: ClassVar = cs.Struct(
        "tag" / _Blob(cs.Int8ub, TAG_SIZE, "tag", (0, TAG_SIZE)),
        cs.Terminated,
    )


@dataclass(frozen=True)
class Assign(Message):
    """Master -> node: your name, your VNFS, and what I send next."""

    TYPE: ClassVar = MessageType.ASSIGN
    name: str
    vnfs: str = ""
    follows: Follows = Follows.NOTHING

    STRUCT: ClassVar = cs.Struct(
        "name" / _Text(cs.Int8ub, MAX_HOSTNAME, "node name", _HOSTNAME_RE, empty=False),
        "vnfs" / _Text(cs.Int8ub, MAX_VNFS_NAME, "VNFS name", _VNFS_RE),
        "follows" / _Flags(cs.Int8ub, Follows, "follows"),
        cs.Terminated,
    )

    def _check(self) -> None:
        if Follows.IMAGE in Follows(_int_value(self.follows, "follows") & 3) and not self.vnfs:
            raise _Invalid("ASSIGN announces an image but names no VNFS")


@dataclass(frozen=True)
class Wait(Message):
    """Master -> node: nothing for you now (disabled, no VNFS, busy); connect again in N seconds."""

    TYPE: ClassVar = MessageType.WAIT
    seconds: int
    reason: str = ""

    STRUCT: ClassVar = cs.Struct(
        "seconds" / _Int(cs.Int32ub, 1, MAX_WAIT, "seconds"),
        "reason" / _Text(cs.Int16ub, MAX_REASON, "reason"),
        cs.Terminated,
    )


@dataclass(frozen=True)
class Script(Message):
    """Master -> node: the assembled nodescript, to run as is (one message, up to 4 frames + 1)."""

    TYPE: ClassVar = MessageType.SCRIPT
    body: bytes

    STRUCT: ClassVar = cs.Struct("body" / _Blob(None, MAX_SCRIPT, "script"))


@dataclass(frozen=True)
class ScriptResult(Message):
    """Node -> master: the script's exit status (negative: killed by that signal) and output tail."""

    TYPE: ClassVar = MessageType.SCRIPT_RESULT
    status: int
    output_tail: bytes = b""

    STRUCT: ClassVar = cs.Struct(
        "status" / _Int(cs.Int32sb, -(1 << 31), (1 << 31) - 1, "status"),
        "output_tail" / _Blob(cs.Int32ub, MAX_OUTPUT_TAIL, "output tail"),
        cs.Terminated,
    )


@dataclass(frozen=True)
class ChunkEntry:
    """One entry of an image's chunk table: a zstd frame of the image, which is one cpio archive.

    Mirrors ``perceus.imagefmt.image.Chunk`` (``ChunkEntry(**chunk.as_dict())``) without
    importing it. On the wire the offset is implied: chunks are contiguous from 0.
    """

    offset: int
    csize: int
    usize: int
    sha256: str  # hex, of the compressed frame

    def as_dict(self) -> dict:
        return {"offset": self.offset, "csize": self.csize, "usize": self.usize, "sha256": self.sha256}


class _ChunkTable(cs.Construct):
    """u32 count (checked first), then count x (csize u64, usize u64, sha256[32])."""

    ENTRY = struct.Struct(">QQ32s")

    def _parse(self, stream, context, path):
        (count,) = struct.unpack(">I", stream_read(stream, 4, path))
        if count > MAX_CHUNKS:
            raise _Invalid(f"chunk table: {count} entries, more than {MAX_CHUNKS}", ErrorCode.TOO_LARGE)
        raw = stream_read(stream, count * CHUNK_ENTRY_SIZE, path)
        chunks = []
        offset = 0
        for csize, usize, digest in self.ENTRY.iter_unpack(raw):
            if not 1 <= csize <= MAX_OBJECT_SIZE or usize > _I63:
                raise _Invalid(f"chunk {len(chunks)}: csize {csize} / usize {usize} out of range")
            chunks.append(ChunkEntry(offset, csize, usize, digest.hex()))
            offset += csize
        return tuple(chunks)

    def _build(self, obj, stream, context, path):
        if not isinstance(obj, list | tuple):
            raise _Invalid(f"chunk table: expected a tuple, got {type(obj).__name__}")
        if len(obj) > MAX_CHUNKS:
            raise _Invalid(f"chunk table: {len(obj)} entries, more than {MAX_CHUNKS}", ErrorCode.TOO_LARGE)
        out = [struct.pack(">I", len(obj))]
        offset = 0
        for i, chunk in enumerate(obj):
            if not isinstance(chunk, ChunkEntry):
                raise _Invalid(f"chunk {i}: expected ChunkEntry, got {type(chunk).__name__}")
            csize, usize = _int_value(chunk.csize, "csize"), _int_value(chunk.usize, "usize")
            if _int_value(chunk.offset, "offset") != offset:
                raise _Invalid(f"chunk {i}: offset {chunk.offset}, expected {offset} (chunks are contiguous)")
            if not 1 <= csize <= MAX_OBJECT_SIZE or not 0 <= usize <= _I63:
                raise _Invalid(f"chunk {i}: csize {csize} / usize {usize} out of range")
            if (
                not isinstance(chunk.sha256, str)
                or len(chunk.sha256) != 64
                or not _HEX_RE.fullmatch(chunk.sha256)
            ):
                raise _Invalid(f"chunk {i}: sha256 {_short(chunk.sha256)} is not 64 hex digits")
            out.append(self.ENTRY.pack(csize, usize, bytes.fromhex(chunk.sha256)))
            offset += csize
        data = b"".join(out)
        stream_write(stream, data, len(data), path)
        return obj

    def _sizeof(self, context, path):
        raise cs.SizeofError(path=path)


_SIZE = _Int(cs.Int64ub, 0, MAX_OBJECT_SIZE, "size")


@dataclass(frozen=True)
class ImageOffer(Message):
    """Master -> node: what the node will boot: image (with chunk table), overlay, kernel, args."""

    TYPE: ClassVar = MessageType.IMAGE_OFFER
    vnfs: str
    image_size: int
    image_sha256: str
    chunks: tuple[ChunkEntry, ...]
    overlay_size: int
    overlay_sha256: str
    kernel_size: int
    kernel_sha256: str
    kernel_args: str = ""

    STRUCT: ClassVar = cs.Struct(
        "vnfs" / _Text(cs.Int8ub, MAX_VNFS_NAME, "VNFS name", _VNFS_RE, empty=False),
        "image_size" / _SIZE,
        "image_sha256" / _Hex(32, "image sha256"),
        "overlay_size" / _SIZE,
        "overlay_sha256" / _Hex(32, "overlay sha256"),
        "kernel_size" / _SIZE,
        "kernel_sha256" / _Hex(32, "kernel sha256"),
        "kernel_args" / _Text(cs.Int16ub, MAX_KERNEL_ARGS, "kernel args"),
        "chunks" / _ChunkTable(),
        cs.Terminated,
    )

    def __post_init__(self) -> None:
        _tuple_fields(self, "chunks")

    def _check(self) -> None:
        total = 0
        for chunk in self.chunks:
            total += chunk.csize if isinstance(chunk, ChunkEntry) and isinstance(chunk.csize, int) else 0
        if total != self.image_size:
            raise _Invalid(f"chunk table covers {total} bytes, the image has {self.image_size}")

    def size_of(self, kind: ObjectKind) -> int:
        """The size of one of the three objects offered."""
        if kind is ObjectKind.IMAGE:
            return self.image_size
        return self.overlay_size if kind is ObjectKind.OVERLAY else self.kernel_size

    def sha256_of(self, kind: ObjectKind) -> str:
        """The sha256 (hex) of one of the three objects offered."""
        if kind is ObjectKind.IMAGE:
            return self.image_sha256
        return self.overlay_sha256 if kind is ObjectKind.OVERLAY else self.kernel_sha256


_KIND = _Enum(cs.Int8ub, ObjectKind, "object")
# IMAGE_REQUEST and IMAGE_DATA: which object, from where, how many bytes.
_OBJECT_RANGE = cs.Struct(
    "kind" / _KIND,
    "offset" / _Int(cs.Int64ub, 0, MAX_OBJECT_SIZE, "offset"),
    "length" / _Int(cs.Int64ub, 0, MAX_OBJECT_SIZE, "length"),
    cs.Terminated,
)


@dataclass(frozen=True)
class ImageRequest(Message):
    """Node -> master: send ``length`` bytes (0: all the rest) of an object from ``offset``."""

    TYPE: ClassVar = MessageType.IMAGE_REQUEST
    kind: ObjectKind
    offset: int = 0
    length: int = 0

    STRUCT: ClassVar = _OBJECT_RANGE


@dataclass(frozen=True)
class ImageData(Message):
    """Master -> node: exactly ``length`` raw, unframed bytes of ``kind`` from ``offset`` follow."""

    TYPE: ClassVar = MessageType.IMAGE_DATA
    kind: ObjectKind
    offset: int
    length: int

    STRUCT: ClassVar = _OBJECT_RANGE


@dataclass(frozen=True)
class RawBytes(Event):
    """A piece of the raw bytes an IMAGE_DATA announced (pieces arrive in order, any size)."""

    data: bytes


@dataclass(frozen=True)
class Log(Message):
    """Either way, any time after HELLO: a line for the other side's log (syslog severity 0-7)."""

    TYPE: ClassVar = MessageType.LOG
    message: str
    level: int = 6  # informational

    STRUCT: ClassVar = cs.Struct(
        "level" / _Int(cs.Int8ub, 0, 7, "level"),
        "message" / _Text(cs.Int16ub, MAX_LOG, "log message", multiline=True),
        cs.Terminated,
    )


@dataclass(frozen=True)
class Ping(Message):
    """Either way, any time after HELLO: answer with a PONG carrying the same token."""

    TYPE: ClassVar = MessageType.PING
    token: int = 0

    STRUCT: ClassVar = cs.Struct("token" / _Int(cs.Int64ub, 0, _U64, "token"), cs.Terminated)


@dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar = MessageType.PONG
    token: int = 0

    STRUCT: ClassVar = cs.Struct("token" / _Int(cs.Int64ub, 0, _U64, "token"), cs.Terminated)


@dataclass(frozen=True)
class Error(Message):
    """Either way, any time: the session is over (``code`` is an :class:`ErrorCode` value)."""

    TYPE: ClassVar = MessageType.ERROR
    code: int
    message: str = ""

    STRUCT: ClassVar = cs.Struct(
        "code" / _Int(cs.Int16ub, 0, 0xFFFF, "code"),
        "message" / _Text(cs.Int16ub, MAX_ERROR_MESSAGE, "error message"),
        cs.Terminated,
    )


@dataclass(frozen=True)
class Bye(Message):
    """Node -> master: the session is complete."""

    TYPE: ClassVar = MessageType.BYE
    reason: str = ""

    STRUCT: ClassVar = cs.Struct("reason" / _Text(cs.Int16ub, MAX_REASON, "reason"), cs.Terminated)


def _tuple_fields(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, list):
            object.__setattr__(obj, name, tuple(value))


MESSAGES: Final[dict[MessageType, type[Message]]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        AuthChallenge,
        AuthResponse,
        Assign,
        Wait,
        Script,
        ScriptResult,
        ImageOffer,
        ImageRequest,
        ImageData,
        Log,
        Ping,
        Pong,
        Error,
        Bye,
    )
}
assert set(MESSAGES) == set(MessageType)

# Largest payload of one message (after reassembly of its frames).
MAX_MESSAGE: Final = {t: MAX_FRAME_PAYLOAD for t in MessageType} | {
    MessageType.SCRIPT: MAX_SCRIPT,
    MessageType.IMAGE_OFFER: MAX_OFFER,
}

_SENDERS: Final = (
    {t: frozenset({Role.NODE, Role.MASTER}) for t in MessageType}
    | {
        t: frozenset({Role.NODE})
        for t in (
            MessageType.HELLO,
            MessageType.AUTH_RESPONSE,
            MessageType.SCRIPT_RESULT,
            MessageType.IMAGE_REQUEST,
            MessageType.BYE,
        )
    }
    | {
        t: frozenset({Role.MASTER})
        for t in (
            MessageType.AUTH_CHALLENGE,
            MessageType.ASSIGN,
            MessageType.WAIT,
            MessageType.SCRIPT,
            MessageType.IMAGE_OFFER,
            MessageType.IMAGE_DATA,
        )
    }
)


# --- Frames ---

HEADER: Final = cs.Struct(
    "magic" / cs.Bytes(4),
    "version" / cs.Int8ub,
    "type" / cs.Int8ub,
    "flags" / cs.Int16ub,
    "length" / cs.Int32ub,
)
TRAILER: Final = cs.Struct("crc32" / cs.Int32ub)
assert HEADER.sizeof() == HEADER_SIZE and TRAILER.sizeof() == TRAILER_SIZE


class Frame(NamedTuple):
    version: int
    type: int
    flags: int
    payload: bytes


def _supported_types() -> str:
    return ", ".join(f"0x{t.value:02x} {t.name}" for t in MessageType)


def _supported_versions() -> str:
    return ", ".join(map(str, SUPPORTED_VERSIONS))


def encode_frame(type: int, payload: bytes, flags: int = 0, version: int = PROTOCOL_VERSION) -> bytes:
    """One frame, as is: no bound is checked beyond what the header fields can hold."""
    header = HEADER.build(
        {"magic": MAGIC, "version": version, "type": type, "flags": flags, "length": len(payload)}
    )
    crc = zlib.crc32(payload, zlib.crc32(header))
    return header + payload + TRAILER.build({"crc32": crc})


def _parse_header(buf: bytes | bytearray) -> cs.Container | None:
    """The checked header at the start of ``buf``; None if more bytes are needed."""
    if len(buf) < HEADER_SIZE:
        if bytes(buf[:4]) != MAGIC[: len(buf)]:
            raise RemoteProtocolError(
                ErrorCode.BAD_MAGIC, f"bad magic {bytes(buf[:4]).hex()}, expected {MAGIC.hex()}"
            )
        return None
    h = HEADER.parse(bytes(buf[:HEADER_SIZE]))
    if h.magic != MAGIC:
        raise RemoteProtocolError(ErrorCode.BAD_MAGIC, f"bad magic {h.magic.hex()}, expected {MAGIC.hex()}")
    if h.version not in SUPPORTED_VERSIONS:
        raise RemoteProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {h.version} is not supported; supported versions: {_supported_versions()}",
        )
    if h.type not in MESSAGES:
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type 0x{h.type:02x}; supported types: {_supported_types()}",
        )
    if h.flags & ~KNOWN_FLAGS:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED, f"reserved flag bits 0x{h.flags & ~KNOWN_FLAGS:04x} are set"
        )
    if h.length > MAX_FRAME_PAYLOAD:
        raise RemoteProtocolError(
            ErrorCode.TOO_LARGE, f"frame payload of {h.length} bytes, more than {MAX_FRAME_PAYLOAD}"
        )
    if h.flags & FLAG_MORE and h.length != MAX_FRAME_PAYLOAD:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED, f"a frame flagged MORE must carry {MAX_FRAME_PAYLOAD} bytes, not {h.length}"
        )
    return h


def _check_crc(buf: bytes | bytearray, length: int) -> None:
    end = HEADER_SIZE + length
    (expected,) = struct.unpack_from(">I", buf, end)
    with memoryview(buf) as view:  # released at once: a bytearray with a live view cannot grow
        actual = zlib.crc32(view[:end])
    if actual != expected:
        raise RemoteProtocolError(
            ErrorCode.BAD_CRC, f"frame CRC-32 {actual:08x} does not match {expected:08x}"
        )


def decode_frame(data: bytes | bytearray) -> tuple[Frame, int] | None:
    """The frame at the start of ``data`` and its size; None if incomplete; RemoteProtocolError if bad."""
    h = _parse_header(data)
    if h is None or len(data) < HEADER_SIZE + h.length + TRAILER_SIZE:
        return None
    _check_crc(data, h.length)
    payload = bytes(data[HEADER_SIZE : HEADER_SIZE + h.length])
    return Frame(h.version, h.type, h.flags, payload), HEADER_SIZE + h.length + TRAILER_SIZE


def _reason(exc: cs.ConstructError) -> str:
    lines = str(exc).splitlines()
    where = lines[0].split("->", 1)[1].strip() if lines and "->" in lines[0] else ""
    text = lines[-1] if lines else type(exc).__name__
    if isinstance(exc, cs.TerminatedError):
        text = "trailing bytes after the last field"
    elif isinstance(exc, cs.StreamError):
        text = "truncated"
    return f"{text} (at {where})" if where else text


def encode_payload(message: Message) -> bytes:
    """The payload bytes of one message; LocalProtocolError if a field breaks its rule."""
    name = type(message).__name__
    if not isinstance(message, Message) or type(message) not in MESSAGES.values():
        raise LocalProtocolError(ErrorCode.INTERNAL, f"not a message: {name}")
    try:
        message._check()
        payload = message.STRUCT.build({f.name: getattr(message, f.name) for f in fields(message)})
    except _Invalid as exc:
        raise LocalProtocolError(exc.code, f"{message.TYPE.name}: {exc}") from None
    except cs.ConstructError as exc:
        raise LocalProtocolError(ErrorCode.MALFORMED, f"{message.TYPE.name}: {_reason(exc)}") from None
    if len(payload) > MAX_MESSAGE[message.TYPE]:
        raise LocalProtocolError(
            ErrorCode.TOO_LARGE,
            f"{message.TYPE.name}: payload of {len(payload)} bytes, more than {MAX_MESSAGE[message.TYPE]}",
        )
    return payload


def decode_payload(type: int, payload: bytes) -> Message:
    """The message of ``type`` in a whole (reassembled) payload; RemoteProtocolError if bad."""
    cls = MESSAGES.get(type)
    if cls is None:
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type 0x{type:02x}; supported types: {_supported_types()}",
        )
    if len(payload) > MAX_MESSAGE[cls.TYPE]:
        raise RemoteProtocolError(
            ErrorCode.TOO_LARGE,
            f"{cls.TYPE.name}: payload of {len(payload)} bytes, more than {MAX_MESSAGE[cls.TYPE]}",
        )
    try:
        parsed = cls.STRUCT.parse(payload)
        message = cls(**{f.name: parsed[f.name] for f in fields(cls)})
        message._check()
    except _Invalid as exc:
        raise RemoteProtocolError(exc.code, f"{cls.TYPE.name}: {exc}") from None
    except cs.ConstructError as exc:
        raise RemoteProtocolError(ErrorCode.MALFORMED, f"{cls.TYPE.name}: {_reason(exc)}") from None
    return message


def _frames(type: MessageType, payload: bytes, version: int) -> bytes:
    """A message's payload as frames: full MAX_FRAME_PAYLOAD pieces flagged MORE, then the rest."""
    if len(payload) <= MAX_FRAME_PAYLOAD:
        return encode_frame(type, payload, 0, version)
    out = []
    view = memoryview(payload)
    for start in range(0, len(payload), MAX_FRAME_PAYLOAD):
        piece = bytes(view[start : start + MAX_FRAME_PAYLOAD])
        last = start + MAX_FRAME_PAYLOAD >= len(payload)
        out.append(encode_frame(type, piece, 0 if last else FLAG_MORE, version))
    return b"".join(out)


def encode_message(message: Message, version: int = PROTOCOL_VERSION) -> bytes:
    """All the frames of one message (no session rules: see the connections for those)."""
    payload = encode_payload(message)
    return _frames(message.TYPE, payload, version)


# --- Site key authentication ---

_LABEL_MASTER: Final = b"perceus/1 master proof\x00"
_LABEL_NODE: Final = b"perceus/1 node response\x00"


def check_site_key(key: bytes) -> bytes:
    """The key if it is usable (bytes, 16..4096 long); ValueError otherwise."""
    if not isinstance(key, bytes) or not MIN_SITE_KEY <= len(key) <= MAX_SITE_KEY:
        raise ValueError(f"a site key is {MIN_SITE_KEY}..{MAX_SITE_KEY} bytes")
    return key


def hello_digest(hello_payload: bytes) -> bytes:
    """SHA-256 of the HELLO payload: binds the node nonce, NodeID, state and facts into auth."""
    return hashlib.sha256(hello_payload).digest()


def master_proof(key: bytes, digest: bytes, nonce: bytes) -> bytes:
    """HMAC-SHA256(key, "perceus/1 master proof\\0" || hello digest || master nonce)."""
    return hmac.new(key, _LABEL_MASTER + digest + nonce, hashlib.sha256).digest()


def node_response(key: bytes, digest: bytes, nonce: bytes) -> bytes:
    """HMAC-SHA256(key, "perceus/1 node response\\0" || hello digest || master nonce)."""
    return hmac.new(key, _LABEL_NODE + digest + nonce, hashlib.sha256).digest()


# --- Sessions ---

_T = MessageType
_ANYTIME: Final = frozenset({_T.LOG, _T.PING, _T.PONG})  # either side, after HELLO, before the end
_TURNS: Final[dict[State, tuple[Role, frozenset[MessageType]]]] = {
    State.HELLO: (Role.NODE, frozenset({_T.HELLO})),
    State.ANSWER: (Role.MASTER, frozenset({_T.AUTH_CHALLENGE, _T.ASSIGN, _T.WAIT})),
    State.AUTH: (Role.NODE, frozenset({_T.AUTH_RESPONSE})),
    State.ASSIGN: (Role.MASTER, frozenset({_T.ASSIGN, _T.WAIT})),
    State.SCRIPT: (Role.MASTER, frozenset({_T.SCRIPT})),
    State.SCRIPT_RESULT: (Role.NODE, frozenset({_T.SCRIPT_RESULT})),
    State.OFFER: (Role.MASTER, frozenset({_T.IMAGE_OFFER})),
    State.REQUEST: (Role.NODE, frozenset({_T.IMAGE_REQUEST, _T.BYE})),
    State.IMAGE_DATA: (Role.MASTER, frozenset({_T.IMAGE_DATA})),
    State.RAW: (Role.MASTER, frozenset({_T.IMAGE_DATA})),  # its raw bytes
    State.FINISH: (Role.NODE, frozenset({_T.BYE})),
}
_ENDED: Final = frozenset({State.DONE, State.FAILED})


def _names(types: frozenset[MessageType]) -> str:
    return " | ".join(sorted(t.name for t in types))


class Connection:
    """One session seen from one end; see :class:`NodeConnection` and :class:`MasterConnection`."""

    role: Role
    peer: Role

    def __init__(
        self, *, site_key: bytes | None = None, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.site_key = None if site_key is None else check_site_key(site_key)
        self._random = random_bytes
        self._state = State.HELLO
        self.version = PROTOCOL_VERSION
        self.hello: Hello | None = None
        self.assignment: Assign | None = None
        self.offer: ImageOffer | None = None
        self.authenticated = False  # the peer proved it holds the site key
        self.peer_error: Error | None = None  # the ERROR the peer sent, if any
        self._digest: bytes | None = None  # hello_digest of the HELLO payload
        self._nonce: bytes | None = None  # the master's challenge nonce
        self._request: tuple[ObjectKind, int, int] | None = None  # pending (kind, offset, length)
        self._error_sent = False
        self._failure: RemoteProtocolError | None = None
        # receiving
        self._buf = bytearray()
        self._eof = False
        self._frag_type: MessageType | None = None
        self._frags: list[bytes] = []
        self._frag_size = 0
        self._header: cs.Container | None = None  # checked, its frame not yet complete
        # raw bytes: node side counts what is left to hand out / still to arrive; master what it owes
        self._raw_left = 0
        self._raw_unreceived = 0
        self._raw_queue: deque[bytes] = deque()

    # -- what the I/O layer asks --

    @property
    def state(self) -> State:
        return self._state

    @property
    def our_turn(self) -> bool:
        """True when the next move that advances the session is ours (or ours to stream)."""
        turn = _TURNS.get(self._state)
        return turn is not None and turn[0] is self.role

    @property
    def waiting_for(self) -> frozenset[MessageType]:
        """What the peer may send next to advance the session (IMAGE_DATA in RAW: its bytes)."""
        turn = _TURNS.get(self._state)
        if turn is None or turn[0] is self.role:
            return frozenset()
        return turn[1]

    @property
    def timeout(self) -> float | None:
        """Idle seconds to allow the peer now; None when it is our move or the session has ended."""
        return None if self.our_turn else timeout_for_state(self._state)

    def deadline(self, now: float) -> float | None:
        """``now`` plus :attr:`timeout` (any monotonic clock), or None when there is nothing to wait for."""
        timeout = self.timeout
        return None if timeout is None else now + timeout

    @property
    def raw_remaining(self) -> int:
        """Raw bytes of the current IMAGE_DATA not yet handed out (node) or not yet sent (master)."""
        return self._raw_left

    # -- receiving --

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means it closed its side. Feed only after NEED_DATA."""
        if not data:
            self._eof = True
            return
        if self._eof or self._state in _ENDED or self._failure is not None:
            return
        data = bytes(data)
        if self._raw_unreceived:
            k = min(len(data), self._raw_unreceived)
            self._raw_queue.append(data if k == len(data) else data[:k])
            self._raw_unreceived -= k
            data = data[k:]
        if data:
            self._buf += data

    def next_event(self) -> Event | _Sentinel:
        """The next event from the peer, NEED_DATA, or CLOSED; raises RemoteProtocolError."""
        if self._failure is not None:
            raise self._failure
        if self._state in _ENDED:
            return CLOSED
        try:
            event = self._next_event()
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise
        except Exception as exc:  # never reached by any input the tests know; keeps the parse total
            self._fail(
                RemoteProtocolError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
            )
            raise self._failure from exc
        if event is NEED_DATA and self._eof:
            where = " in the middle of a frame" if self._buf or self._frags else ""
            self._fail(
                RemoteProtocolError(
                    ErrorCode.CONNECTION_LOST,
                    f"the {self.peer.value} closed the connection{where} in state {self._state.name}",
                )
            )
            raise self._failure
        return event

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._failure = exc
        self._state = State.FAILED
        self._buf.clear()
        self._raw_queue.clear()
        self._frags = []

    def _read_header(self) -> cs.Container | None:
        """The next frame's header, checked against the session once (then kept until its frame is read)."""
        h = _parse_header(self._buf)
        if h is None:
            return None
        t = MessageType(h.type)
        if self._frag_type is not None and t is not self._frag_type:
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED, f"{t.name} inside a {self._frag_type.name} that spans frames"
            )
        self._check_order(self.peer, t, RemoteProtocolError)
        if self._frag_size + h.length > MAX_MESSAGE[t]:
            raise RemoteProtocolError(
                ErrorCode.TOO_LARGE, f"{t.name}: payload over {MAX_MESSAGE[t]} bytes across frames"
            )
        if h.version != self.version:
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"frame of version {h.version} in a version {self.version} session",
            )
        self._header = h
        return h

    def _next_event(self) -> Event | _Sentinel:
        if self._raw_queue:
            piece = self._raw_queue.popleft()
            self._raw_left -= len(piece)
            if not self._raw_left:
                self._state = State.REQUEST
            return RawBytes(piece)
        if self._raw_unreceived:
            return NEED_DATA
        buf = self._buf
        while True:
            h = self._header
            if h is None:
                h = self._read_header()
                if h is None:
                    return NEED_DATA
            size = HEADER_SIZE + h.length + TRAILER_SIZE
            if len(buf) < size:
                return NEED_DATA
            self._header = None
            t = MessageType(h.type)
            _check_crc(buf, h.length)
            payload = bytes(buf[HEADER_SIZE : HEADER_SIZE + h.length])
            del buf[:size]
            if h.flags & FLAG_MORE:
                self._frag_type = t
                self._frags.append(payload)
                self._frag_size += len(payload)
                continue
            if self._frags:
                payload = b"".join([*self._frags, payload])
                self._frag_type, self._frags, self._frag_size = None, [], 0
            message = decode_payload(t, payload)
            self._advance(self.peer, message, payload, RemoteProtocolError)
            return message

    # -- sending --

    def send(self, event: Event) -> bytes:
        """The bytes that carry ``event`` to the peer; LocalProtocolError (and no change) if forbidden."""
        if isinstance(event, RawBytes):
            return self._send_raw(event.data)
        if not isinstance(event, Message):
            raise LocalProtocolError(ErrorCode.INTERNAL, f"cannot send {type(event).__name__}")
        if isinstance(event, Error):
            return self._send_error(event)
        self._check_order(self.role, event.TYPE, LocalProtocolError)
        payload = encode_payload(event)
        self._advance(self.role, event, payload, LocalProtocolError)
        return _frames(event.TYPE, payload, self.version)

    def _send_raw(self, data: bytes) -> bytes:
        self._account_raw(len(data))
        return bytes(data)

    def _account_raw(self, count: int) -> None:
        raise LocalProtocolError(ErrorCode.UNEXPECTED, f"the {self.role.value} never sends raw bytes")

    def _send_error(self, event: Error) -> bytes:
        if self._error_sent or self._state is State.DONE:
            raise LocalProtocolError(ErrorCode.UNEXPECTED, "ERROR after the session ended")
        payload = encode_payload(event)
        self._error_sent = True
        self._state = State.FAILED
        if self.role is Role.MASTER and self._raw_left:
            # An ERROR cannot be framed in the middle of raw bytes: drop it; the I/O layer closes.
            self._raw_left = 0
            return b""
        return _frames(MessageType.ERROR, payload, self.version)

    # -- the rules --

    def _check_order(self, sender: Role, t: MessageType, err: type[ProtocolError]) -> None:
        """Whether ``sender`` may send a ``t`` now (ERROR is handled by the caller)."""
        state = self._state
        if state in _ENDED:
            raise err(ErrorCode.UNEXPECTED, f"{t.name} after the session ended")
        if sender not in _SENDERS[t]:
            (only,) = _SENDERS[t]
            raise err(ErrorCode.UNEXPECTED, f"{t.name} is sent by the {only.value}, not the {sender.value}")
        if t is MessageType.ERROR:
            return
        if sender is Role.MASTER and self.role is Role.MASTER and self._raw_left:
            raise err(ErrorCode.UNEXPECTED, f"{t.name} while {self._raw_left} raw bytes are still owed")
        if t in _ANYTIME:
            if state is State.HELLO:
                raise err(ErrorCode.UNEXPECTED, f"{t.name} before HELLO")
            return
        speaker, allowed = _TURNS[state]
        if sender is not speaker or t not in allowed or state is State.RAW:
            expected = "raw bytes" if state is State.RAW else _names(allowed)
            raise err(
                ErrorCode.UNEXPECTED,
                f"{t.name} from the {sender.value} in state {state.name}; expected {expected} from the "
                f"{speaker.value}",
            )

    def _advance(self, sender: Role, m: Message, payload: bytes, err: type[ProtocolError]) -> None:
        """Apply ``m`` to the session: checks first (raising ``err``), then changes."""
        state = self._state
        if isinstance(m, Error):
            self.peer_error = m
            self._state = State.FAILED
        elif m.TYPE in _ANYTIME:
            pass
        elif isinstance(m, Hello):
            versions = sorted(set(m.versions) & set(SUPPORTED_VERSIONS))
            if not versions:
                offered = ", ".join(map(str, m.versions))
                raise err(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"the node speaks versions {offered}; supported versions: {_supported_versions()}",
                )
            self.version = versions[-1]
            self.hello, self._digest = m, hello_digest(payload)
            self._state = State.ANSWER
        elif isinstance(m, AuthChallenge):
            self._on_challenge(m, err)
            self._nonce = m.nonce
            self._state = State.AUTH
        elif isinstance(m, AuthResponse):
            self.authenticated = self._on_response(m, err)
            self._state = State.ASSIGN
        elif isinstance(m, Assign | Wait):
            if state is State.ANSWER:
                self._on_unchallenged(m, err)
            if isinstance(m, Wait):
                self._state = State.DONE
            else:
                self.assignment = m
                follows = Follows(m.follows)
                if Follows.SCRIPT in follows:
                    self._state = State.SCRIPT
                else:
                    self._state = State.OFFER if Follows.IMAGE in follows else State.FINISH
        elif isinstance(m, Script):
            self._state = State.SCRIPT_RESULT
        elif isinstance(m, ScriptResult):
            assert self.assignment is not None
            self._state = State.OFFER if Follows.IMAGE in Follows(self.assignment.follows) else State.FINISH
        elif isinstance(m, ImageOffer):
            self.offer = m
            self._state = State.REQUEST
        elif isinstance(m, ImageRequest):
            assert self.offer is not None
            size = self.offer.size_of(m.kind)
            length = m.length or size - m.offset
            if m.offset > size or m.offset + length > size:
                raise err(
                    ErrorCode.BAD_RANGE,
                    f"IMAGE_REQUEST for {m.kind.name} bytes {m.offset}+{m.length}: "
                    f"the {m.kind.name} has {size}",
                )
            self._request = (m.kind, m.offset, length)
            self._state = State.IMAGE_DATA
        elif isinstance(m, ImageData):
            assert self._request is not None  # IMAGE_DATA is only in turn after an IMAGE_REQUEST
            if (m.kind, m.offset, m.length) != self._request:
                asked = "{} {}+{}".format(self._request[0].name, *self._request[1:])
                raise err(
                    ErrorCode.UNEXPECTED,
                    f"IMAGE_DATA {m.kind.name} {m.offset}+{m.length} does not answer the request ({asked})",
                )
            self._request = None
            self._state = State.RAW if m.length else State.REQUEST
            self._raw_left = m.length
            if m.length and self.role is Role.NODE:
                k = min(len(self._buf), m.length)
                if k:
                    self._raw_queue.append(bytes(self._buf[:k]))
                    del self._buf[:k]
                self._raw_unreceived = m.length - k
        elif isinstance(m, Bye):
            self._state = State.DONE
        else:  # pragma: no cover - every type is handled above
            raise err(ErrorCode.INTERNAL, f"no rule for {m.TYPE.name}")

    # role hooks
    def _on_challenge(self, m: AuthChallenge, err: type[ProtocolError]) -> None:
        raise NotImplementedError

    def _on_response(self, m: AuthResponse, err: type[ProtocolError]) -> bool:
        raise NotImplementedError

    def _on_unchallenged(self, m: Assign | Wait, err: type[ProtocolError]) -> None:
        raise NotImplementedError


class NodeConnection(Connection):
    """The node's end: sends HELLO first, runs what the master sends, receives raw image bytes.

    With a ``site_key`` the node also requires the master to prove the key (in AUTH_CHALLENGE)
    before it accepts an ASSIGN or WAIT, unless ``require_master_auth`` is False.
    """

    role = Role.NODE
    peer = Role.MASTER

    def __init__(
        self,
        *,
        site_key: bytes | None = None,
        require_master_auth: bool = True,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(site_key=site_key, random_bytes=random_bytes)
        self.require_master_auth = require_master_auth and site_key is not None

    def make_hello(self, nodeid: str, state: str, **facts) -> Hello:
        """A HELLO with a fresh node nonce from this connection's random source."""
        return Hello(nodeid, state, node_nonce=self._random(NONCE_SIZE), **facts)

    def raw_wanted(self) -> int:
        """Raw bytes the node may take straight from its receive buffer now (see :meth:`take_raw`)."""
        if self._failure is not None or self._eof or self._state is not State.RAW or self._raw_queue:
            return 0
        return self._raw_unreceived

    def take_raw(self, count: int) -> int:
        """Consume up to ``count`` freshly received bytes as raw image bytes without copying them.

        For a node that hashes raw bytes where they landed: when :meth:`raw_wanted` is non-zero,
        the first ``min(count, raw_wanted())`` bytes just received are raw bytes the caller
        consumes itself (as if they had come out as RawBytes); it passes only the rest to
        :meth:`receive_data`. Returns how many it took; 0 when raw bytes cannot be taken now.
        """
        k = min(max(count, 0), self.raw_wanted())
        if k:
            self._raw_unreceived -= k
            self._raw_left -= k
            if not self._raw_left:
                self._state = State.REQUEST
        return k

    def auth_response(self) -> AuthResponse:
        """The answer to the challenge received: the HMAC tag, or empty without a site key."""
        if self._nonce is None or self._digest is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED, "no AUTH_CHALLENGE to respond to")
        if self.site_key is None:
            return AuthResponse(b"")
        return AuthResponse(node_response(self.site_key, self._digest, self._nonce))

    def _on_challenge(self, m: AuthChallenge, err: type[ProtocolError]) -> None:
        if self.site_key is None:
            return
        assert self._digest is not None
        if not hmac.compare_digest(m.proof, master_proof(self.site_key, self._digest, m.nonce)):
            raise err(ErrorCode.AUTH_FAILED, "the master's proof is wrong: it does not hold this site key")
        self.authenticated = True

    def _on_response(self, m: AuthResponse, err: type[ProtocolError]) -> bool:
        return self.authenticated

    def _on_unchallenged(self, m: Assign | Wait, err: type[ProtocolError]) -> None:
        if self.require_master_auth:
            raise err(ErrorCode.AUTH_FAILED, f"{m.TYPE.name} from a master that did not prove the site key")


class MasterConnection(Connection):
    """The master's end (perceusd, one per node connection).

    With a ``site_key`` the master must challenge after HELLO (ASSIGN and WAIT are refused
    until the node answered); a node with a wrong tag fails; a node that answers without a
    tag passes unauthenticated unless ``auth_required`` (``node auth = required``).
    """

    role = Role.MASTER
    peer = Role.NODE

    def __init__(
        self,
        *,
        site_key: bytes | None = None,
        auth_required: bool = False,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if auth_required and site_key is None:
            raise ValueError("node auth = required needs a site key")
        super().__init__(site_key=site_key, random_bytes=random_bytes)
        self.auth_required = auth_required

    def challenge(self) -> AuthChallenge:
        """An AUTH_CHALLENGE for the HELLO received: a fresh nonce and the master's proof."""
        if self.site_key is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED, "no site key to challenge with")
        if self._digest is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED, "AUTH_CHALLENGE before HELLO")
        nonce = self._random(NONCE_SIZE)
        return AuthChallenge(nonce, master_proof(self.site_key, self._digest, nonce))

    def image_data(self) -> ImageData:
        """The IMAGE_DATA header that answers the pending IMAGE_REQUEST."""
        if self._request is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED, "no IMAGE_REQUEST to answer")
        return ImageData(*self._request)

    @property
    def pending_request(self) -> tuple[ObjectKind, int, int] | None:
        """(kind, offset, length) the node asked for and the master has yet to announce."""
        return self._request

    def raw_sent(self, count: int) -> None:
        """Record ``count`` raw bytes written outside :meth:`send` (by sendfile); 0 is a no-op.

        Account for them before reading further input: the node may answer as soon as they arrive.
        """
        self._account_raw(count)

    def _account_raw(self, count: int) -> None:
        if not count:
            return
        if self._state is not State.RAW:
            raise LocalProtocolError(ErrorCode.UNEXPECTED, f"raw bytes in state {self._state.name}")
        if count > self._raw_left:
            raise LocalProtocolError(
                ErrorCode.BAD_RANGE, f"{count} raw bytes, but only {self._raw_left} remain of the IMAGE_DATA"
            )
        self._raw_left -= count
        if not self._raw_left:
            self._state = State.REQUEST

    def _on_challenge(self, m: AuthChallenge, err: type[ProtocolError]) -> None:
        if self.site_key is None:
            raise err(ErrorCode.UNEXPECTED, "AUTH_CHALLENGE without a site key")
        assert self._digest is not None
        if not hmac.compare_digest(m.proof, master_proof(self.site_key, self._digest, m.nonce)):
            raise err(ErrorCode.AUTH_FAILED, "AUTH_CHALLENGE proof does not match this HELLO and nonce")

    def _on_response(self, m: AuthResponse, err: type[ProtocolError]) -> bool:
        assert self.site_key is not None and self._digest is not None and self._nonce is not None
        if not m.tag:
            if self.auth_required:
                raise err(ErrorCode.AUTH_REQUIRED, "this master requires the site key (node auth = required)")
            return False
        if not hmac.compare_digest(m.tag, node_response(self.site_key, self._digest, self._nonce)):
            raise err(ErrorCode.AUTH_FAILED, "wrong AUTH_RESPONSE: the node does not hold this site key")
        return True

    def _on_unchallenged(self, m: Assign | Wait, err: type[ProtocolError]) -> None:
        if self.site_key is not None:
            raise err(
                ErrorCode.UNEXPECTED, f"{m.TYPE.name} before AUTH_CHALLENGE: this master has a site key"
            )
