"""One node's session with perceusd: the asyncio driver of the sans-IO ``MasterConnection``.

The protocol object decides what may be sent and received; this module does the I/O
around it: reads bounded by the timeout of the state the session is in, the check-in,
the nodescript, the offer, and the image, overlay and kernel bytes (image and kernel
zero-copy, with sendfile(2) in the daemon's
:class:`~perceus.server.perceusd.streamer.Streamer` thread). Whatever a node does —
garbage, silence, a disconnect, a request out of range — ends this session only: a
protocol error is answered with the ERROR the protocol object names, a silent node with
ERROR(TIMEOUT), a failure on the master with ERROR(INTERNAL), and the connection is
closed. Each session ends in one log line: node name, MAC, state, peer, outcome.

Between HELLO and ASSIGN the session does as little as it can on the event loop, since
hundreds of nodes check in at once: the database round trip is batched by
:class:`~perceus.server.perceusd.checkins.CheckinWriter`, the nodescript plan is cached,
the overlay's staging directory is made only when a master-side part is about to run, and
the image is opened, hashed (memoised) and the overlay built only after ASSIGN.
"""

import asyncio
import hashlib
import logging
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from perceus.server import nodescripts, overlay
from perceus.server.config import Settings
from perceus.server.errors import PerceusError
from perceus.server.perceusd.checkins import CheckinWriter
from perceus.server.perceusd.decision import Action, Decision, decide
from perceus.server.perceusd.memo import Memo
from perceus.server.perceusd.offer import OpenVnfs, chunk_entries, image_directories, open_offer
from perceus.server.perceusd.progress import Progress
from perceus.server.perceusd.secretfilter import secret_filter
from perceus.server.perceusd.streamer import Streamer, _EndedEarly
from perceus.server.vnfs import VnfsStore
from perceus.stage1 import protocol
from perceus.stage1.protocol import (
    CLOSED,
    NEED_DATA,
    Assign,
    Bye,
    ErrorCode,
    Follows,
    Hello,
    ImageData,
    ImageOffer,
    ImageRequest,
    Log,
    MasterConnection,
    ObjectKind,
    Ping,
    Pong,
    ProtocolError,
    Script,
    ScriptResult,
    State,
    Wait,
)

log = logging.getLogger("perceusd")

READ_SIZE = 64 << 10
PROGRESS_TICK = 0.5  # seconds between progress updates of a streaming session
WRITE_PIECE = 1 << 20  # overlay bytes written per drain
MAX_NODE_LOGS = 100  # LOG lines relayed per session; a chatty node cannot flood syslog
CLOSE_TIMEOUT = 2.0


@dataclass
class Context:
    """What every session needs from the daemon (rebuilt on SIGHUP; a running session keeps its own)."""

    settings: Settings
    db: CheckinWriter
    hashes: Memo
    dirs: Memo
    streamer: Streamer  # streams image and kernel bytes for every session
    site_key: bytes | None = None
    auth_required: bool = False
    retry: int = 30
    provisiond_interval: int = 300
    script_timeout: float = 60.0
    max_idle: float | None = None  # caps every protocol timeout (tests use a short one)

    @property
    def store(self) -> VnfsStore:
        return VnfsStore(self.settings.paths.vnfs_dir)


class SessionTimeout(Exception):
    def __init__(self, state: State, seconds: float) -> None:
        super().__init__(f"no answer from the node in {seconds:g} s (state {state.name})")
        self.state = state


class NodeError(Exception):
    """The node sent ERROR: the session is over, nothing to answer."""


class Aborted(Exception):
    """The session cannot go on and nothing can be said (in the middle of raw bytes)."""


def _peer_host(address: object) -> str:
    host = address[0] if isinstance(address, tuple) and address else str(address or "")
    return host[7:] if isinstance(host, str) and host.startswith("::ffff:") else str(host)


def _host_port(address: object) -> str:
    if not isinstance(address, tuple) or len(address) < 2:
        return ""
    host = _peer_host(address)
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"


class Session:
    """One accepted connection; :meth:`run` drives it to its end and never raises (but cancel)."""

    def __init__(
        self,
        ctx: Context,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        progress: Progress,
    ) -> None:
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.progress = progress
        self.conn = MasterConnection(site_key=ctx.site_key, auth_required=ctx.auth_required)
        self.peer_ip = _peer_host(writer.get_extra_info("peername"))
        self.master = _host_port(writer.get_extra_info("sockname"))
        self.destdir: Path | None = None
        self.opened: OpenVnfs | None = None
        self.overlay = b""
        self.logs = 0
        self.outcome = "closed"

    # -- the session --

    async def run(self) -> None:
        self._tune_socket()
        try:
            await self._serve()
        except ProtocolError as exc:
            self.outcome = f"error {_code_name(exc.code)}: {exc.message}"
            await self._send_error(exc.to_event())
        except SessionTimeout as exc:
            self.outcome = f"timeout: {exc}"
            await self._send_error(protocol.Error(ErrorCode.TIMEOUT, str(exc)))
        except PerceusError as exc:
            self.outcome = f"failed: {exc}"
            await self._send_error(protocol.Error(ErrorCode.INTERNAL, _one_line(str(exc))))
        except NodeError as exc:
            self.outcome = f"node reported error: {exc}"
        except Aborted as exc:
            self.outcome = f"aborted: {exc}"
        except (ConnectionError, TimeoutError) as exc:
            self.outcome = f"connection lost: {exc or type(exc).__name__}"
        except asyncio.CancelledError:
            self.outcome = "cancelled (perceusd is stopping)"
            raise
        except Exception as exc:  # noqa: BLE001 - a bug ends this session only, with a log line
            log.exception("session %s: internal error", self.progress.sid)
            self.outcome = f"internal error: {type(exc).__name__}: {exc}"
            await self._send_error(protocol.Error(ErrorCode.INTERNAL, "internal error in perceusd"))
        finally:
            self.progress.phase = "done"
            self._cleanup()
            await self._close()
            p = self.progress
            log.info(
                "%s %s %s from %s: %s",
                p.name or "-",
                p.nodeid or "-",
                p.state or "-",
                self.peer_ip or "-",
                self.outcome,
            )

    async def _serve(self) -> None:
        conn, ctx, p = self.conn, self.ctx, self.progress
        hello = await self._event()
        p.hello()
        assert isinstance(hello, Hello)
        p.nodeid, p.state = hello.nodeid, hello.state
        if ctx.site_key is not None:
            p.phase = "auth"
            await self._send(conn.challenge())
            await self._event()  # AUTH_RESPONSE, verified by the protocol object
        p.phase = "checkin"
        node = await ctx.db.checkin(hello.nodeid, hello.state, self.peer_ip)
        if node is not None:
            p.name = node.hostname  # the log line names a waiting node too
        decision = decide(node, hello.state, ctx.store)
        if decision.action is Action.REFUSE:
            self.outcome = f"refused: {decision.reason}"
            await self._send_error(protocol.Error(ErrorCode.REFUSED, decision.reason))
            return
        if decision.action is Action.WAIT:
            self.outcome = f"wait {ctx.retry} s: {decision.reason}"
            await self._send(Wait(ctx.retry, decision.reason))
            p.answered()
            return
        assert node is not None
        p.phase = "script"
        node_ctx = nodescripts.NodeContext.from_node(node, hello.state, ctx.settings, ipaddr=self.peer_ip)
        paths = ctx.settings.paths
        assembly = await nodescripts.assemble_parts_async(
            node_ctx,
            paths.nodescripts_dir,
            paths.vnfs_dir,
            timeout=ctx.script_timeout,
            max_bytes=protocol.MAX_SCRIPT,
            destdir=self._staging,
            skip=secret_filter(paths, ctx.site_key, conn.authenticated),
            extra_env={"PERCEUS_SYSCONFDIR": str(paths.sysconfdir)},
        )
        follows = Follows.SCRIPT if assembly.parts else Follows.NOTHING
        if decision.vnfs is not None:
            follows |= Follows.IMAGE
        await self._send(Assign(node.hostname, decision.vnfs_name, follows))
        p.answered()
        if assembly.parts:
            await self._send(Script(assembly.script))
            result = await self._event()
            assert isinstance(result, ScriptResult)
            if result.status != 0:
                reason = f"nodescript failed with status {result.status}"
                tail = result.output_tail[-200:].decode("utf-8", "replace").strip().splitlines()
                self.outcome = f"refused: {reason}" + (f" ({tail[-1]})" if tail else "")
                await self._send_error(protocol.Error(ErrorCode.REFUSED, reason))
                return
        if decision.vnfs is None:
            p.phase = "finish"
            bye = await self._event()
            assert isinstance(bye, Bye)
            self.outcome = f"assigned, bye {bye.reason or '-'}"
            return
        p.phase = "offer"
        await self._offer(node.hostname, node.nodeid, node.group, decision)
        await self._transfer()

    def _staging(self) -> Path:
        """The overlay staging directory (DESTDIR of master-side parts), made on first use."""
        if self.destdir is None:
            self.destdir = Path(tempfile.mkdtemp(prefix="perceusd."))
        return self.destdir

    async def _offer(self, name: str, nodeid: str, group: str, decision: Decision) -> None:
        ctx = self.ctx
        assert decision.vnfs is not None
        self.opened = opened = await open_offer(decision.vnfs, ctx.hashes)
        image_dirs = await image_directories(opened, ctx.dirs)
        conf = {
            "NODENAME": name,
            "NODEID": nodeid,
            "GROUPNAME": group,
            "VNFS": decision.vnfs.name,
            "VNFS_SHA256": opened.image_sha256,
            "MASTERS": self.master,
            "PROVISIOND_INTERVAL": str(ctx.provisiond_interval),
        }
        with_keys = ctx.site_key is None or self.conn.authenticated
        ssh_dir = ctx.settings.paths.ssh_dir if with_keys else None
        self.overlay = await asyncio.to_thread(overlay.build, self.destdir, conf, image_dirs, ssh_dir)
        offer = ImageOffer(
            vnfs=decision.vnfs.name,
            image_size=opened.image_size,
            image_sha256=opened.image_sha256,
            chunks=chunk_entries(opened.chunks),
            overlay_size=len(self.overlay),
            overlay_sha256=_sha256(self.overlay),
            kernel_size=opened.kernel_size,
            kernel_sha256=opened.kernel_sha256,
            kernel_args=opened.kernel_args,
        )
        self.progress.bytes_total = opened.image_size + len(self.overlay) + opened.kernel_size
        await self._send(offer)

    async def _transfer(self) -> None:
        p = self.progress
        while True:
            p.phase = "image"
            event = await self._event()
            if isinstance(event, Bye):
                sent = p.bytes_sent
                seconds = time.time() - p.started
                self.outcome = f"provisioned, bye {event.reason or '-'}, {sent} bytes in {seconds:.2f} s"
                return
            assert isinstance(event, ImageRequest)
            header = self.conn.image_data()
            await self._send(header)
            await self._stream(header)

    async def _stream(self, header: ImageData) -> None:
        if not header.length:
            return
        assert self.opened is not None
        if header.kind is ObjectKind.OVERLAY:
            await self._write_memory(memoryview(self.overlay)[header.offset : header.offset + header.length])
            return
        handle = self.opened.image if header.kind is ObjectKind.IMAGE else self.opened.kernel
        if handle is None:
            raise Aborted("no kernel file to send")
        sock = self.writer.get_extra_info("socket")
        streamer = self.ctx.streamer
        if self.writer.transport.get_write_buffer_size():
            await self._drain()  # the high-water mark is 0: this empties the buffer
        loop = asyncio.get_running_loop()
        limit = self._limit(State.RAW)
        job = streamer.send(sock.fileno(), handle.fileno(), header.offset, header.length)
        accounted, moved_at = 0, loop.time()
        try:
            while not job.future.done():
                await asyncio.wait((job.future,), timeout=PROGRESS_TICK)
                sent = job.sent
                if sent > accounted:
                    self._account(sent - accounted)
                    accounted, moved_at = sent, loop.time()
                elif not job.future.done() and loop.time() - moved_at >= limit:
                    raise Aborted(f"the node took no data for {limit:g} s")
        finally:
            if not job.future.done():
                streamer.cancel(job)
                await asyncio.shield(job.future)  # the thread has let go of the descriptors
        if job.sent > accounted:
            self._account(job.sent - accounted)
        error = job.future.result()
        if isinstance(error, _EndedEarly):
            raise Aborted(f"{header.kind.name} file ended {job.left} bytes early")
        if error is not None:
            raise ConnectionResetError(str(error))

    def _account(self, count: int) -> None:
        self.conn.raw_sent(count)
        self.progress.account(count)

    async def _write_memory(self, data: memoryview) -> None:
        for start in range(0, len(data), WRITE_PIECE):
            piece = data[start : start + WRITE_PIECE]
            self.writer.write(piece)
            self.conn.raw_sent(len(piece))
            self.progress.account(len(piece))
            await self._drain()

    # -- I/O helpers --

    def _limit(self, state: State) -> float:
        seconds = protocol.timeout_for_state(state) or 60.0
        return min(seconds, self.ctx.max_idle) if self.ctx.max_idle else seconds

    async def _event(self) -> protocol.Event:
        """The next event that moves the session on; answers PING, relays LOG, reads as needed."""
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                timeout = conn.timeout or 60.0
                if self.ctx.max_idle:
                    timeout = min(timeout, self.ctx.max_idle)
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
                except TimeoutError:
                    raise SessionTimeout(conn.state, timeout) from None
                conn.receive_data(data)
            elif event is CLOSED:
                raise ConnectionResetError("the session ended")
            elif isinstance(event, Ping):
                await self._send(Pong(event.token))
            elif isinstance(event, Pong):
                continue
            elif isinstance(event, Log):
                self._relay(event)
            elif isinstance(event, protocol.Error):
                raise NodeError(f"{_code_name(event.code)}: {event.message}")
            else:
                return event

    def _relay(self, event: Log) -> None:
        self.logs += 1
        if self.logs <= MAX_NODE_LOGS:
            level = logging.WARNING if event.level <= 4 else logging.INFO
            text = event.message.replace("\r", " ").replace("\n", " | ")
            log.log(level, "%s %s says: %s", self.progress.name or "-", self.progress.nodeid, text)

    async def _send(self, event: protocol.Event) -> None:
        self.writer.write(self.conn.send(event))
        await self._drain()

    async def _drain(self) -> None:
        if not self.writer.transport.get_write_buffer_size() and not self.writer.transport.is_closing():
            return  # all went to the socket: no task, no timer (hundreds of check-ins at once)
        limit = self._limit(State.RAW)
        try:
            await asyncio.wait_for(self.writer.drain(), limit)
        except TimeoutError:
            raise Aborted(f"the node took no data for {limit:g} s") from None

    async def _send_error(self, event: protocol.Error) -> None:
        try:
            data = self.conn.send(event)
        except ProtocolError:
            return  # the session had already ended
        if not data or self.writer.is_closing():
            return
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), CLOSE_TIMEOUT)
        except (ConnectionError, TimeoutError, RuntimeError):
            pass

    def _tune_socket(self) -> None:
        # drain() waits for an empty buffer: frames are small, and the Streamer needs the
        # socket to itself (nothing queued in the transport) before raw bytes go.
        self.writer.transport.set_write_buffer_limits(high=0)
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return
        try:
            # SO_SNDBUF stays with the kernel's autotuning (docs/perceusd.md: fixed 4 MiB
            # buffers on 512 connections pushed TCP into memory pressure).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def _cleanup(self) -> None:
        if self.opened is not None:
            self.opened.close()
            self.opened = None
        if self.destdir is not None:
            shutil.rmtree(self.destdir, ignore_errors=True)
            self.destdir = None
        self.overlay = b""

    async def _close(self) -> None:
        writer = self.writer
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
        except (ConnectionError, TimeoutError, OSError, RuntimeError):
            writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()
            raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


def _one_line(text: str) -> str:
    return " ".join(text.split())
