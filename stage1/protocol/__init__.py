"""The node <-> master wire protocol: frames, messages and a sans-IO state machine for each side.

``docs/protocol.md`` is the specification, byte by byte; this package is its one
implementation, shared by perceusd, the stage-one program, provisiond and the simulator. It
imports only the standard library and construct, because it is frozen into the stage-one
initramfs. Every public name is importable from here; the modules, bottom up, in h11's manner:

* :mod:`.enums`, :mod:`.limits`: message types, error codes, states; every bound a peer meets.
* :mod:`.adapters`: construct field types that check their bounds both ways.
* :mod:`.messages`: the events, one frozen dataclass per message with its payload's ``STRUCT``.
* :mod:`.errors`, :mod:`.codec`: ProtocolError and its two sides; a message <-> its payload.
* :mod:`.framing`: a 12-byte header (magic, version, type, flags, length), at most
  :data:`MAX_FRAME_PAYLOAD` bytes of payload and a CRC-32; a message larger than one frame
  is chained with :data:`FLAG_MORE`; after an IMAGE_DATA frame come ``length`` raw,
  unframed bytes (so the master can ``sendfile`` them). :class:`~.framing.FrameReader` turns
  received bytes back into messages and raw bytes.
* :mod:`.sitekey`: the HMAC proofs of the shared site key.
* :mod:`.machine`: the session's rules as tables, ``(state, message type) -> next state``.
* :mod:`.connection`: :class:`NodeConnection`, :class:`MasterConnection`, in the style of
  h11: ``receive_data(bytes)`` then ``next_event()`` until :data:`NEED_DATA`; ``send(event)``
  returns the bytes to write. Nothing touches a socket or a clock: the I/O layer reads
  :attr:`Connection.timeout` to know how long to wait for the peer.

Totality: whatever bytes a peer sends, ``next_event`` returns events or raises
:class:`RemoteProtocolError` (never another exception), having buffered at most one bounded
message. The I/O layer answers a :class:`ProtocolError` with ``send(exc.to_event())`` (an
ERROR frame) and closes. Sending something out of turn or out of bounds raises
:class:`LocalProtocolError` and changes nothing.
"""

from perceus.stage1.protocol.adapters import VNFS_RE as _VNFS_RE  # noqa: F401 - perceusd checks VNFS names with it
from perceus.stage1.protocol.codec import decode_payload, encode_payload
from perceus.stage1.protocol.connection import Connection, MasterConnection, NodeConnection
from perceus.stage1.protocol.enums import ErrorCode, Follows, MessageType, ObjectKind, Role, State
from perceus.stage1.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from perceus.stage1.protocol.framing import HEADER, TRAILER, Frame, decode_frame, encode_frame, encode_message
from perceus.stage1.protocol.limits import (
    CHUNK_ENTRY_SIZE,
    DEFAULT_PORT,
    FLAG_MORE,
    HEADER_SIZE,
    KNOWN_FLAGS,
    MAGIC,
    MAX_ASSET_TAG,
    MAX_CHUNKS,
    MAX_ERROR_MESSAGE,
    MAX_FRAME_PAYLOAD,
    MAX_HOSTNAME,
    MAX_HWADDR,
    MAX_IFNAME,
    MAX_INTERFACES,
    MAX_KERNEL_ARGS,
    MAX_LOG,
    MAX_MESSAGE,
    MAX_OBJECT_SIZE,
    MAX_OFFER,
    MAX_OUTPUT_TAIL,
    MAX_REASON,
    MAX_SCRIPT,
    MAX_SERIAL,
    MAX_SITE_KEY,
    MAX_STATE,
    MAX_VERSIONS,
    MAX_VNFS_NAME,
    MAX_WAIT,
    MIN_SITE_KEY,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    TAG_SIZE,
    TRAILER_SIZE,
)
from perceus.stage1.protocol.machine import TIMEOUTS, timeout_for_state
from perceus.stage1.protocol.messages import (
    CLOSED,
    MESSAGES,
    NEED_DATA,
    Assign,
    AuthChallenge,
    AuthResponse,
    Bye,
    ChunkEntry,
    Error,
    Event,
    Hello,
    ImageData,
    ImageOffer,
    ImageRequest,
    Interface,
    Log,
    Message,
    Ping,
    Pong,
    RawBytes,
    Script,
    ScriptResult,
    Wait,
)
from perceus.stage1.protocol.sitekey import (
    check_site_key,
    hello_digest,
    master_proof,
    new_nonce,
    node_response,
)

__all__ = [
    "CHUNK_ENTRY_SIZE",
    "CLOSED",
    "DEFAULT_PORT",
    "FLAG_MORE",
    "HEADER",
    "HEADER_SIZE",
    "KNOWN_FLAGS",
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
    "MAX_SITE_KEY",
    "MAX_STATE",
    "MAX_VERSIONS",
    "MAX_VNFS_NAME",
    "MAX_WAIT",
    "MESSAGES",
    "MIN_SITE_KEY",
    "NEED_DATA",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "TAG_SIZE",
    "TIMEOUTS",
    "TRAILER",
    "TRAILER_SIZE",
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
    "new_nonce",
    "node_response",
    "timeout_for_state",
]
