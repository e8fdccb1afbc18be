"""A fake master for the stage-one tests: MasterConnection on 127.0.0.1, in its own thread.

Not perceusd: it serves fixed bytes and records what the nodes did, and it can misbehave on
purpose (WAIT first, corrupt a chunk, drop the connection mid-image, a wrong site key).
"""

import asyncio
import hashlib
import random
import socket
import threading
from dataclasses import dataclass, field

import zstandard

from perceus.common import newc
from perceus.stage1.protocol import (
    CLOSED,
    NEED_DATA,
    Assign,
    AuthResponse,
    Bye,
    ChunkEntry,
    Error,
    ErrorCode,
    Follows,
    Hello,
    ImageOffer,
    ImageRequest,
    Log,
    MasterConnection,
    ObjectKind,
    ProtocolError,
    Script,
    ScriptResult,
    Wait,
)


def make_chunks(rng: random.Random, sizes: list[int]) -> list[bytes]:
    return [rng.randbytes(n) for n in sizes]


def real_overlay() -> bytes:
    """An overlay as perceusd sends it: one zstd frame of one newc archive (node.conf).

    Simulated nodes unpack it."""
    archive = bytearray()
    newc.write_entry(archive, "etc/perceus/node.conf", mode=0o100644, data=b'NODENAME="n0000"\n')
    newc.write_trailer(archive)
    return zstandard.ZstdCompressor().compress(bytes(archive))


DEFAULT_OVERLAY = real_overlay()


@dataclass
class Record:
    """What happened in the sessions, in order."""

    checkins: list[tuple[str, str]] = field(default_factory=list)  # (mac, state)
    authenticated: list[bool] = field(default_factory=list)
    results: list[tuple[str, int, bytes]] = field(default_factory=list)  # (mac, status, tail)
    requests: list[tuple[int, ObjectKind, int, int]] = field(default_factory=list)  # session, kind, off, len
    byes: list[tuple[str, str]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class FakeMaster:
    """Serve one VNFS to every node; ``with FakeMaster(...) as m: m.port``."""

    def __init__(
        self,
        *,
        chunks: list[bytes] | None = None,
        overlay: bytes | None = None,
        kernel: bytes = b"\x7fELF kernel" * 300,
        kernel_args: str = "console=ttyS0 quiet",
        vnfs: str = "busybox-1.0",
        scripts: dict[str, bytes] | None = None,
        site_key: bytes | None = None,
        auth_required: bool = False,
        waits: int = 0,
        corrupt_chunk: int | None = None,
        drop_after: int | None = None,
        silent: bool = False,
        known: dict[str, str] | None = None,
    ) -> None:
        rng = random.Random(4)
        self.chunks = chunks if chunks is not None else make_chunks(rng, [70000, 50000, 90001, 1234])
        self.image = b"".join(self.chunks)
        overlay = DEFAULT_OVERLAY if overlay is None else overlay
        self.objects = {ObjectKind.IMAGE: self.image, ObjectKind.OVERLAY: overlay, ObjectKind.KERNEL: kernel}
        self.kernel_args = kernel_args
        self.vnfs = vnfs
        self.scripts = scripts if scripts is not None else {"init": b"echo init script\n"}
        self.site_key = site_key
        self.auth_required = auth_required
        self.waits_left: dict[str, int] = {}
        self.waits = waits
        self.corrupt_chunk = corrupt_chunk  # flip a byte of this chunk, in the first image transfer
        self.drop_after = drop_after  # close after this many image bytes, in the first image transfer
        self.silent = silent
        self.names: dict[str, str] = dict(known or {})
        self.record = Record()
        self._sessions = 0
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    # -- lifecycle --

    def __enter__(self) -> "FakeMaster":
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop
        ).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            # Let sessions whose node already left finish recording (a silent one never does).
            busy = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if busy:
                await asyncio.wait(busy, timeout=0.5 if self.silent else 10)
            for task in busy:
                task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def offer(self) -> ImageOffer:
        entries, offset = [], 0
        for chunk in self.chunks:
            entries.append(ChunkEntry(offset, len(chunk), 2 * len(chunk), hashlib.sha256(chunk).hexdigest()))
            offset += len(chunk)
        sha = {k: hashlib.sha256(v).hexdigest() for k, v in self.objects.items()}
        return ImageOffer(
            vnfs=self.vnfs,
            image_size=len(self.image),
            image_sha256=sha[ObjectKind.IMAGE],
            chunks=tuple(entries),
            overlay_size=len(self.objects[ObjectKind.OVERLAY]),
            overlay_sha256=sha[ObjectKind.OVERLAY],
            kernel_size=len(self.objects[ObjectKind.KERNEL]),
            kernel_sha256=sha[ObjectKind.KERNEL],
            kernel_args=self.kernel_args,
        )

    # -- one session --

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._sessions += 1
            session = self._sessions
        conn = MasterConnection(site_key=self.site_key, auth_required=self.auth_required)
        state = {"image": False}
        try:
            if self.silent:
                await reader.read()
                return
            while (event := conn.next_event()) is not CLOSED:
                if event is NEED_DATA:
                    conn.receive_data(await asyncio.wait_for(reader.read(65536), 30))
                elif isinstance(event, Hello):
                    self.record.checkins.append((event.nodeid, event.state))
                    if self.site_key is not None:
                        writer.write(conn.send(conn.challenge()))
                    else:
                        self._answer(conn, writer, event, state)
                elif isinstance(event, AuthResponse):
                    self.record.authenticated.append(conn.authenticated)
                    assert conn.hello is not None
                    self._answer(conn, writer, conn.hello, state)
                elif isinstance(event, ScriptResult):
                    assert conn.hello is not None
                    self.record.results.append((conn.hello.nodeid, event.status, event.output_tail))
                    if state["image"]:
                        if event.status:
                            refusal = Error(
                                ErrorCode.REFUSED, f"nodescript failed with status {event.status}"
                            )
                            writer.write(conn.send(refusal))
                            break
                        writer.write(conn.send(self.offer()))
                elif isinstance(event, ImageRequest):
                    header = conn.image_data()
                    self.record.requests.append((session, header.kind, header.offset, header.length))
                    writer.write(conn.send(header))
                    data = bytearray(self.objects[header.kind][header.offset : header.offset + header.length])
                    if header.kind is ObjectKind.IMAGE and self.corrupt_chunk is not None:
                        target = sum(len(c) for c in self.chunks[: self.corrupt_chunk]) + 7 - header.offset
                        if 0 <= target < len(data):
                            data[target] ^= 0xFF
                            self.corrupt_chunk = None
                    if header.kind is ObjectKind.IMAGE and self.drop_after is not None:
                        cut, self.drop_after = self.drop_after, None
                        writer.write(bytes(data[:cut]))
                        await writer.drain()
                        writer.transport.abort()
                        return
                    writer.write(bytes(data))
                    conn.raw_sent(len(data))
                    await writer.drain()
                elif isinstance(event, Bye):
                    assert conn.hello is not None
                    self.record.byes.append((conn.hello.nodeid, event.reason))
                elif isinstance(event, Log):
                    self.record.logs.append(event.message)
        except ProtocolError as exc:
            self.record.errors.append(exc.message)
            try:
                writer.write(conn.send(exc.to_event()))
            except ProtocolError:
                pass
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    def _answer(self, conn: MasterConnection, writer: asyncio.StreamWriter, hello: Hello, state: dict):
        mac = hello.nodeid
        if hello.state != "init" and mac not in self.names:
            writer.write(conn.send(Error(ErrorCode.REFUSED, "unknown node: check in with state init first")))
            return
        if hello.state == "init":
            left = self.waits_left.setdefault(mac, self.waits)
            if left:
                self.waits_left[mac] = left - 1
                writer.write(conn.send(Wait(1, "node is disabled")))
                return
        with self._lock:
            name = self.names.setdefault(mac, f"n{len(self.names):04d}")
        follows = Follows.NOTHING
        body = self.scripts.get(hello.state)
        if body:
            follows |= Follows.SCRIPT
        if hello.state == "init" and self.vnfs:
            follows |= Follows.IMAGE
            state["image"] = True
        writer.write(conn.send(Assign(name, self.vnfs, follows)))
        if body:
            writer.write(conn.send(Script(body)))
        elif state["image"]:
            writer.write(conn.send(self.offer()))


def closed_port() -> int:
    """A local TCP port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
