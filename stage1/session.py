"""One check-in with one master: connect, HELLO, [auth], ASSIGN or WAIT, script, image, BYE.

The NodeConnection (sans-IO) decides what is allowed; this module only moves bytes and
runs what the master asked for. Receiving is built for hundreds of sessions in one
process: an asyncio BufferedProtocol reads into one buffer shared by every connection of
the thread, raw image bytes are verified inside the read callback (no task switch per
piece), and the only timer per connection is re-armed lazily from the state's timeout.
"""

import asyncio
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from perceus.stage1.cmdline import Master
from perceus.stage1.facts import Facts
from perceus.stage1.fetch import KINDS, ChecksumError, Download
from perceus.stage1.protocol import (
    CLOSED,
    NEED_DATA,
    Assign,
    AuthChallenge,
    Bye,
    Error,
    ErrorCode,
    Event,
    Follows,
    ImageData,
    ImageOffer,
    ImageRequest,
    Log,
    NodeConnection,
    Ping,
    Pong,
    ProtocolError,
    RawBytes,
    Script,
    ScriptResult,
    Wait,
)
from perceus.stage1.scriptrun import DEFAULT_SCRIPT_TIMEOUT, ScriptEnv, ScriptRun, run_script

__all__ = ["CheckIn", "Outcome", "SessionFailed", "check_in"]

log = logging.getLogger("perceus.stage1")

RECV_BUFFER = 256 << 10
MAX_POOLED = 64  # free raw buffers kept per thread
CONNECT_TIMEOUT = 10.0


class SessionFailed(Exception):
    """This check-in did not complete; ``reached`` tells whether the master answered at all."""

    def __init__(self, message: str, *, reached: bool = False) -> None:
        super().__init__(message)
        self.reached = reached
        self.bytes_received = 0  # raw bytes that arrived before the failure


@dataclass(frozen=True)
class CheckIn:
    """What one check-in needs: who we are, in which state, and where script and image go."""

    state: str
    facts: Facts
    env: ScriptEnv
    site_key: bytes | None = None
    download: Download | None = None  # where IMAGE/OVERLAY/KERNEL go (init check-ins)
    script_timeout: float = DEFAULT_SCRIPT_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    io_timeout: float | None = None  # caps the protocol's per-state timeouts (tests)
    source_address: str | None = None  # bind to this address: talk through one interface
    bye_reason: str = ""


@dataclass
class Outcome:
    """How a check-in that reached the end went (a failure raises SessionFailed instead)."""

    master: Master
    latency: float  # seconds from connect to ASSIGN/WAIT received
    assign: Assign | None = None
    wait: Wait | None = None
    script: ScriptRun | None = None
    offer: ImageOffer | None = None
    bytes_received: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def request(self) -> str:
        return self.script.request if self.script else ""


_local = threading.local()


def _shared_buffer() -> memoryview:
    """One receive buffer per thread: every connection's data is consumed inside buffer_updated."""
    buf = getattr(_local, "buffer", None)
    if buf is None:
        buf = _local.buffer = memoryview(bytearray(RECV_BUFFER))
    return buf


def _keep() -> None:
    """The release of the shared buffer: nothing to do."""


def _raw_buffer() -> tuple[memoryview, Callable[[], None]]:
    """A receive buffer for raw image bytes that are hashed where they land, on a worker thread.

    Buffers come from a per-thread free list and go back to it (``release``, callable from any
    thread) once hashed, so the bytes are never copied and the memory is never faulted in twice.
    """
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = []
    buf = pool.pop() if pool else memoryview(bytearray(RECV_BUFFER))
    return buf, lambda: pool.append(buf) if len(pool) < MAX_POOLED else None


class _RawDone:
    """Pushed to the session when the raw bytes of an IMAGE_DATA are all in."""


_RAW_DONE = _RawDone()


class _Link(asyncio.BufferedProtocol):
    """Feeds a NodeConnection from the socket; hands messages to the session coroutine."""

    def __init__(self, conn: NodeConnection, io_timeout: float | None) -> None:
        self.conn = conn
        self.io_timeout = io_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.events: deque = deque()
        self.failure: SessionFailed | None = None
        self.waiter: asyncio.Future | None = None
        self.raw_target: Callable[..., None] | None = None  # feed(data, release=None)
        self.raw_pooled = False  # the raw target keeps the bytes (hashing threads): pooled buffers
        self._buffer: memoryview | None = None  # the buffer get_buffer handed out
        self._release: Callable[[], None] | None = None  # gives it back, when it is a raw one
        self.bytes_received = 0
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    # -- asyncio callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._buffer is None:
            if self.raw_target is not None and self.conn.raw_wanted():
                if self.raw_pooled:
                    self._buffer, self._release = _raw_buffer()
                else:  # hashed right away, in place: the shared buffer, nothing to give back
                    self._buffer, self._release = _shared_buffer(), _keep
            else:
                self._buffer, self._release = _shared_buffer(), None
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        buf, release = self._buffer, self._release
        self._buffer = self._release = None
        assert buf is not None
        taken = self.conn.take_raw(nbytes) if release is not None else 0
        if taken:
            self._raw(buf[:taken], release)
            if not self.conn.raw_remaining and self.failure is None:
                self.events.append(_RAW_DONE)
                self._wake()
        elif release is not None:
            release()
        if nbytes > taken and self.failure is None:
            self.conn.receive_data(buf[taken:nbytes])
        self._pump()

    def _raw(self, data: memoryview | bytes, release: Callable[[], None] | None = None) -> None:
        """Raw image bytes, to the current target (which calls ``release`` once it is done with them)."""
        self.bytes_received += len(data)
        target = self.raw_target
        try:
            if target is not None:
                target(data, release)
            elif release is not None:
                release()
        except ChecksumError as exc:
            self._fail(str(exc), reached=True, code=ErrorCode.CHECKSUM)

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self.failure is None:
            self.conn.receive_data(b"")
            self._pump()
            if self.failure is None and self.conn.state.name not in ("DONE", "FAILED"):
                self._fail(f"the master closed the connection in state {self.conn.state.name}")
        self._wake()

    # -- the receiving side --

    def _pump(self) -> None:
        conn = self.conn
        while self.failure is None:
            try:
                event = conn.next_event()
            except ProtocolError as exc:
                self._protocol_error(exc)
                return
            if event is NEED_DATA:
                break
            if event is CLOSED:
                break
            if isinstance(event, RawBytes):
                self._raw(event.data)
                if self.failure is not None:
                    return
                if not conn.raw_remaining:
                    self.events.append(_RAW_DONE)
                    self._wake()
                continue
            if isinstance(event, Ping):
                self.send(Pong(event.token))
                continue
            if isinstance(event, Log):
                log.info("master says: %s", event.message)
                continue
            if isinstance(event, Pong):
                continue
            if isinstance(event, Error):
                self._fail(_error_text(event), reached=True)
                return
            self.events.append(event)
            self._wake()
        self._arm()

    def _protocol_error(self, exc: ProtocolError) -> None:
        if exc.code == ErrorCode.CONNECTION_LOST:
            self._fail(exc.message)
            return
        self._fail(f"protocol error from the master: {exc.message}", reached=True, code=exc.code, tell=exc)

    def _fail(self, message: str, *, reached: bool = False, code: int | None = None, tell=None) -> None:
        if self.failure is not None:
            return
        reached = reached or self.conn.assignment is not None
        self.failure = SessionFailed(message, reached=reached)
        if self.transport is not None and not self.closed:
            try:
                if tell is not None:
                    self.transport.write(self.conn.send(tell.to_event()))
                elif code is not None:
                    self.transport.write(self.conn.send(Error(int(code), message[:1000])))
            except ProtocolError:
                pass
            self.transport.close()
        self._cancel_timer()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- timeouts: one timer, pushed forward lazily --

    def _arm(self) -> None:
        timeout = self.conn.timeout
        if timeout is None or self.failure is not None:
            self.deadline = None
            return
        if self.io_timeout is not None:
            timeout = min(timeout, self.io_timeout)
        self.deadline = self.loop.time() + timeout
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.deadline is None or self.failure is not None:
            return
        if self.loop.time() >= self.deadline:
            message = f"timed out waiting for the master in state {self.conn.state.name}"
            self._fail(message, reached=True, code=ErrorCode.TIMEOUT)
        else:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- what the session coroutine calls --

    def send(self, message) -> None:
        if self.failure is not None or self.transport is None:
            return
        try:
            data = self.conn.send(message)
        except ProtocolError as exc:
            self._fail(f"internal error: {exc.message}", code=ErrorCode.INTERNAL)
            return
        self.transport.write(data)
        self._arm()

    async def next(self) -> object:
        """The next message (or _RAW_DONE); raises SessionFailed."""
        while not self.events:
            if self.failure is not None:
                raise self.failure
            if self.closed:
                raise SessionFailed("the connection closed", reached=self.conn.assignment is not None)
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.events.popleft()

    async def expect(self, *types: type) -> Event:
        event = await self.next()
        if not isinstance(event, types):
            name = type(event).__name__ if event is not _RAW_DONE else "the end of the raw bytes"
            raise SessionFailed(f"unexpected {name} from the master", reached=True)
        return event  # type: ignore[return-value]

    def close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.transport.close()


def _error_text(event: Error) -> str:
    try:
        name = ErrorCode(event.code).name
    except ValueError:
        name = f"code {event.code}"
    return f"the master refused: {name}: {event.message}"


async def _connect(master: Master, conn: NodeConnection, req: CheckIn) -> _Link:
    loop = asyncio.get_running_loop()
    local = (req.source_address, 0) if req.source_address else None
    try:
        _, link = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Link(conn, req.io_timeout), master.host, master.port, local_addr=local
            ),
            req.connect_timeout,
        )
    except TimeoutError:
        message = f"cannot connect: timed out after {req.connect_timeout:g} s"
        raise SessionFailed(message) from None
    except OSError as exc:
        if isinstance(exc, socket.gaierror) or not exc.errno:
            reason = exc.strerror or str(exc)
        else:
            reason = os.strerror(exc.errno)
        raise SessionFailed(f"cannot connect: {reason}") from None
    return link  # type: ignore[return-value]


async def check_in(master: Master, req: CheckIn) -> Outcome:
    """Run one session with ``master``; returns the Outcome or raises SessionFailed."""
    loop = asyncio.get_running_loop()
    conn = NodeConnection(site_key=req.site_key)
    started = loop.time()
    link = await _connect(master, conn, req)
    try:
        return await _session(master, req, conn, link, started)
    except SessionFailed as exc:
        exc.bytes_received = link.bytes_received
        raise
    finally:
        link.close()


async def _session(
    master: Master, req: CheckIn, conn: NodeConnection, link: _Link, started: float
) -> Outcome:
    loop = asyncio.get_running_loop()
    link.send(conn.make_hello(req.facts.nodeid, req.state, **req.facts.hello_fields()))
    answer = await link.expect(AuthChallenge, Assign, Wait)
    if isinstance(answer, AuthChallenge):
        link.send(conn.auth_response())
        answer = await link.expect(Assign, Wait)
    outcome = Outcome(master, loop.time() - started)
    if isinstance(answer, Wait):
        outcome.wait = answer
        return outcome
    assert isinstance(answer, Assign)
    outcome.assign = answer
    follows = Follows(answer.follows)
    if Follows.SCRIPT in follows:
        script = await link.expect(Script)
        assert isinstance(script, Script)
        log.info("running the %s nodescript (%d bytes)", req.state, len(script.body))
        outcome.script = run = await run_script(script.body, req.env, req.script_timeout)
        if run.bad_request:
            log.warning("the nodescript asked for %r: not reprovision, reboot or halt", run.bad_request)
        link.send(ScriptResult(run.status, run.tail))
        if run.status:
            log.warning("the nodescript exited with status %d", run.status)
    if Follows.IMAGE in follows:
        if req.download is None:
            raise SessionFailed("the master offers an image in a check-in that expects none", reached=True)
        offer = await link.expect(ImageOffer)
        assert isinstance(offer, ImageOffer)
        outcome.offer = offer
        outcome.notes = req.download.accept(offer)
        for note in outcome.notes:
            log.info("%s", note)
        await _fetch_all(link, req.download)
    link.send(Bye(req.bye_reason))
    outcome.bytes_received = link.bytes_received
    if link.failure is not None:
        raise link.failure
    return outcome


async def _fetch_all(link: _Link, download: Download) -> None:
    """IMAGE, OVERLAY, KERNEL in turn, each from its last good boundary to the end."""
    assert download.objects is not None
    for kind in KINDS:
        obj = download.objects[kind]
        while not obj.complete:
            await obj.quiesce()
            offset = obj.begin(link.transport)
            link.raw_target, link.raw_pooled = obj.feed, obj.threaded
            link.send(ImageRequest(kind, offset, 0))
            header = await link.expect(ImageData)
            assert isinstance(header, ImageData)
            if header.length:
                await link.expect(_RawDone)
            link.raw_target = None
            try:
                refetch = await obj.settle()
            except ChecksumError as exc:
                link._fail(str(exc), reached=True, code=ErrorCode.CHECKSUM)
                raise link.failure from None  # type: ignore[misc]
            if refetch:
                log.warning("%s; fetching it again from byte %d", obj.last_error, obj.good)
                link.send(Log(f"{obj.last_error}; fetching again from byte {obj.good}", 4))
            elif not obj.complete:
                raise SessionFailed(f"the master sent {kind.name} short of its size", reached=True)
