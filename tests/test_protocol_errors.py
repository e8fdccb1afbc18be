"""Every way a peer can break the protocol ends in a RemoteProtocolError (then ERROR + close).

Bad frames are built by hand here, byte by byte, so the receiving side is tested against
what a hostile or broken peer could send, not only what this module's encoder produces.
"""

import random
import struct

import pytest

from perceus.stage1 import protocol as P
from perceus.stage1.protocol import (
    CLOSED,
    NEED_DATA,
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
    Interface,
    LocalProtocolError,
    Log,
    MasterConnection,
    MessageType,
    NodeConnection,
    ObjectKind,
    Ping,
    ProtocolError,
    RemoteProtocolError,
    Script,
    ScriptResult,
    State,
    Wait,
)

from tests.support.protocol_harness import KEY, MAC, Pair, deliver, drain, make_objects, sample_messages

T = MessageType


def u8(n: int) -> bytes:
    return struct.pack(">B", n)


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def s8(b: bytes) -> bytes:
    return u8(len(b)) + b


def s16(b: bytes) -> bytes:
    return u16(len(b)) + b


def hello_payload(
    versions=(1,),
    state=b"init",
    nodeid=b"\x00\x16\x3e\x5a\x00\x01",
    cpus=4,
    serial=b"",
    asset=b"",
    interfaces=((b"eth0", bytes(6)),),
    count=None,
) -> bytes:
    return (
        u8(len(versions))
        + b"".join(u16(v) for v in versions)
        + s8(state)
        + nodeid
        + bytes(32)
        + u32(cpus)
        + u64(1 << 30)
        + bytes(16)
        + s8(serial)
        + s8(asset)
        + u8(len(interfaces) if count is None else count)
        + b"".join(s8(n) + s8(h) for n, h in interfaces)
    )


def offer_payload(image_size=10, chunks=((10, 20),), count=None, args=b"", vnfs=b"v") -> bytes:
    return (
        s8(vnfs)
        + u64(image_size)
        + bytes(32)
        + u64(0)
        + bytes(32)
        + u64(5)
        + bytes(32)
        + s16(args)
        + u32(len(chunks) if count is None else count)
        + b"".join(u64(c) + u64(u) + bytes(32) for c, u in chunks)
    )


def frame(t: int, payload: bytes, flags: int = 0, version: int = 1) -> bytes:
    return P.encode_frame(t, payload, flags, version)


def remote_error(
    conn: P.Connection, data: bytes, code: ErrorCode, *, piecewise: bool = False
) -> RemoteProtocolError:
    """Feed ``data`` (whole, or byte by byte) and expect the error ``code``."""
    with pytest.raises(RemoteProtocolError) as info:
        if piecewise:
            for i in range(len(data)):
                conn.receive_data(data[i : i + 1])
                drain(conn)
        else:
            conn.receive_data(data)
            drain(conn)
    exc = info.value
    assert exc.code is code, exc
    assert conn.state is State.FAILED
    with pytest.raises(RemoteProtocolError) as again:  # the error sticks
        conn.next_event()
    assert again.value is exc
    # the I/O layer's answer: one ERROR frame, which the peer decodes
    answer = conn.send(exc.to_event())
    assert P.decode_payload(T.ERROR, P.decode_frame(answer)[0].payload) == exc.to_event()
    with pytest.raises(LocalProtocolError):
        conn.send(exc.to_event())  # only once
    return exc


def master_in(state: State) -> Pair:
    """A pair driven until the master is in ``state`` (the node agrees)."""
    pair = Pair(21, "whole")
    pair.objects = make_objects(random.Random(21), 3000)
    if state is State.HELLO:
        return pair
    pair.hello()
    if state is State.ANSWER:
        return pair
    pair.to_node(Assign("n1", "v", Follows.SCRIPT | Follows.IMAGE))
    if state is State.SCRIPT:
        return pair
    pair.to_node(Script(b"true"))
    if state is State.SCRIPT_RESULT:
        return pair
    pair.to_master(ScriptResult(0))
    if state is State.OFFER:
        return pair
    pair.to_node(pair.objects.offer())
    if state is State.REQUEST:
        return pair
    pair.to_master(ImageRequest(ObjectKind.IMAGE))
    assert state is State.IMAGE_DATA
    return pair


# --- frame-level errors ---


def test_bad_magic_is_caught_at_the_first_byte():
    exc = remote_error(MasterConnection(), b"G", ErrorCode.BAD_MAGIC)
    assert "bad magic 47" in exc.message
    remote_error(MasterConnection(), b"GET / HTTP/1.1\r\n\r\n", ErrorCode.BAD_MAGIC)
    remote_error(MasterConnection(), b"\x89PRX" + bytes(20), ErrorCode.BAD_MAGIC, piecewise=True)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version_names_the_supported_ones(version):
    exc = remote_error(
        MasterConnection(), frame(T.HELLO, hello_payload(), version=version), ErrorCode.UNSUPPORTED_VERSION
    )
    assert f"version {version} is not supported; supported versions: 1" in exc.message
    # the ERROR frame carries that text to the node
    node = NodeConnection()
    node.send(Hello(MAC, "init"))
    node.receive_data(MasterConnection().send(exc.to_event()))
    error = node.next_event()
    assert error == Error(ErrorCode.UNSUPPORTED_VERSION, exc.message)
    assert node.state is State.FAILED and node.peer_error == error and node.next_event() is CLOSED


def test_hello_offering_no_common_version():
    exc = remote_error(
        MasterConnection(), frame(T.HELLO, hello_payload(versions=(2, 3))), ErrorCode.UNSUPPORTED_VERSION
    )
    assert "versions 2, 3; supported versions: 1" in exc.message


@pytest.mark.parametrize("t", [0x00, 0x10, 0x42, 0xFF])
def test_unknown_type_names_the_supported_ones(t):
    exc = remote_error(MasterConnection(), frame(t, b""), ErrorCode.UNKNOWN_TYPE)
    assert f"unknown message type 0x{t:02x}; supported types: 0x01 HELLO, 0x02 AUTH_CHALLENGE" in exc.message
    assert exc.message.endswith("0x0e ERROR, 0x0f BYE")
    with pytest.raises(RemoteProtocolError) as info:
        P.decode_payload(t, b"")
    assert info.value.code is ErrorCode.UNKNOWN_TYPE


def test_crc_mismatch():
    good = frame(T.HELLO, hello_payload())
    for i in (13, len(good) - 5, len(good) - 1):  # payload byte, last payload byte, CRC byte
        bad = bytearray(good)
        bad[i] ^= 0x01
        remote_error(MasterConnection(), bytes(bad), ErrorCode.BAD_CRC)
        with pytest.raises(RemoteProtocolError):
            P.decode_frame(bytes(bad))


def test_payload_over_the_bound_is_refused_from_the_header_alone():
    header = P.MAGIC + bytes([1, T.HELLO]) + u16(0) + u32(P.MAX_FRAME_PAYLOAD + 1)
    exc = remote_error(MasterConnection(), header, ErrorCode.TOO_LARGE)
    assert str(P.MAX_FRAME_PAYLOAD) in exc.message
    remote_error(
        MasterConnection(), P.MAGIC + bytes([1, T.HELLO]) + u16(0) + u32(2**32 - 1), ErrorCode.TOO_LARGE
    )


def test_flags():
    remote_error(MasterConnection(), frame(T.HELLO, hello_payload(), flags=0x8000), ErrorCode.MALFORMED)
    # a MORE frame must be full-sized, so a message is never split into tiny pieces
    exc = remote_error(
        MasterConnection(), frame(T.HELLO, hello_payload(), flags=P.FLAG_MORE), ErrorCode.MALFORMED
    )
    assert "MORE" in exc.message


def test_message_over_its_bound_across_frames():
    pair = master_in(State.SCRIPT)
    full = bytes(P.MAX_FRAME_PAYLOAD)
    data = b"".join(frame(T.SCRIPT, full, P.FLAG_MORE) for _ in range(4)) + frame(T.SCRIPT, b"x")
    exc = remote_error(pair.node, data, ErrorCode.TOO_LARGE)
    assert str(P.MAX_SCRIPT) in exc.message
    # a LOG is one frame at most
    pair = master_in(State.SCRIPT)
    remote_error(pair.node, frame(T.LOG, full, P.FLAG_MORE) + frame(T.LOG, b"x"), ErrorCode.TOO_LARGE)


def test_frames_of_one_message_cannot_be_interleaved():
    pair = master_in(State.SCRIPT)
    data = frame(T.SCRIPT, bytes(P.MAX_FRAME_PAYLOAD), P.FLAG_MORE) + P.encode_message(Log("hi"))
    exc = remote_error(pair.node, data, ErrorCode.UNEXPECTED)
    assert "LOG inside a SCRIPT" in exc.message


# --- payload errors ---


def test_hand_built_payloads_are_what_the_encoder_makes():
    hello = Hello(
        MAC, "init", node_nonce=bytes(32), interfaces=(Interface("eth0", "00:00:00:00:00:00"),), cpus=4
    )
    hello = Hello(**{**hello.__dict__, "memory": 1 << 30})
    assert P.encode_payload(hello) == hello_payload()
    offer = ImageOffer("v", 10, "00" * 32, (ChunkEntry(0, 10, 20, "00" * 32),), 0, "00" * 32, 5, "00" * 32)
    assert P.encode_payload(offer) == offer_payload()


def test_truncated_payloads():
    payload = hello_payload(serial=b"SN", asset=b"AT")
    for cut in range(len(payload)):
        with pytest.raises(RemoteProtocolError) as info:
            P.decode_payload(T.HELLO, payload[:cut])
        assert info.value.code in (ErrorCode.MALFORMED, ErrorCode.TOO_LARGE) and "HELLO" in info.value.message
    exc = remote_error(MasterConnection(), frame(T.HELLO, payload[:20]), ErrorCode.MALFORMED)
    assert "truncated" in exc.message


def test_trailing_bytes():
    exc = remote_error(MasterConnection(), frame(T.HELLO, hello_payload() + b"\x00"), ErrorCode.MALFORMED)
    assert "trailing bytes" in exc.message
    for message in sample_messages():
        if message.TYPE is not T.SCRIPT:  # a SCRIPT is all payload: a byte more is a longer script
            with pytest.raises(RemoteProtocolError) as info:
                P.decode_payload(message.TYPE, P.encode_payload(message) + b"\x00")
            assert info.value.code in (ErrorCode.MALFORMED, ErrorCode.TOO_LARGE)


def test_length_prefix_beyond_the_payload():
    with pytest.raises(RemoteProtocolError) as info:
        P.decode_payload(T.LOG, u8(6) + u16(5000) + b"short")
    assert info.value.code is ErrorCode.MALFORMED and "truncated" in info.value.message


BAD_FIELDS = [
    # (type, payload, code, words in the message)
    (T.HELLO, hello_payload(state=b"s" * 33), ErrorCode.MALFORMED, "state: 33 bytes, more than 32"),
    (T.HELLO, hello_payload(state=b""), ErrorCode.MALFORMED, "state: empty"),
    (T.HELLO, hello_payload(state=b"Init"), ErrorCode.MALFORMED, "state 'Init' is not of the form"),
    (T.HELLO, hello_payload(state=b"\xffinit"), ErrorCode.MALFORMED, "state: invalid UTF-8 at byte 0"),
    (T.HELLO, hello_payload(serial=b"S" * 129), ErrorCode.MALFORMED, "serial: 129 bytes, more than 128"),
    (T.HELLO, hello_payload(serial=b"ok\xc3("), ErrorCode.MALFORMED, "serial: invalid UTF-8 at byte 2"),
    (T.HELLO, hello_payload(serial=b"a\nb"), ErrorCode.MALFORMED, "serial: control character '\\n'"),
    (T.HELLO, hello_payload(asset=b"A" * 200), ErrorCode.MALFORMED, "asset tag: 200 bytes, more than 128"),
    (T.HELLO, hello_payload(versions=()), ErrorCode.MALFORMED, "versions: 0 entries, fewer than 1"),
    (T.HELLO, hello_payload(versions=(0,)), ErrorCode.MALFORMED, "version 0 is outside 1..65535"),
    (T.HELLO, hello_payload(versions=(1,) * 17), ErrorCode.TOO_LARGE, "versions: 17 entries, more than 16"),
    (
        T.HELLO,
        hello_payload(interfaces=[(b"eth%d" % i, bytes(6)) for i in range(65)]),
        ErrorCode.TOO_LARGE,
        "interfaces: 65 entries, more than 64",
    ),
    (T.HELLO, hello_payload(count=255, interfaces=()), ErrorCode.TOO_LARGE, "interfaces: 255 entries"),
    (T.HELLO, hello_payload(interfaces=((b"e" * 16, b""),)), ErrorCode.MALFORMED, "interface name: 16 bytes"),
    (T.HELLO, hello_payload(interfaces=((b"a/b", b""),)), ErrorCode.MALFORMED, "interface name 'a/b'"),
    (T.HELLO, hello_payload(interfaces=((b"..", b""),)), ErrorCode.MALFORMED, "interface name '..'"),
    (T.HELLO, hello_payload(interfaces=((b"", b""),)), ErrorCode.MALFORMED, "interface name: empty"),
    (
        T.HELLO,
        hello_payload(interfaces=((b"ib0", bytes(33)),)),
        ErrorCode.MALFORMED,
        "33 bytes, more than 32",
    ),
    (T.AUTH_RESPONSE, s8(bytes(16)), ErrorCode.MALFORMED, "tag: 16 bytes, not one of (0, 32)"),
    (T.AUTH_CHALLENGE, bytes(63), ErrorCode.MALFORMED, "truncated"),
    (T.ASSIGN, s8(b"n" * 64) + s8(b"") + u8(0), ErrorCode.MALFORMED, "node name: 64 bytes, more than 63"),
    (T.ASSIGN, s8(b"-n1") + s8(b"") + u8(0), ErrorCode.MALFORMED, "node name '-n1' is not of the form"),
    (T.ASSIGN, s8(b"n1") + s8(b"v" * 129) + u8(0), ErrorCode.MALFORMED, "VNFS name: 129 bytes"),
    (T.ASSIGN, s8(b"n1") + s8(b"v") + u8(4), ErrorCode.MALFORMED, "follows 0x4 has unknown bits 0x4"),
    (T.ASSIGN, s8(b"n1") + s8(b"") + u8(2), ErrorCode.MALFORMED, "announces an image but names no VNFS"),
    (T.WAIT, u32(0) + s16(b""), ErrorCode.MALFORMED, "seconds 0 is outside 1..86400"),
    (T.WAIT, u32(86401) + s16(b""), ErrorCode.MALFORMED, "seconds 86401"),
    (T.WAIT, u32(5) + s16(b"r" * 257), ErrorCode.MALFORMED, "reason: 257 bytes, more than 256"),
    (T.SCRIPT_RESULT, u32(0) + u32(65537) + bytes(65537), ErrorCode.TOO_LARGE, "output tail: 65537 bytes"),
    (
        T.IMAGE_OFFER,
        offer_payload(count=65537, chunks=()),
        ErrorCode.TOO_LARGE,
        "65537 entries, more than 65536",
    ),
    (T.IMAGE_OFFER, offer_payload(image_size=11), ErrorCode.MALFORMED, "covers 10 bytes, the image has 11"),
    (T.IMAGE_OFFER, offer_payload(chunks=((0, 1), (10, 1)), image_size=10), ErrorCode.MALFORMED, "csize 0"),
    (T.IMAGE_OFFER, offer_payload(args=b"a" * 4097), ErrorCode.MALFORMED, "kernel args: 4097 bytes"),
    (T.IMAGE_OFFER, offer_payload(args=b"a\x00b"), ErrorCode.MALFORMED, "control character"),
    (T.IMAGE_OFFER, offer_payload(vnfs=b""), ErrorCode.MALFORMED, "VNFS name: empty"),
    (
        T.IMAGE_OFFER,
        offer_payload(image_size=2**41, chunks=((2**41, 1),)),
        ErrorCode.MALFORMED,
        "outside 0..",
    ),
    (T.IMAGE_REQUEST, u8(4) + u64(0) + u64(0), ErrorCode.MALFORMED, "object 4 is unknown (known: 1 IMAGE"),
    (T.IMAGE_DATA, u8(1) + u64(0) + u64(2**40 + 1), ErrorCode.MALFORMED, "length 1099511627777 is outside"),
    (T.LOG, u8(8) + s16(b"x"), ErrorCode.MALFORMED, "level 8 is outside 0..7"),
    (T.LOG, u8(6) + s16(b"x" * 4097), ErrorCode.MALFORMED, "log message: 4097 bytes, more than 4096"),
    (T.LOG, u8(6) + s16(b"bell\x07"), ErrorCode.MALFORMED, "control character '\\x07'"),
    (T.LOG, u8(6) + s16(b"\xed\xa0\x80"), ErrorCode.MALFORMED, "invalid UTF-8"),  # a surrogate
    (T.ERROR, u16(1) + s16(b"e" * 1025), ErrorCode.MALFORMED, "error message: 1025 bytes, more than 1024"),
    (T.BYE, s16(b"r" * 257), ErrorCode.MALFORMED, "reason: 257 bytes"),
]


@pytest.mark.parametrize(
    ("t", "payload", "code", "words"), BAD_FIELDS, ids=lambda v: getattr(v, "name", None)
)
def test_bad_fields(t, payload, code, words):
    with pytest.raises(RemoteProtocolError) as info:
        P.decode_payload(t, payload)
    assert info.value.code is code and words in info.value.message, info.value.message
    assert info.value.message.startswith(f"{T(t).name}: ")


def test_bad_field_through_the_master():
    exc = remote_error(
        MasterConnection(), frame(T.HELLO, hello_payload(state=b"x" * 40)), ErrorCode.MALFORMED
    )
    assert "state: 40 bytes" in exc.message


def test_too_many_chunks_is_refused_before_the_table_is_read():
    pair = master_in(State.OFFER)
    remote_error(
        pair.node, frame(T.IMAGE_OFFER, offer_payload(count=2**32 - 1, chunks=())), ErrorCode.TOO_LARGE
    )


BAD_SENDS = [
    Hello("00:11:22", "init"),
    Hello("zz:11:22:33:44:55", "init"),
    Hello(MAC, "init", cpus="4"),
    Hello(MAC, "init", cpus=True),
    Hello(MAC, "init", cpus=-1),
    Hello(MAC, "init", node_nonce=bytes(31)),
    Hello(MAC, "init", smbios_uuid="not-a-uuid"),
    Hello(MAC, "in it"),
    Hello(MAC, "init", serial="\ud800"),
    Hello(MAC, "init", interfaces=tuple(Interface(f"e{i}") for i in range(65))),
    Hello(MAC, "init", interfaces=(Interface("eth0", "00:11:2"),)),
    Hello(MAC, "init", interfaces=("eth0",)),
    Hello(MAC, "init", versions=()),
]


@pytest.mark.parametrize("message", BAD_SENDS, ids=range(len(BAD_SENDS)))
def test_bad_fields_are_refused_on_send(message):
    node = NodeConnection()
    with pytest.raises(LocalProtocolError):
        node.send(message)
    assert node.state is State.HELLO  # nothing changed: a good HELLO still goes
    node.send(Hello(MAC, "init"))
    assert node.state is State.ANSWER


def test_bad_messages_are_refused_on_send():
    rng = random.Random(0)
    bad = [
        Assign("n" * 64),
        Assign("n1", "", Follows.IMAGE),
        Wait(0),
        Script(bytes(P.MAX_SCRIPT + 1)),
        ScriptResult(2**31),
        ScriptResult(0, bytes(P.MAX_OUTPUT_TAIL + 1)),
        ImageOffer("v", 5, "00" * 32, (ChunkEntry(1, 5, 5, "00" * 32),), 0, "00" * 32, 0, "00" * 32),
        ImageOffer("v", 6, "00" * 32, (ChunkEntry(0, 5, 5, "00" * 32),), 0, "00" * 32, 0, "00" * 32),
        ImageOffer("v", 5, "00" * 31, (ChunkEntry(0, 5, 5, "00" * 32),), 0, "00" * 32, 0, "00" * 32),
        ImageOffer("v", 5, "00" * 32, (ChunkEntry(0, 5, 5, "xyz"),), 0, "00" * 32, 0, "00" * 32),
        ImageOffer(
            "v",
            P.MAX_CHUNKS + 1,
            "00" * 32,
            tuple(ChunkEntry(i, 1, 1, rng.randbytes(32).hex()) for i in range(P.MAX_CHUNKS + 1)),
            0,
            "00" * 32,
            0,
            "00" * 32,
        ),
        Log("x", 9),
        Log("x" * (P.MAX_LOG + 1)),
        Ping(-1),
        Error(70000),
        Script("a str, not bytes"),
        Bye(b"bytes, not a str"),
        ImageOffer("v", 5, "00" * 32, [{"offset": 0, "csize": 5}], 0, "00" * 32, 0, "00" * 32),
        ImageOffer("v", 5, "00" * 32, "chunks", 0, "00" * 32, 0, "00" * 32),
        ImageOffer("v", 5, "00" * 32, (ChunkEntry(0, 0, 5, "00" * 32),), 0, "00" * 32, 0, "00" * 32),
        "not a message",
        Interface("eth0"),
    ]
    for message in bad:
        with pytest.raises(LocalProtocolError):
            P.encode_message(message)
    node = NodeConnection()
    for event in ("not an event", P.Event()):
        with pytest.raises(LocalProtocolError):
            node.send(event)
    with pytest.raises(LocalProtocolError):
        MasterConnection().image_data()  # no request to answer
    with pytest.raises(RemoteProtocolError) as info:
        P.decode_payload(T.LOG, bytes(P.MAX_FRAME_PAYLOAD + 1))  # one message, reassembled, too big
    assert info.value.code is ErrorCode.TOO_LARGE


# --- order errors ---

OUT_OF_ORDER = [
    # (master state, message from the node, words)
    (State.HELLO, Log("early"), "LOG before HELLO"),
    (State.HELLO, Ping(1), "PING before HELLO"),
    (State.HELLO, ScriptResult(0), "SCRIPT_RESULT from the node in state HELLO; expected HELLO"),
    (State.ANSWER, Hello(MAC, "init"), "HELLO from the node in state ANSWER"),
    (State.ANSWER, ScriptResult(0), "expected ASSIGN | AUTH_CHALLENGE | WAIT from the master"),
    (State.SCRIPT, ImageRequest(ObjectKind.IMAGE), "IMAGE_REQUEST from the node in state SCRIPT"),
    (State.SCRIPT_RESULT, Bye(), "BYE from the node in state SCRIPT_RESULT; expected SCRIPT_RESULT"),
    (State.REQUEST, ScriptResult(0), "expected BYE | IMAGE_REQUEST"),
    (State.IMAGE_DATA, ImageRequest(ObjectKind.IMAGE), "IMAGE_REQUEST from the node in state IMAGE_DATA"),
    (State.ANSWER, Assign("n1"), "ASSIGN is sent by the master, not the node"),
    (State.SCRIPT, Script(b""), "SCRIPT is sent by the master, not the node"),
]


@pytest.mark.parametrize(("state", "message", "words"), OUT_OF_ORDER, ids=lambda v: getattr(v, "name", None))
def test_out_of_order_from_the_node(state, message, words):
    pair = master_in(state)
    data = P.encode_message(message)
    # refused from its header alone: the payload is never buffered
    exc = remote_error(pair.master, data[: P.HEADER_SIZE], ErrorCode.UNEXPECTED)
    assert words in exc.message, exc.message
    # and the node's own machine would not have sent it
    with pytest.raises(LocalProtocolError):
        pair.node.send(message)


def test_out_of_order_from_the_master():
    pair = master_in(State.ANSWER)
    remote_error(pair.node, P.encode_message(Script(b"x")), ErrorCode.UNEXPECTED)
    pair = master_in(State.ANSWER)
    remote_error(pair.node, P.encode_message(ImageData(ObjectKind.IMAGE, 0, 0)), ErrorCode.UNEXPECTED)
    pair = master_in(State.ANSWER)
    exc = remote_error(pair.node, P.encode_message(Hello(MAC, "init")), ErrorCode.UNEXPECTED)
    assert "HELLO is sent by the node, not the master" in exc.message
    # ASSIGN announced only a script: an IMAGE_OFFER after the script's result is out of order
    pair = Pair(22, "whole")
    pair.hello()
    pair.to_node(Assign("n1", "v", Follows.SCRIPT))
    pair.to_node(Script(b"true"))
    pair.to_master(ScriptResult(0))
    offer = make_objects(random.Random(1), 100).offer()
    remote_error(pair.node, P.encode_message(offer), ErrorCode.UNEXPECTED)
    with pytest.raises(LocalProtocolError):
        pair.master.send(offer)
    # ASSIGN announced only an image: a SCRIPT is out of order
    pair = Pair(23, "whole")
    pair.hello()
    pair.to_node(Assign("n1", "v", Follows.IMAGE))
    remote_error(pair.node, P.encode_message(Script(b"true")), ErrorCode.UNEXPECTED)


def test_local_order_errors_change_nothing():
    pair = master_in(State.ANSWER)
    for message in (Script(b"x"), ImageData(ObjectKind.IMAGE, 0, 0), P.AuthChallenge(bytes(32), bytes(32))):
        with pytest.raises(LocalProtocolError):
            pair.master.send(message)
    with pytest.raises(LocalProtocolError):
        pair.node.send(ScriptResult(0))
    assert pair.master.state is pair.node.state is State.ANSWER
    pair.to_node(Assign("n1"))
    pair.to_master(Bye())
    assert pair.master.state is State.DONE


def test_image_request_out_of_range():
    for kind, offset, length in (
        (ObjectKind.IMAGE, 3001, 0),
        (ObjectKind.KERNEL, 0, 3001),
        (ObjectKind.OVERLAY, 700, 78),
    ):
        pair = master_in(State.REQUEST)
        with pytest.raises(LocalProtocolError) as info:
            pair.node.send(ImageRequest(kind, offset, length))
        assert info.value.code is ErrorCode.BAD_RANGE
        exc = remote_error(
            pair.master, frame(T.IMAGE_REQUEST, u8(kind) + u64(offset) + u64(length)), ErrorCode.BAD_RANGE
        )
        assert f"IMAGE_REQUEST for {kind.name}" in exc.message


def test_image_data_must_answer_the_request():
    pair = master_in(State.IMAGE_DATA)
    exc = remote_error(pair.node, P.encode_message(ImageData(ObjectKind.IMAGE, 0, 5)), ErrorCode.UNEXPECTED)
    assert "does not answer the request (IMAGE 0+3000)" in exc.message


# --- ends of sessions ---


def test_eof_in_the_middle_of_a_frame():
    master = MasterConnection()
    master.receive_data(P.encode_message(Hello(MAC, "init"))[:30])
    assert master.next_event() is NEED_DATA
    master.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        master.next_event()
    assert info.value.code is ErrorCode.CONNECTION_LOST
    assert info.value.message == "the node closed the connection in the middle of a frame in state HELLO"


def test_eof_between_frames_and_after_the_end():
    pair = master_in(State.SCRIPT)
    pair.node.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        pair.node.next_event()
    assert info.value.message == "the master closed the connection in state SCRIPT"
    pair = master_in(State.ANSWER)
    pair.to_node(Wait(10))
    pair.node.receive_data(b"")
    assert pair.node.next_event() is CLOSED


def test_received_error_ends_the_session():
    pair = master_in(State.SCRIPT_RESULT)
    events = deliver(pair.master, pair.node.send(Error(999, "disk full")), pair.rng, "one")
    assert events == [Error(999, "disk full")]
    assert pair.master.state is pair.node.state is State.FAILED
    assert pair.master.peer_error == Error(999, "disk full")
    pair.master.receive_data(P.encode_message(ScriptResult(0)))
    assert pair.master.next_event() is CLOSED
    with pytest.raises(LocalProtocolError):
        pair.node.send(ScriptResult(0))
    with pytest.raises(LocalProtocolError):
        pair.master.send(Assign("n1"))


def test_data_after_a_failure_is_ignored():
    master = MasterConnection()
    with pytest.raises(RemoteProtocolError):
        master.receive_data(b"junk")
        master.next_event()
    master.receive_data(P.encode_message(Hello(MAC, "init")))
    with pytest.raises(RemoteProtocolError):
        master.next_event()
    assert not master._reader.buffered


def test_error_event_from_an_exception_is_bounded_and_printable():
    exc = ProtocolError(ErrorCode.INTERNAL, "line one\nline two \x00 " + "é" * 2000)
    error = exc.to_event()
    assert len(error.message.encode()) <= P.MAX_ERROR_MESSAGE and "\n" not in error.message
    assert P.decode_payload(T.ERROR, P.encode_payload(error)) == error
    assert ProtocolError(4242, "x").code == 4242  # unknown codes survive as numbers


def test_one_broken_session_does_not_disturb_another():
    good, bad = Pair(30, "random", master_key=KEY, node_key=KEY), Pair(31, "random")
    good.hello()
    bad.hello()
    with pytest.raises(RemoteProtocolError):
        bad.master.receive_data(b"\x00" * 100)
        bad.master.next_event()
    good.authenticate()
    good.to_node(Assign("n1", "v", Follows.IMAGE))
    good.objects = make_objects(good.rng, 1000)
    good.to_node(good.objects.offer())
    assert good.fetch(ObjectKind.IMAGE) == good.objects.image
    good.to_master(Bye())
    assert good.master.state is State.DONE and bad.master.state is State.FAILED
