"""Frames: a 12-byte header, a bounded payload, a CRC-32; and the reader that turns a byte stream back
into whole messages and raw bytes.

A message larger than one frame is carried in full frames flagged MORE, then the rest. After
an IMAGE_DATA the master sends exactly ``length`` raw, unframed bytes (so it can sendfile
them); then framing resumes.
"""

import struct
import zlib
from collections import deque
from collections.abc import Callable
from typing import Final, NamedTuple

import construct as cs

from perceus.stage1.protocol.codec import encode_payload
from perceus.stage1.protocol.enums import ErrorCode, MessageType
from perceus.stage1.protocol.errors import RemoteProtocolError
from perceus.stage1.protocol.limits import (
    FLAG_MORE,
    HEADER_SIZE,
    KNOWN_FLAGS,
    MAGIC,
    MAX_FRAME_PAYLOAD,
    MAX_MESSAGE,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    TRAILER_SIZE,
    supported_types,
    supported_versions,
)
from perceus.stage1.protocol.messages import MESSAGES, Message, RawBytes

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


def encode_frame(type: int, payload: bytes, flags: int = 0, version: int = PROTOCOL_VERSION) -> bytes:
    """One frame, as is: no bound is checked beyond what the header fields can hold."""
    header = HEADER.build(
        {"magic": MAGIC, "version": version, "type": type, "flags": flags, "length": len(payload)}
    )
    crc = zlib.crc32(payload, zlib.crc32(header))
    return header + payload + TRAILER.build({"crc32": crc})


def frames(type: MessageType, payload: bytes, version: int) -> bytes:
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
    payload = encode_payload(message)  # first: it refuses what is not a message
    return frames(message.TYPE, payload, version)


def parse_header(buf: bytes | bytearray) -> cs.Container | None:
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
            f"protocol version {h.version} is not supported; supported versions: {supported_versions()}",
        )
    if h.type not in MESSAGES:
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type 0x{h.type:02x}; supported types: {supported_types()}",
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


def check_crc(buf: bytes | bytearray, length: int) -> None:
    """RemoteProtocolError unless the frame at the start of ``buf`` (payload ``length``) has a good CRC."""
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
    h = parse_header(data)
    if h is None or len(data) < HEADER_SIZE + h.length + TRAILER_SIZE:
        return None
    check_crc(data, h.length)
    payload = bytes(data[HEADER_SIZE : HEADER_SIZE + h.length])
    return Frame(h.version, h.type, h.flags, payload), HEADER_SIZE + h.length + TRAILER_SIZE


def _any_order(t: MessageType) -> None:
    """The default header hook: every message type is welcome."""


class FrameReader:
    """Bytes from the peer in; whole message payloads and raw bytes out, in the order they came.

    It owns the receive buffer, the reassembly of a message spread over frames flagged MORE,
    and the count of raw bytes an IMAGE_DATA announced. Each header is checked (and shown to
    the caller's hook, which refuses what is out of turn) before its payload is waited for,
    so once :meth:`next` returns None the reader holds less than one frame in its
    buffer plus at most one message's bound in reassembly. It raises nothing but
    RemoteProtocolError; after one, :meth:`clear` it and feed it no more.
    """

    def __init__(self) -> None:
        self.version = PROTOCOL_VERSION  # the session's: frames of another version are refused
        self._buf = bytearray()
        self._header: cs.Container | None = None  # checked, its frame not yet complete
        self._frag_type: MessageType | None = None
        self._frags: list[bytes] = []
        self._frag_size = 0
        self.raw_left = 0  # raw bytes of the current IMAGE_DATA not yet handed out (or taken)
        self._raw_unreceived = 0  # ... not yet received
        self._raw_queue: deque[bytes] = deque()  # received, not yet handed out

    @property
    def buffered(self) -> int:
        """Bytes held towards the next message: the receive buffer and an unfinished MORE chain."""
        return len(self._buf) + self._frag_size

    @property
    def raw_wanted(self) -> int:
        """Raw bytes the caller may take in place now: none while received ones wait their turn."""
        return 0 if self._raw_queue else self._raw_unreceived

    def feed(self, data: bytes) -> None:
        """Bytes as they came from the peer (not empty)."""
        data = bytes(data)
        if self._raw_unreceived:
            k = min(len(data), self._raw_unreceived)
            self._raw_queue.append(data if k == len(data) else data[:k])
            self._raw_unreceived -= k
            data = data[k:]
        if data:
            self._buf += data

    def expect_raw(self, count: int) -> None:
        """The ``count`` bytes after the frame just read are raw (an IMAGE_DATA's), not frames."""
        self.raw_left = count
        k = min(len(self._buf), count)
        if k:
            self._raw_queue.append(bytes(self._buf[:k]))
            del self._buf[:k]
        self._raw_unreceived = count - k

    def take_raw(self, count: int) -> int:
        """Count up to ``count`` raw bytes the caller consumed where they landed; returns how many."""
        k = min(count, 0 if self._raw_queue else self._raw_unreceived)
        if k <= 0:
            return 0
        self._raw_unreceived -= k
        self.raw_left -= k
        return k

    def next(
        self, on_header: Callable[[MessageType], None] = _any_order
    ) -> RawBytes | tuple[MessageType, bytes] | None:
        """The next piece of raw bytes, or whole message (type, reassembled payload); None until more come.

        ``on_header`` sees the type of each frame once its header is checked, before its payload
        is waited for; it raises to refuse it.
        """
        if self._raw_queue:
            piece = self._raw_queue.popleft()
            self.raw_left -= len(piece)
            return RawBytes(piece)
        if self._raw_unreceived:
            return None
        buf = self._buf
        while True:
            h = self._header
            if h is None:
                h = self._read_header(on_header)
                if h is None:
                    return None
            size = HEADER_SIZE + h.length + TRAILER_SIZE
            if len(buf) < size:
                return None
            self._header = None
            t = MessageType(h.type)
            check_crc(buf, h.length)
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
            return t, payload

    def _read_header(self, on_header: Callable[[MessageType], None]) -> cs.Container | None:
        """The next frame's header, checked once (then kept until its frame is read)."""
        h = parse_header(self._buf)
        if h is None:
            return None
        t = MessageType(h.type)
        if self._frag_type is not None and t is not self._frag_type:
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED, f"{t.name} inside a {self._frag_type.name} that spans frames"
            )
        on_header(t)
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

    def clear(self) -> None:
        """Drop every byte held (the session has failed); the raw counts stay as they were."""
        self._buf.clear()
        self._raw_queue.clear()
        self._header, self._frag_type, self._frags, self._frag_size = None, None, [], 0
