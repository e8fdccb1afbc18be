"""The node <-> master protocol (stage1/protocol/): frames, messages and whole sessions.

Both state machines are driven against each other without sockets
(tests/support/protocol_harness.py); every byte crosses in seeded random-sized pieces (1-byte
pieces included), so each parse is exercised at every split point. Error paths are in
test_protocol_errors.py, authentication in test_protocol_auth.py, fuzzing in test_protocol_fuzz.py,
the FrameReader alone in test_protocol_framing.py.
"""

import random
import re
import subprocess
import sys
import zlib

import pytest

from perceus.stage1 import protocol as P
from perceus.stage1.protocol import (
    CLOSED,
    Assign,
    AuthResponse,
    Bye,
    ChunkEntry,
    Error,
    ErrorCode,
    Follows,
    Hello,
    ImageData,
    ImageOffer,
    ImageRequest,
    LocalProtocolError,
    Log,
    MasterConnection,
    MessageType,
    NodeConnection,
    ObjectKind,
    Ping,
    Pong,
    RawBytes,
    RemoteProtocolError,
    Role,
    Script,
    ScriptResult,
    State,
    Wait,
)

from tests.support.protocol_harness import (
    DOC,
    KEY,
    MAC,
    MODES,
    Pair,
    deliver,
    example_hello,
    make_objects,
    merge_raw,
    provision,
    sample_messages,
)

# --- frames and messages ---


def test_frame_layout():
    frame = P.encode_frame(MessageType.PING, b"\x00" * 7 + b"\x2a")
    assert frame[:4] == b"\x89PRC" == P.MAGIC
    assert frame[4:12] == bytes([1, 0x0C, 0, 0, 0, 0, 0, 8])
    assert frame[12:20] == bytes(7) + b"\x2a"
    assert frame[20:] == zlib.crc32(frame[:20]).to_bytes(4, "big")
    assert len(frame) == P.HEADER_SIZE + 8 + P.TRAILER_SIZE
    assert P.decode_frame(frame) == (P.Frame(1, 0x0C, 0, frame[12:20]), len(frame))
    assert P.decode_frame(frame[:-1]) is None and P.decode_frame(b"") is None
    assert P.decode_payload(MessageType.PING, frame[12:20]) == Ping(42)


def split_frames(data: bytes) -> list[P.Frame]:
    frames = []
    while data:
        decoded = P.decode_frame(data)
        assert decoded is not None
        frame, size = decoded
        frames.append(frame)
        data = data[size:]
    return frames


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_message_round_trip(message):
    data = P.encode_message(message)
    frames = split_frames(data)
    assert {f.type for f in frames} == {message.TYPE}
    assert all(f.flags == P.FLAG_MORE for f in frames[:-1]) and frames[-1].flags == 0
    assert all(len(f.payload) == P.MAX_FRAME_PAYLOAD for f in frames[:-1])
    payload = b"".join(f.payload for f in frames)
    assert payload == P.encode_payload(message)
    decoded = P.decode_payload(message.TYPE, payload)
    assert decoded == message
    assert P.encode_payload(decoded) == payload


def test_samples_cover_every_type():
    assert {m.TYPE for m in sample_messages()} == set(MessageType)


def test_decoded_values_are_canonical():
    hello = P.decode_payload(MessageType.HELLO, P.encode_payload(Hello("0a:0b:0c:0d:0e:0f", "init")))
    assert hello.nodeid == "0A:0B:0C:0D:0E:0F"
    offer = ImageOffer("v", 5, "AB" * 32, [ChunkEntry(0, 5, 9, "CD" * 32)], 0, "00" * 32, 0, "00" * 32)
    decoded = P.decode_payload(MessageType.IMAGE_OFFER, P.encode_payload(offer))
    assert decoded.image_sha256 == "ab" * 32 and decoded.chunks == (ChunkEntry(0, 5, 9, "cd" * 32),)
    assert isinstance(offer.chunks, tuple)


def test_script_fragments_exactly_at_the_bound():
    data = P.encode_message(Script(bytes(P.MAX_SCRIPT)))
    frames = split_frames(data)
    assert [f.flags for f in frames] == [P.FLAG_MORE] * 3 + [0]
    with pytest.raises(LocalProtocolError) as info:
        P.encode_message(Script(bytes(P.MAX_SCRIPT + 1)))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_largest_chunk_table_through_the_machines():
    rng = random.Random(3)
    chunks = tuple(ChunkEntry(i * 4096, 4096, 8192, rng.randbytes(32).hex()) for i in range(P.MAX_CHUNKS))
    offer = ImageOffer("big", P.MAX_CHUNKS * 4096, "00" * 32, chunks, 0, "00" * 32, 10, "00" * 32)
    pair = Pair(1, "random")
    pair.hello()
    pair.to_node(Assign("n1", "big", Follows.IMAGE))
    data = pair.master.send(offer)
    assert len(split_frames(data)) == 4  # 3 MiB of chunk table: one message, several frames
    assert deliver(pair.node, data, pair.rng, "whole") == [offer]


# --- sessions ---


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [1, 2])
def test_init_with_auth(seed, mode):
    pair = Pair(seed, mode, node_key=KEY, master_key=KEY, auth_required=True)
    pair.hello("init")
    assert pair.master.waiting_for == frozenset() and pair.master.our_turn
    pair.authenticate()
    assert pair.master.authenticated and pair.node.authenticated
    provision(pair, make_objects(pair.rng))


@pytest.mark.parametrize("mode", MODES)
def test_init_without_auth(mode):
    pair = Pair(3, mode)
    pair.hello("init", smbios_uuid="4c4c4544-0042-3510-8052-b4c04f384d32", serial="CZ123", asset_tag="R7U12")
    assert not pair.master.authenticated
    provision(pair, make_objects(pair.rng))


@pytest.mark.parametrize("mode", MODES)
def test_init_with_optional_auth_and_a_keyless_node(mode):
    pair = Pair(4, mode, master_key=KEY)
    pair.hello()
    pair.authenticate()  # the node answers with an empty tag, which an optional master accepts
    assert pair.node.auth_response() == AuthResponse(b"")
    assert not pair.master.authenticated
    provision(pair, make_objects(pair.rng))


@pytest.mark.parametrize("mode", MODES)
def test_ready_check_in(mode):
    pair = Pair(5, mode)
    pair.hello("ready")
    assert pair.to_node(Assign("n0001", "centos-5.1", Follows.SCRIPT)) == [Assign("n0001", "centos-5.1", 1)]
    script = b"#!/bin/sh\n" + b": modules for ready/all\n" * 50
    assert pair.to_node(Script(script)) == [Script(script)]
    assert pair.to_master(ScriptResult(1, b"oops")) == [ScriptResult(1, b"oops")]
    assert pair.node.state is pair.master.state is State.FINISH
    assert pair.to_master(Bye()) == [Bye()]
    assert pair.node.state is pair.master.state is State.DONE


def test_check_in_with_nothing_to_do():
    pair = Pair(6, "small")
    pair.hello("halt")
    pair.to_node(Assign("n0001"))
    assert pair.node.state is State.FINISH
    with pytest.raises(LocalProtocolError):
        pair.node.send(ImageRequest(ObjectKind.IMAGE))
    pair.to_master(Bye())
    assert pair.master.state is State.DONE


def test_image_without_script():
    pair = Pair(7, "random")
    pair.objects = make_objects(pair.rng)
    pair.hello()
    pair.to_node(Assign("n1", "v", Follows.IMAGE))
    assert pair.node.state is State.OFFER
    pair.to_node(pair.objects.offer())
    assert pair.fetch(ObjectKind.KERNEL) == pair.objects.kernel
    pair.to_master(Bye())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("after_auth", [False, True])
def test_wait(mode, after_auth):
    key = KEY if after_auth else None
    pair = Pair(8, mode, node_key=key, master_key=key)
    pair.hello()
    if after_auth:
        pair.authenticate()
    assert pair.to_node(Wait(30, "node is disabled")) == [Wait(30, "node is disabled")]
    assert pair.node.state is pair.master.state is State.DONE
    assert pair.node.next_event() is CLOSED
    with pytest.raises(LocalProtocolError):
        pair.node.send(Bye())


@pytest.mark.parametrize("mode", MODES)
def test_resume_in_one_session(mode):
    pair = Pair(9, mode)
    objects = pair.objects = make_objects(pair.rng)
    pair.hello()
    pair.to_node(Assign("n1", "v", Follows.IMAGE))
    pair.to_node(objects.offer())
    first = pair.fetch(ObjectKind.IMAGE, 0, objects.chunks[0].csize)
    second = pair.fetch(ObjectKind.IMAGE, len(first), via="sendfile")
    assert first + second == objects.image
    # a request at the very end is answered with an empty IMAGE_DATA
    assert pair.fetch(ObjectKind.IMAGE, len(objects.image)) == b""
    assert pair.fetch(ObjectKind.OVERLAY, 100, 50) == objects.overlay[100:150]
    pair.to_master(Bye())


def test_resume_after_the_connection_dropped():
    rng = random.Random(10)
    objects = make_objects(rng)
    # first session: the connection dies part way through the raw image bytes
    pair = Pair(10, "random")
    pair.objects = objects
    pair.hello()
    pair.to_node(Assign("n1", "v", Follows.IMAGE))
    pair.to_node(objects.offer())
    pair.to_master(ImageRequest(ObjectKind.IMAGE))
    data = pair.master.send(pair.master.image_data()) + objects.image[:7777]
    events = merge_raw(pair.bytes_to_node(data))
    assert events == [ImageData(ObjectKind.IMAGE, 0, len(objects.image)), RawBytes(objects.image[:7777])]
    assert pair.node.state is State.RAW and pair.node.raw_remaining == len(objects.image) - 7777
    assert pair.node.timeout == P.TIMEOUTS[State.RAW]
    pair.node.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        pair.node.next_event()
    assert info.value.code is ErrorCode.CONNECTION_LOST and "RAW" in info.value.message
    # second session: same offer, the node asks for the rest
    again = Pair(11, "small")
    again.objects = objects
    again.hello()
    again.to_node(Assign("n1", "v", Follows.IMAGE))
    assert again.to_node(objects.offer()) == [objects.offer()]
    rest = again.fetch(ObjectKind.IMAGE, 7777)
    assert objects.image[:7777] + rest == objects.image


def test_take_raw_consumes_raw_bytes_in_place():
    """A node may hash raw bytes where they landed: take_raw() moves the session on as RawBytes would."""
    pair = Pair(12, "whole")
    objects = pair.objects = make_objects(pair.rng)
    pair.hello()
    pair.to_node(Assign("n1", "v", Follows.IMAGE))
    pair.to_node(objects.offer())
    node = pair.node
    assert node.raw_wanted() == 0 and node.take_raw(100) == 0  # not in RAW: nothing to take
    pair.to_master(ImageRequest(ObjectKind.OVERLAY))
    header = pair.master.image_data()
    node.receive_data(pair.master.send(header))
    assert node.next_event() == header and node.state is State.RAW
    assert node.raw_wanted() == len(objects.overlay)
    assert node.take_raw(500) == 500 and node.raw_remaining == len(objects.overlay) - 500
    # the rest arrives with more behind it: take only what is raw, the caller feeds the remainder
    pair.master.raw_sent(len(objects.overlay))
    tail = len(objects.overlay) - 500
    assert node.take_raw(tail + 10) == tail
    assert node.state is State.REQUEST and node.raw_remaining == 0 and node.raw_wanted() == 0
    assert node.next_event() is P.NEED_DATA
    # bytes already queued by receive_data must come out as events first: take_raw refuses
    pair.to_master(ImageRequest(ObjectKind.KERNEL))
    header = pair.master.image_data()
    node.receive_data(pair.master.send(header) + objects.kernel[:10])
    assert node.next_event() == header
    assert node.raw_wanted() == 0 and node.take_raw(5) == 0
    assert node.next_event() == RawBytes(objects.kernel[:10])
    assert node.raw_wanted() == len(objects.kernel) - 10


def test_anytime_messages_in_every_state():
    pair = Pair(12, "small")
    objects = pair.objects = make_objects(pair.rng)

    def chatter():
        for sender, receiver in ((pair.node, pair.master), (pair.master, pair.node)):
            if sender is pair.master and pair.master.raw_remaining:
                continue
            state = sender.state
            sent = [Log(f"in {state.name}", 5), Ping(7), Pong(7)]
            data = b"".join(sender.send(e) for e in sent)
            assert deliver(receiver, data, pair.rng, "small") == sent
            assert sender.state is state

    pair.hello()
    chatter()
    pair.to_node(Assign("n1", "v", Follows.SCRIPT | Follows.IMAGE))
    chatter()
    pair.to_node(Script(b"true"))
    chatter()
    pair.to_master(ScriptResult(0))
    chatter()
    pair.to_node(objects.offer())
    chatter()
    pair.to_master(ImageRequest(ObjectKind.KERNEL))
    chatter()
    header = pair.master.image_data()
    events = pair.bytes_to_node(pair.master.send(header) + pair.master.send(RawBytes(objects.kernel[:10])))
    assert pair.node.state is pair.master.state is State.RAW
    chatter()  # the node may talk while raw bytes flow; the master only after them
    with pytest.raises(LocalProtocolError):
        pair.master.send(Pong(7))
    events += pair.bytes_to_node(pair.master.send(RawBytes(objects.kernel[10:])) + pair.master.send(Pong(8)))
    assert merge_raw(events) == [header, RawBytes(objects.kernel), Pong(8)]
    chatter()
    pair.to_master(Bye())


def test_turns_and_timeouts():
    pair = Pair(13, "whole", node_key=KEY, master_key=KEY)
    node, master = pair.node, pair.master
    assert node.state is master.state is State.HELLO
    assert node.our_turn and node.timeout is None and node.waiting_for == frozenset()
    assert master.waiting_for == {MessageType.HELLO} and master.timeout == P.TIMEOUTS[State.HELLO]
    pair.hello()
    assert node.waiting_for == {MessageType.AUTH_CHALLENGE, MessageType.ASSIGN, MessageType.WAIT}
    assert node.timeout == P.timeout_for_state(State.ANSWER) == 60.0
    assert node.deadline(1000.0) == 1060.0 and master.deadline(1000.0) is None
    pair.to_node(master.challenge())
    assert master.waiting_for == {MessageType.AUTH_RESPONSE} and node.our_turn
    pair.to_master(node.auth_response())
    pair.to_node(Assign("n1", "v", Follows.SCRIPT))
    pair.to_node(Script(b"sleep 100"))
    assert master.timeout == P.TIMEOUTS[State.SCRIPT_RESULT] and node.timeout is None
    pair.to_master(ScriptResult(0))
    assert master.waiting_for == {MessageType.BYE}
    pair.to_master(Bye())
    assert master.timeout is None and master.waiting_for == frozenset() and not master.our_turn
    assert P.timeout_for_state(State.DONE) is None
    assert set(P.TIMEOUTS) == set(State) - {State.DONE, State.FAILED}


def test_sendfile_accounting():
    pair = Pair(14, "whole")
    objects = pair.objects = make_objects(pair.rng)
    pair.hello()
    pair.to_node(Assign("n1", "v", Follows.IMAGE))
    pair.to_node(objects.offer())
    pair.to_master(ImageRequest(ObjectKind.OVERLAY, 7))
    assert pair.master.pending_request == (ObjectKind.OVERLAY, 7, len(objects.overlay) - 7)
    with pytest.raises(LocalProtocolError):
        pair.master.raw_sent(1)  # nothing announced yet
    with pytest.raises(LocalProtocolError):  # an IMAGE_DATA must answer the request exactly
        pair.master.send(ImageData(ObjectKind.OVERLAY, 7, 5))
    pair.master.send(pair.master.image_data())
    assert pair.master.raw_remaining == len(objects.overlay) - 7
    with pytest.raises(LocalProtocolError) as info:
        pair.master.raw_sent(len(objects.overlay))
    assert info.value.code is ErrorCode.BAD_RANGE
    pair.master.raw_sent(100)
    with pytest.raises(LocalProtocolError):
        pair.master.send(Log("mid-stream"))
    with pytest.raises(LocalProtocolError):
        pair.node.send(RawBytes(b"x"))
    # an ERROR cannot be framed inside raw bytes: it is dropped and the session fails
    assert pair.master.send(Error(ErrorCode.INTERNAL, "disk went away")) == b""
    assert pair.master.state is State.FAILED


def test_version_negotiation():
    pair = Pair(15, "whole")
    hello = Hello(MAC, "init", versions=(1, 2, 3))
    pair.to_master(hello)
    assert pair.master.version == 1
    with pytest.raises(LocalProtocolError) as info:
        NodeConnection().send(Hello(MAC, "init", versions=(2,)))
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION


def test_roles():
    assert NodeConnection.role is Role.NODE and MasterConnection.role is Role.MASTER
    with pytest.raises(ValueError):
        MasterConnection(auth_required=True)
    with pytest.raises(ValueError):
        NodeConnection(site_key=b"short")
    assert P.check_site_key(KEY) == KEY


# --- the worked example in docs/protocol.md ---


def hexdump(data: bytes) -> str:
    return "\n".join(
        f"{i:04x}  " + " ".join(data[j : j + 1].hex() for j in range(i, min(i + 16, len(data))))
        for i in range(0, len(data), 16)
    )


def test_docs_worked_example_is_what_the_code_sends():
    frame = NodeConnection().send(example_hello())
    text = DOC.read_text()
    match = re.search(r"<!-- hello-hexdump -->\n```\n(.*?)\n```", text, re.S)
    assert match, "docs/protocol.md lost its HELLO hex dump"
    assert match.group(1) == hexdump(frame)
    assert f"{len(frame)} bytes" in text


def test_imports_only_what_stage_one_carries():
    """stage1/ is frozen into the initramfs: the standard library and construct, nothing else."""
    code = (
        "import sys; before = set(sys.modules); import perceus.stage1.protocol; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    tops = {name.split(".")[0] for name in out.split()}
    assert tops - set(sys.stdlib_module_names) <= {"construct", "perceus"}
    ours = {n for n in out.split() if n.startswith("perceus.") and not n.startswith(f"{P.__name__}.")}
    assert ours == {
        "perceus.stage1",
        "perceus.stage1.protocol",
    }
