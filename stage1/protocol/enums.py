"""The protocol's named values: message types, error codes, roles, objects, announcements, states."""

import enum


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
    """The ``code`` of an ERROR message (and of every ``ProtocolError``)."""

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
