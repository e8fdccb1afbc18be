"""Driving both protocol state machines against each other without sockets.

Every byte crosses in seeded random-sized pieces (1-byte pieces included), so each parse is
exercised at every split point: :class:`Pair` is a node and a master joined by such a pipe,
:func:`provision` a whole session, :func:`sample_messages` one of every message at its bounds.
"""

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from perceus.stage1 import protocol as P
from perceus.stage1.protocol import (
    CLOSED,
    NEED_DATA,
    Assign,
    AuthChallenge,
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
    Interface,
    Log,
    MasterConnection,
    NodeConnection,
    ObjectKind,
    Ping,
    Pong,
    RawBytes,
    Script,
    ScriptResult,
    State,
    Wait,
)

KEY = b"a site key of thirty-two bytes!!"
MAC = "00:16:3E:5A:00:01"
MODES = ("one", "small", "random", "whole")


def pieces(data: bytes, rng: random.Random, mode: str):
    """``data`` cut into pieces: single bytes, 1-7 bytes, 1-5000 bytes, or whole."""
    i = 0
    while i < len(data):
        n = {"one": 1, "small": rng.randint(1, 7), "random": rng.randint(1, 5000)}.get(mode, len(data))
        yield data[i : i + n]
        i += n


def drain(conn: P.Connection) -> list:
    """Every event ready now (stops at NEED_DATA or CLOSED)."""
    events = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is CLOSED:
            return events
        events.append(event)


def deliver(conn: P.Connection, data: bytes, rng: random.Random, mode: str) -> list:
    """Feed ``data`` piece by piece, draining after each piece, as an I/O loop would."""
    events = []
    for piece in pieces(data, rng, mode):
        events += drain(conn)
        conn.receive_data(piece)
        events += drain(conn)
    return events + drain(conn)


def merge_raw(events: list) -> list:
    """Consecutive RawBytes joined into one (how pieces fall depends on the split)."""
    out: list = []
    for event in events:
        if isinstance(event, RawBytes) and out and isinstance(out[-1], RawBytes):
            out[-1] = RawBytes(out[-1].data + event.data)
        else:
            out.append(event)
    return out


@dataclass
class Objects:
    image: bytes
    chunks: tuple[ChunkEntry, ...]
    overlay: bytes
    kernel: bytes

    def data(self, kind: ObjectKind) -> bytes:
        return {
            ObjectKind.IMAGE: self.image,
            ObjectKind.OVERLAY: self.overlay,
            ObjectKind.KERNEL: self.kernel,
        }[kind]

    def offer(self, vnfs: str = "centos-5.1", args: str = "console=ttyS0,115200 quiet") -> ImageOffer:
        return ImageOffer(
            vnfs=vnfs,
            image_size=len(self.image),
            image_sha256=hashlib.sha256(self.image).hexdigest(),
            chunks=self.chunks,
            overlay_size=len(self.overlay),
            overlay_sha256=hashlib.sha256(self.overlay).hexdigest(),
            kernel_size=len(self.kernel),
            kernel_sha256=hashlib.sha256(self.kernel).hexdigest(),
            kernel_args=args,
        )


def make_objects(rng: random.Random, image_size: int = 20000) -> Objects:
    image = rng.randbytes(image_size)
    chunks, offset = [], 0
    while offset < image_size:
        csize = min(rng.randint(1, 6000), image_size - offset)
        frame = image[offset : offset + csize]
        chunks.append(ChunkEntry(offset, csize, csize * 3, hashlib.sha256(frame).hexdigest()))
        offset += csize
    return Objects(image, tuple(chunks), rng.randbytes(777), rng.randbytes(3000))


class Pair:
    """A node and a master connected by an in-memory pipe that cuts bytes at random."""

    def __init__(
        self,
        seed: int = 0,
        mode: str = "random",
        *,
        node_key: bytes | None = None,
        master_key: bytes | None = None,
        auth_required: bool = False,
        require_master_auth: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.mode = mode
        self.node = NodeConnection(
            site_key=node_key, require_master_auth=require_master_auth, random_bytes=self.rng.randbytes
        )
        self.master = MasterConnection(
            site_key=master_key, auth_required=auth_required, random_bytes=self.rng.randbytes
        )

    def to_master(self, event) -> list:
        return deliver(self.master, self.node.send(event), self.rng, self.mode)

    def to_node(self, event) -> list:
        return deliver(self.node, self.master.send(event), self.rng, self.mode)

    def bytes_to_node(self, data: bytes) -> list:
        return deliver(self.node, data, self.rng, self.mode)

    def hello(self, state: str = "init", **facts) -> Hello:
        facts.setdefault("interfaces", (Interface("eth0", MAC), Interface("ib0", ":".join(["A0"] * 20))))
        hello = self.node.make_hello(MAC, state, cpus=8, memory=16 << 30, **facts)
        assert self.to_master(hello) == [hello]
        assert self.master.hello == hello and self.master.state is State.ANSWER
        return hello

    def authenticate(self) -> None:
        challenge = self.master.challenge()
        assert self.to_node(challenge) == [challenge]
        response = self.node.auth_response()
        assert self.to_master(response) == [response]
        assert self.master.state is self.node.state is State.ASSIGN

    def fetch(self, kind: ObjectKind, offset: int = 0, length: int = 0, via: str = "send") -> bytes:
        """One IMAGE_REQUEST and its IMAGE_DATA; the master streams with send() or 'sendfile'."""
        request = ImageRequest(kind, offset, length)
        assert self.to_master(request) == [request]
        assert self.master.state is State.IMAGE_DATA
        header = self.master.image_data()
        data = self.master.send(header)
        payload = self.objects.data(kind)[offset : offset + header.length]
        assert len(payload) == header.length
        if via == "send":
            cut = self.rng.randint(0, len(payload))
            data += self.master.send(RawBytes(payload[:cut])) + self.master.send(RawBytes(payload[cut:]))
        else:  # the I/O layer writes the bytes itself and accounts for them
            data += payload
            self.master.raw_sent(len(payload))
        assert self.master.state is State.REQUEST and self.master.raw_remaining == 0
        events = merge_raw(self.bytes_to_node(data))
        assert events[0] == header
        got = b"".join(e.data for e in events[1:])
        assert all(isinstance(e, RawBytes) for e in events[1:])
        assert self.node.state is State.REQUEST and self.node.raw_remaining == 0
        return got

    objects: Objects


def provision(pair: Pair, objects: Objects, *, script: bytes = b"#!/bin/sh\necho provisioned\n") -> None:
    """ASSIGN, SCRIPT, SCRIPT_RESULT, IMAGE_OFFER, then image, overlay and kernel, then BYE."""
    pair.objects = objects
    assign = Assign("n0001", "centos-5.1", Follows.SCRIPT | Follows.IMAGE)
    assert pair.to_node(assign) == [assign]
    assert pair.node.assignment == assign and pair.node.state is State.SCRIPT
    assert pair.to_node(Script(script)) == [Script(script)]
    assert pair.node.state is pair.master.state is State.SCRIPT_RESULT
    result = ScriptResult(0, b"provisioned\n")
    assert pair.to_master(result) == [result]
    offer = objects.offer()
    assert pair.to_node(offer) == [offer]
    assert pair.node.offer == offer and pair.node.state is State.REQUEST
    for kind, via in (
        (ObjectKind.IMAGE, "send"),
        (ObjectKind.OVERLAY, "sendfile"),
        (ObjectKind.KERNEL, "send"),
    ):
        got = pair.fetch(kind, via=via)
        assert hashlib.sha256(got).hexdigest() == offer.sha256_of(kind)
    assert pair.to_master(Bye("kexec")) == [Bye("kexec")]
    assert pair.node.state is pair.master.state is State.DONE
    assert pair.node.next_event() is CLOSED and pair.master.next_event() is CLOSED


def sample_messages() -> list:
    """One message of every type, several at their bounds."""
    rng = random.Random(7)
    objects = make_objects(rng, 50000)
    return [
        Hello(MAC, "init", node_nonce=bytes(32)),
        Hello(
            "AA:BB:CC:DD:EE:FF",
            "ready",
            versions=(1, 2, 7),
            node_nonce=rng.randbytes(32),
            interfaces=tuple(Interface(f"eth{i}", MAC) for i in range(P.MAX_INTERFACES)),
            cpus=2**32 - 1,
            memory=2**64 - 1,
            smbios_uuid="4c4c4544-0042-3510-8052-b4c04f384d32",
            serial="S" * P.MAX_SERIAL,
            asset_tag="étiquette ✓",
        ),
        AuthChallenge(rng.randbytes(32), rng.randbytes(32)),
        AuthResponse(rng.randbytes(32)),
        AuthResponse(b""),
        Assign("n" * P.MAX_HOSTNAME, "v" * P.MAX_VNFS_NAME, Follows.SCRIPT | Follows.IMAGE),
        Assign("node-7.rack_3"),
        Wait(1, "node disabled"),
        Wait(P.MAX_WAIT, "r" * P.MAX_REASON),
        Script(b""),
        Script(rng.randbytes(1000)),
        Script(rng.randbytes(P.MAX_FRAME_PAYLOAD * 2 + 5)),
        ScriptResult(-9, b"killed\n"),
        ScriptResult(2**31 - 1, rng.randbytes(P.MAX_OUTPUT_TAIL)),
        objects.offer(args="a" * P.MAX_KERNEL_ARGS),
        ImageOffer("empty", 0, "00" * 32, (), 0, "11" * 32, 0, "22" * 32),
        ImageRequest(ObjectKind.KERNEL, 12, 34),
        ImageRequest(ObjectKind.IMAGE),
        ImageData(ObjectKind.OVERLAY, P.MAX_OBJECT_SIZE, 0),
        Log("line one\n\tline two\r\n", 3),
        Log("x" * P.MAX_LOG, 0),
        Ping(0),
        Ping(2**64 - 1),
        Pong(123456789),
        Error(ErrorCode.UNKNOWN_TYPE, "unknown message type 0x42"),
        Error(65535, "e" * P.MAX_ERROR_MESSAGE),
        Bye(),
        Bye("kexec into the VNFS kernel"),
    ]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """``data`` damaged once at random: bits flipped, a byte replaced, bytes inserted, deleted or
    cut off, or the whole doubled (the fuzz tests' mutations)."""
    b = bytearray(data)
    how = rng.randrange(6)
    if how == 0 and b:
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif how == 1 and b:
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif how == 2:
        i = rng.randint(0, len(b))
        b[i:i] = rng.randbytes(rng.randint(1, 20))
    elif how == 3 and b:
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 20)]
    elif how == 4:
        del b[rng.randint(0, len(b)) :]
    else:
        b += bytes(b)
    return bytes(b)


# The worked example in docs/protocol.md.
DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def example_hello() -> Hello:
    return Hello(
        nodeid="52:54:00:12:34:56",
        state="init",
        node_nonce=bytes(range(32)),
        interfaces=(Interface("eth0", "52:54:00:12:34:56"),),
        cpus=4,
        memory=8 << 30,
        smbios_uuid="4c4c4544-0042-3510-8052-b4c04f384d32",
        serial="CZ1234567",
        asset_tag="R7U12",
    )
