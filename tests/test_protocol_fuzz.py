"""Fuzzing, seeded: whatever bytes arrive, both machines yield events or raise ProtocolError.

Three sources of input: random byte strings (some behind a plausible header), valid session
traffic mutated at the byte level (which the CRC mostly catches), and valid frames whose
payload or header is mutated and then re-sealed with a correct CRC (which reaches every
payload decoder). Each input is fed in random pieces at some point of a real session,
then the connection is closed. An INTERNAL error would mean an exception escaped the parse.
"""

import random

import pytest

from perceus.stage1 import protocol as P
from perceus.stage1.protocol import (
    Assign,
    ErrorCode,
    Event,
    Follows,
    ImageRequest,
    Log,
    MessageType,
    ObjectKind,
    Ping,
    RemoteProtocolError,
    Script,
    ScriptResult,
    State,
)

from tests.support.protocol_harness import (
    KEY,
    MAC,
    MODES,
    Pair,
    deliver,
    drain,
    make_objects,
    mutate_bytes,
    pieces,
    sample_messages,
)


def _raw(pair: Pair) -> bytes:
    header = pair.master.image_data()
    data = pair.objects.data(header.kind)[header.offset : header.offset + header.length]
    return pair.master.send(header) + pair.master.send(P.RawBytes(data))


# One init session with auth, step by step: (receiver, how the sender makes the bytes).
STEPS = [
    ("master", lambda p: p.node.send(p.node.make_hello(MAC, "init", cpus=2, memory=1 << 30))),
    ("node", lambda p: p.master.send(p.master.challenge())),
    ("master", lambda p: p.node.send(p.node.auth_response())),
    ("node", lambda p: p.master.send(Assign("n0001", "centos", Follows.SCRIPT | Follows.IMAGE))),
    ("node", lambda p: p.master.send(Script(b"#!/bin/sh\necho hello\n"))),
    ("master", lambda p: p.node.send(ScriptResult(0, b"hello\n"))),
    ("node", lambda p: p.master.send(p.objects.offer())),
    ("master", lambda p: p.node.send(ImageRequest(ObjectKind.IMAGE, 100))),
    ("node", _raw),
    ("master", lambda p: p.node.send(Log("image received", 6))),
    ("node", lambda p: p.master.send(Ping(99))),
    ("master", lambda p: p.node.send(ImageRequest(ObjectKind.KERNEL, 5, 100))),
    ("node", _raw),
    ("master", lambda p: p.node.send(P.Bye())),
]


def session_at(step: int, seed: int) -> tuple[Pair, P.Connection, bytes]:
    """A pair after ``step`` steps, the receiver of the next one and that step's bytes."""
    pair = Pair(seed, "whole", node_key=KEY, master_key=KEY)
    pair.objects = make_objects(random.Random(seed), 3000)
    for receiver, make in STEPS[:step]:
        conn = pair.master if receiver == "master" else pair.node
        deliver(conn, make(pair), pair.rng, "whole")
    receiver, make = STEPS[step]
    return pair, (pair.master if receiver == "master" else pair.node), make(pair)


def test_the_scripted_session_is_valid():
    pair, conn, data = session_at(len(STEPS) - 1, 0)
    assert deliver(conn, data, pair.rng, "small") == [P.Bye()]
    assert pair.master.state is pair.node.state is State.DONE


def feed(conn: P.Connection, data: bytes, rng: random.Random) -> None:
    """Everything may happen except an exception other than a (non-INTERNAL) RemoteProtocolError."""
    try:
        for piece in pieces(data, rng, rng.choice(MODES[1:])):
            conn.receive_data(piece)
            assert all(isinstance(e, Event) for e in drain(conn))
        conn.receive_data(b"")
        drain(conn)
    except RemoteProtocolError as exc:
        assert exc.code is not ErrorCode.INTERNAL, exc
        assert conn.state is State.FAILED
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        conn.send(exc.to_event())  # the answer is always encodable


def reseal(data: bytes, rng: random.Random) -> bytes:
    """Mutate the first frame's payload or header fields, then give it a correct CRC again."""
    decoded = P.decode_frame(data)
    assert decoded is not None
    frame, size = decoded
    version, t, flags, payload = frame.version, frame.type, frame.flags, frame.payload
    how = rng.randrange(8)
    if how < 5:
        payload = mutate_bytes(payload, rng)
    elif how == 5:
        t = rng.choice([rng.randrange(256), *list(MessageType)])
    elif how == 6:
        flags = rng.choice([P.FLAG_MORE, rng.randrange(65536)])
    else:
        version = rng.choice([0, 1, 2, rng.randrange(256)])
    return P.encode_frame(t, payload, flags, version) + data[size:]


@pytest.mark.parametrize("block", range(4))
def test_random_bytes(block):
    rng = random.Random(1000 + block)
    for _ in range(500):
        data = rng.randbytes(rng.randint(0, 200))
        if rng.random() < 0.5:  # a plausible header, so the parse goes further
            t = rng.choice([rng.randrange(256), *list(MessageType)])
            data = (
                P.MAGIC + bytes([1, t, 0, rng.choice([0, 1])]) + rng.randbytes(4)[: rng.randint(0, 4)] + data
            )
        if rng.random() < 0.3:  # a sealed frame of random payload
            data = P.encode_frame(rng.choice(list(MessageType)), rng.randbytes(rng.randint(0, 120)))
        _, conn, valid = session_at(rng.randrange(len(STEPS)), rng.randrange(1 << 30))
        if rng.random() < 0.3:
            data = valid + data  # garbage after a good message, in the next state
        feed(conn, data, rng)


@pytest.mark.parametrize("block", range(4))
def test_mutated_session_traffic(block):
    rng = random.Random(2000 + block)
    for _ in range(500):
        _, conn, valid = session_at(rng.randrange(len(STEPS)), rng.randrange(1 << 30))
        data = reseal(valid, rng) if rng.random() < 0.6 else mutate_bytes(valid, rng)
        feed(conn, data, rng)


def valid_payloads() -> dict:
    out: dict = {}
    for message in sample_messages():
        payload = P.encode_payload(message)
        if len(payload) < 100_000:
            out.setdefault(message.TYPE, []).append(payload)
    return out


@pytest.mark.parametrize("t", list(MessageType), ids=lambda t: t.name)
def test_payload_decoders(t):
    """decode_payload is total, and canonical: what it accepts re-encodes to the same bytes."""
    rng = random.Random(3000 + t)
    valid = valid_payloads()[t]
    accepted = 0
    for i in range(400):
        if i % 2:
            payload = rng.randbytes(rng.randint(0, 150))
        else:
            payload = mutate_bytes(rng.choice(valid), rng)
        try:
            message = P.decode_payload(t, payload)
        except RemoteProtocolError as exc:
            assert exc.code is not ErrorCode.INTERNAL
            continue
        accepted += 1
        assert P.encode_payload(message) == payload
    assert accepted or t in (MessageType.HELLO, MessageType.IMAGE_OFFER, MessageType.AUTH_CHALLENGE)
