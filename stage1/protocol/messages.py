"""The events of a session: one frozen dataclass per message type, each with its payload's layout.

A message's ``STRUCT`` (construct, built of :mod:`.adapters`) is its payload byte by byte,
as ``docs/protocol.md`` specifies it; ``_check`` holds the rules across fields.
"""

from dataclasses import dataclass, field
from typing import ClassVar, Final

import construct as cs

from perceus.stage1.protocol.adapters import (
    HOSTNAME_RE,
    IFNAME_RE,
    STATE_RE,
    VNFS_RE,
    Blob,
    ChunkTable,
    Enum,
    Fixed,
    Flags,
    Hex,
    HwAddr,
    Int,
    Invalid,
    List,
    Mac,
    Record,
    Text,
    Uuid,
    int_value,
)
from perceus.stage1.protocol.enums import Follows, MessageType, ObjectKind
from perceus.stage1.protocol.limits import (
    MAX_ASSET_TAG,
    MAX_ERROR_MESSAGE,
    MAX_HOSTNAME,
    MAX_IFNAME,
    MAX_INTERFACES,
    MAX_KERNEL_ARGS,
    MAX_LOG,
    MAX_OBJECT_SIZE,
    MAX_OUTPUT_TAIL,
    MAX_REASON,
    MAX_SCRIPT,
    MAX_SERIAL,
    MAX_STATE,
    MAX_VERSIONS,
    MAX_VNFS_NAME,
    MAX_WAIT,
    NONCE_SIZE,
    SUPPORTED_VERSIONS,
    TAG_SIZE,
    U32,
    U64,
)
from perceus.stage1.protocol.sitekey import new_nonce


class Sentinel:
    """A named marker ``next_event`` returns instead of an event."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = Sentinel("NEED_DATA")  # next_event: feed more bytes with receive_data
CLOSED: Final = Sentinel("CLOSED")  # next_event: the session has ended; close the connection


@dataclass(frozen=True)
class Event:
    """What ``next_event`` returns and ``send`` takes."""


@dataclass(frozen=True)
class Message(Event):
    """An event carried by frames of one type."""

    TYPE: ClassVar[MessageType]
    STRUCT: ClassVar[cs.Construct]

    def _check(self) -> None:
        """Rules across fields (raise Invalid); the field types check the rest."""


def _tuple_fields(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, list):
            object.__setattr__(obj, name, tuple(value))


@dataclass(frozen=True)
class Interface:
    """One network interface of a node: kernel name and hardware address."""

    name: str
    hwaddr: str = ""


_INTERFACE = Record(
    cs.Struct(
        "name" / Text(cs.Int8ub, MAX_IFNAME, "interface name", IFNAME_RE, empty=False),
        "hwaddr" / HwAddr("interface hardware address"),
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
        "versions" / List(cs.Int8ub, Int(cs.Int16ub, 1, 0xFFFF, "version"), MAX_VERSIONS, "versions", 1),
        "state" / Text(cs.Int8ub, MAX_STATE, "state", STATE_RE, empty=False),
        "nodeid" / Mac("nodeid"),
        "node_nonce" / Fixed(NONCE_SIZE, "node nonce"),
        "cpus" / Int(cs.Int32ub, 0, U32, "cpus"),
        "memory" / Int(cs.Int64ub, 0, U64, "memory"),
        "smbios_uuid" / Uuid("SMBIOS UUID"),
        "serial" / Text(cs.Int8ub, MAX_SERIAL, "serial"),
        "asset_tag" / Text(cs.Int8ub, MAX_ASSET_TAG, "asset tag"),
        "interfaces" / List(cs.Int8ub, _INTERFACE, MAX_INTERFACES, "interfaces"),
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
        "nonce" / Fixed(NONCE_SIZE, "nonce"),
        "proof" / Fixed(TAG_SIZE, "proof"),
        cs.Terminated,
    )


@dataclass(frozen=True)
class AuthResponse(Message):
    """Node -> master: node_response(key, hello_digest, nonce), or empty for a node without a key."""

    TYPE: ClassVar = MessageType.AUTH_RESPONSE
    tag: bytes = b""

    STRUCT: ClassVar = cs.Struct(
        "tag" / Blob(cs.Int8ub, TAG_SIZE, "tag", (0, TAG_SIZE)),
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
        "name" / Text(cs.Int8ub, MAX_HOSTNAME, "node name", HOSTNAME_RE, empty=False),
        "vnfs" / Text(cs.Int8ub, MAX_VNFS_NAME, "VNFS name", VNFS_RE),
        "follows" / Flags(cs.Int8ub, Follows, "follows"),
        cs.Terminated,
    )

    def _check(self) -> None:
        if Follows.IMAGE in Follows(int_value(self.follows, "follows") & 3) and not self.vnfs:
            raise Invalid("ASSIGN announces an image but names no VNFS")


@dataclass(frozen=True)
class Wait(Message):
    """Master -> node: nothing for you now (disabled, no VNFS, busy); connect again in N seconds."""

    TYPE: ClassVar = MessageType.WAIT
    seconds: int
    reason: str = ""

    STRUCT: ClassVar = cs.Struct(
        "seconds" / Int(cs.Int32ub, 1, MAX_WAIT, "seconds"),
        "reason" / Text(cs.Int16ub, MAX_REASON, "reason"),
        cs.Terminated,
    )


@dataclass(frozen=True)
class Script(Message):
    """Master -> node: the assembled nodescript, to run as is (one message, up to 4 frames + 1)."""

    TYPE: ClassVar = MessageType.SCRIPT
    body: bytes

    STRUCT: ClassVar = cs.Struct("body" / Blob(None, MAX_SCRIPT, "script"))


@dataclass(frozen=True)
class ScriptResult(Message):
    """Node -> master: the script's exit status (negative: killed by that signal) and output tail."""

    TYPE: ClassVar = MessageType.SCRIPT_RESULT
    status: int
    output_tail: bytes = b""

    STRUCT: ClassVar = cs.Struct(
        "status" / Int(cs.Int32sb, -(1 << 31), (1 << 31) - 1, "status"),
        "output_tail" / Blob(cs.Int32ub, MAX_OUTPUT_TAIL, "output tail"),
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


_SIZE = Int(cs.Int64ub, 0, MAX_OBJECT_SIZE, "size")


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
        "vnfs" / Text(cs.Int8ub, MAX_VNFS_NAME, "VNFS name", VNFS_RE, empty=False),
        "image_size" / _SIZE,
        "image_sha256" / Hex(32, "image sha256"),
        "overlay_size" / _SIZE,
        "overlay_sha256" / Hex(32, "overlay sha256"),
        "kernel_size" / _SIZE,
        "kernel_sha256" / Hex(32, "kernel sha256"),
        "kernel_args" / Text(cs.Int16ub, MAX_KERNEL_ARGS, "kernel args"),
        "chunks" / ChunkTable(ChunkEntry),
        cs.Terminated,
    )

    def __post_init__(self) -> None:
        _tuple_fields(self, "chunks")

    def _check(self) -> None:
        total = 0
        for chunk in self.chunks:
            total += chunk.csize if isinstance(chunk, ChunkEntry) and isinstance(chunk.csize, int) else 0
        if total != self.image_size:
            raise Invalid(f"chunk table covers {total} bytes, the image has {self.image_size}")

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


# IMAGE_REQUEST and IMAGE_DATA: which object, from where, how many bytes.
_OBJECT_RANGE = cs.Struct(
    "kind" / Enum(cs.Int8ub, ObjectKind, "object"),
    "offset" / Int(cs.Int64ub, 0, MAX_OBJECT_SIZE, "offset"),
    "length" / Int(cs.Int64ub, 0, MAX_OBJECT_SIZE, "length"),
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
        "level" / Int(cs.Int8ub, 0, 7, "level"),
        "message" / Text(cs.Int16ub, MAX_LOG, "log message", multiline=True),
        cs.Terminated,
    )


@dataclass(frozen=True)
class Ping(Message):
    """Either way, any time after HELLO: answer with a PONG carrying the same token."""

    TYPE: ClassVar = MessageType.PING
    token: int = 0

    STRUCT: ClassVar = cs.Struct("token" / Int(cs.Int64ub, 0, U64, "token"), cs.Terminated)


@dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar = MessageType.PONG
    token: int = 0

    STRUCT: ClassVar = cs.Struct("token" / Int(cs.Int64ub, 0, U64, "token"), cs.Terminated)


@dataclass(frozen=True)
class Error(Message):
    """Either way, any time: the session is over (``code`` is an :class:`ErrorCode` value)."""

    TYPE: ClassVar = MessageType.ERROR
    code: int
    message: str = ""

    STRUCT: ClassVar = cs.Struct(
        "code" / Int(cs.Int16ub, 0, 0xFFFF, "code"),
        "message" / Text(cs.Int16ub, MAX_ERROR_MESSAGE, "error message"),
        cs.Terminated,
    )


@dataclass(frozen=True)
class Bye(Message):
    """Node -> master: the session is complete."""

    TYPE: ClassVar = MessageType.BYE
    reason: str = ""

    STRUCT: ClassVar = cs.Struct("reason" / Text(cs.Int16ub, MAX_REASON, "reason"), cs.Terminated)


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
