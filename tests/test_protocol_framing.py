"""The FrameReader alone, without a session: bytes in, whole messages and raw bytes out, bounded.

Valid streams (small messages, a SCRIPT over several frames, IMAGE_DATA with its raw bytes)
are fed in seeded random pieces and must come back exactly; garbage and mutated streams
must raise nothing but RemoteProtocolError; after every drain the reader holds less than
one frame plus one message's bound, and an oversized frame or MORE chain is refused on its
header, before its payload is buffered.
"""

import random

import pytest

from perceus.stage1.protocol import (
    FLAG_MORE,
    HEADER_SIZE,
    MAGIC,
    MAX_FRAME_PAYLOAD,
    MAX_MESSAGE,
    MAX_SCRIPT,
    TRAILER_SIZE,
    Assign,
    Bye,
    ChunkEntry,
    Error,
    ErrorCode,
    Follows,
    Hello,
    ImageData,
    ImageOffer,
    ImageRequest,
    Log,
    MessageType,
    ObjectKind,
    Ping,
    RawBytes,
    RemoteProtocolError,
    Script,
    ScriptResult,
    decode_payload,
    encode_frame,
    encode_message,
)
from perceus.stage1.protocol.framing import FrameReader

from tests.support.protocol_harness import mutate_bytes

BOUND = HEADER_SIZE + TRAILER_SIZE + max(MAX_MESSAGE.values())  # one frame's head and tail + one message


def stream(rng: random.Random, big_script: bool = False) -> tuple[bytes, list]:
    """Valid traffic in one direction or the other (the reader checks no turns) and what it carries."""
    raw = rng.randbytes(rng.randint(0, 3000))
    script = rng.randbytes(2 * MAX_FRAME_PAYLOAD + 1234) if big_script else b"#!/bin/sh\necho hi\n"
    items: list = [
        Hello("00:16:3E:5A:00:01", "init", cpus=4, memory=1 << 30),
        Assign("n0001", "centos", Follows.SCRIPT | Follows.IMAGE),
        Script(script),
        ScriptResult(0, b"hi\n"),
        ImageOffer("centos", 10, "aa" * 32, (ChunkEntry(0, 10, 20, "bb" * 32),), 0, "cc" * 32, 0, "dd" * 32),
        ImageRequest(ObjectKind.IMAGE, 0, len(raw)),
        ImageData(ObjectKind.IMAGE, 0, len(raw)),
        raw,
        Log("line one\nline two", 5),
        Ping(rng.randrange(1 << 64)),
        ImageData(ObjectKind.KERNEL, 0, 0),
        Error(int(ErrorCode.REFUSED), "busy"),
        Bye("done"),
    ]
    rng.shuffle(items)
    out, expected = [], []
    for item in items:
        if isinstance(item, bytes):
            continue  # raw bytes go right behind their IMAGE_DATA
        out.append(encode_message(item))
        expected.append(item)
        if isinstance(item, ImageData) and item.length:
            out.append(raw)
            expected.append(raw)
    return b"".join(out), expected


def cut(data: bytes, rng: random.Random):
    """``data`` in pieces of 1 byte to 64 KiB."""
    i = 0
    while i < len(data):
        n = rng.choice([1, rng.randint(1, 16), rng.randint(1, 5000), rng.randint(1, 65536)])
        yield data[i : i + n]
        i += n


def drain(reader: FrameReader, got: list) -> None:
    """Everything ready now; an IMAGE_DATA makes the reader expect its raw bytes, as a session does."""
    while (item := reader.next()) is not None:
        if isinstance(item, RawBytes):
            got.append(item.data)
            continue
        t, payload = item
        message = decode_payload(t, payload)
        got.append(message)
        if isinstance(message, ImageData):
            reader.expect_raw(message.length)
    assert reader.buffered < BOUND


def join_raw(items: list) -> list:
    out: list = []
    for item in items:
        if isinstance(item, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += item
        else:
            out.append(item)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_random_splits_of_valid_streams_come_back_whole(seed):
    rng = random.Random(seed)
    data, expected = stream(rng, big_script=seed % 10 == 0)
    reader, got = FrameReader(), []
    for piece in cut(data, rng):
        if reader.raw_wanted and rng.random() < 0.5:  # the zero-copy path: consume raw bytes in place
            k = reader.take_raw(len(piece))
            got.append(piece[:k])
            piece = piece[k:]
        if piece:
            reader.feed(piece)
        drain(reader, got)
    assert join_raw([g for g in got if g != b""]) == join_raw([e for e in expected if e != b""])
    assert reader.buffered == 0 and reader.raw_left == 0 and reader.raw_wanted == 0


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few byte-level mutations, and sometimes a sealed frame of any type and flags slipped in."""
    for _ in range(rng.randint(1, 3)):
        data = mutate_bytes(data, rng)
    if rng.random() < 0.3:
        i = rng.randint(0, len(data))
        frame = encode_frame(rng.randrange(256), rng.randbytes(rng.randint(0, 40)), rng.randrange(4))
        data = data[:i] + frame + data[i:]
    return data


@pytest.mark.parametrize("block", range(4))
def test_garbage_raises_only_protocol_errors_and_stays_bounded(block):
    rng = random.Random(5000 + block)
    failures = 0
    for _ in range(300):
        if rng.random() < 0.3:
            data = rng.randbytes(rng.randint(0, 300))
            if rng.random() < 0.5:
                data = MAGIC + bytes([1, rng.randrange(256)]) + rng.randbytes(6) + data
        else:
            data = mutate(stream(rng)[0], rng)
        reader, got = FrameReader(), []
        try:
            for piece in cut(data, rng):
                reader.feed(piece)
                drain(reader, got)
        except RemoteProtocolError as exc:
            assert exc.code is not ErrorCode.INTERNAL
            failures += 1
            reader.clear()
            assert reader.buffered == 0
    assert failures > 200  # the CRC and the header checks catch nearly every mutation


def test_an_oversized_frame_is_refused_on_its_header():
    header = encode_frame(MessageType.LOG, b"")[: HEADER_SIZE - 4] + (MAX_FRAME_PAYLOAD + 1).to_bytes(
        4, "big"
    )
    reader = FrameReader()
    reader.feed(header)
    with pytest.raises(RemoteProtocolError) as exc:
        reader.next()
    assert exc.value.code is ErrorCode.TOO_LARGE


def test_a_more_chain_past_the_message_bound_is_refused_before_its_payload():
    """SCRIPT may span MAX_SCRIPT bytes: the frame that would pass it is refused on its header."""
    full = bytes(MAX_FRAME_PAYLOAD)
    reader = FrameReader()
    for _ in range(MAX_SCRIPT // MAX_FRAME_PAYLOAD):
        reader.feed(encode_frame(MessageType.SCRIPT, full, FLAG_MORE))
        assert reader.next() is None
    assert reader.buffered == MAX_SCRIPT
    reader.feed(encode_frame(MessageType.SCRIPT, b"x")[:HEADER_SIZE])
    with pytest.raises(RemoteProtocolError) as exc:
        reader.next()
    assert exc.value.code is ErrorCode.TOO_LARGE
    assert reader.buffered == MAX_SCRIPT + HEADER_SIZE  # nothing of the refused frame's payload


def test_the_header_hook_refuses_before_the_payload_arrives():
    seen = []

    def refuse(t: MessageType) -> None:
        seen.append(t)
        raise RemoteProtocolError(ErrorCode.UNEXPECTED, f"{t.name} out of turn")

    reader = FrameReader()
    reader.feed(encode_message(Script(bytes(5000)))[: HEADER_SIZE + 10])
    with pytest.raises(RemoteProtocolError, match="SCRIPT out of turn"):
        reader.next(refuse)
    assert seen == [MessageType.SCRIPT]


def test_a_frame_of_another_type_inside_a_more_chain_is_refused():
    reader = FrameReader()
    reader.feed(encode_frame(MessageType.SCRIPT, bytes(MAX_FRAME_PAYLOAD), FLAG_MORE))
    reader.feed(encode_message(Ping(1)))
    with pytest.raises(RemoteProtocolError, match="PING inside a SCRIPT"):
        reader.next()


def test_raw_bytes_already_buffered_come_out_before_take_raw_may_take_more():
    raw = bytes(range(200))
    reader = FrameReader()
    reader.feed(encode_message(ImageData(ObjectKind.OVERLAY, 0, 500)) + raw)
    t, payload = reader.next()
    reader.expect_raw(decode_payload(t, payload).length)
    assert reader.raw_wanted == 0 and reader.take_raw(100) == 0  # 200 bytes wait in the queue
    assert reader.next() == RawBytes(raw) and reader.raw_left == 300
    assert reader.raw_wanted == 300 and reader.take_raw(1000) == 300
    assert reader.raw_left == 0 and reader.next() is None
    reader.feed(encode_message(Bye()))
    assert reader.next() == (MessageType.BYE, b"\x00\x00")


def test_frames_of_another_version_than_the_sessions_are_refused():
    reader = FrameReader()
    reader.version = 2
    reader.feed(encode_message(Ping(1)))
    with pytest.raises(RemoteProtocolError) as exc:
        reader.next()
    assert exc.value.code is ErrorCode.UNSUPPORTED_VERSION
