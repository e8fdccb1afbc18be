"""perceusd: the master daemon that answers booting and running nodes on TCP 987.

``perceusd [--foreground] [--port N] [--bind ADDRESS] [--pidfile PATH]``. The flags
override perceus.conf (``perceusd port``; the address defaults to that of ``master
network device``). Without ``--foreground`` it daemonises once it is listening, so every
start-up error is still one line on the terminal: ``perceusd: error: <what> (<where>)``,
exit status 1. SIGTERM or SIGINT: stop accepting, let running sessions finish (10 s at
most), exit 0. SIGHUP: reload perceus.conf, defaults.conf and the site key.

In-process use (tests, the benchmark)::

    async with serve(settings, Options(port=0, bind="127.0.0.1")) as server:
        ... connect to server.port ...

``--port 0`` picks a free port; the ``listening on HOST:PORT`` log line names it.
"""

import argparse
import asyncio
import collections
import contextlib
import errno
import logging
import logging.handlers
import os
import queue
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from perceus.common.daemonize import Pidfile, daemonize
from perceus.common.stats import percentile
from perceus.server import control, netinfo, sitekey
from perceus.server.config import Settings
from perceus.server.errors import PerceusError
from perceus.server.paths import Paths
from perceus.server.perceusd.checkins import CheckinWriter
from perceus.server.perceusd.memo import Memo
from perceus.server.perceusd.offer import warm
from perceus.server.perceusd.progress import Progress
from perceus.server.perceusd.session import Context, Session
from perceus.server.perceusd.streamer import Streamer
from perceus.stage1 import protocol

log = logging.getLogger("perceusd")

SHUTDOWN_GRACE = 10.0
MAX_SESSIONS = 4096
BACKLOG = 4096  # pending connections: a whole cluster powered on at once (capped by somaxconn)
CHECKIN_SAMPLES = 1024  # the latest check-ins' latencies the status document summarises
LOG_QUEUE = 10000  # log records waiting for stderr/syslog; more are dropped (and counted)


def listen_backlog(wanted: int = BACKLOG) -> int:
    """The listen(2) backlog: ``wanted``, or net.core.somaxconn if the kernel caps it lower."""
    try:
        with open("/proc/sys/net/core/somaxconn") as handle:
            allowed = int(handle.read().strip())
    except (OSError, ValueError):
        return wanted
    return max(1, min(wanted, allowed))


@dataclass(frozen=True)
class Options:
    """How to run; None means "from perceus.conf" (port, bind) or the default."""

    port: int | None = None
    bind: str | None = None
    rundir: Path | None = None  # pidfile and control socket; None: $PERCEUS_RUNDIR or /run/perceus
    control_socket: bool = True  # open the control socket
    max_sessions: int = MAX_SESSIONS
    max_idle: float | None = None  # cap on every protocol timeout (tests)
    script_timeout: float = 60.0  # bound on nodescript generation per check-in
    shutdown_grace: float = SHUTDOWN_GRACE


def load_settings(paths: Paths) -> Settings:
    """perceus.conf and defaults.conf; PerceusError if perceus is not initialised or they are bad."""
    if not paths.perceus_conf.exists():
        raise PerceusError("perceus is not initialised: run 'perceus init'", str(paths.perceus_conf))
    return Settings.load(paths, warn=lambda message: log.warning("%s", message))


def listen_address(settings: Settings, options: Options) -> tuple[str, int]:
    """(address, port) to bind: the flags, else perceus.conf, else 0.0.0.0 with a warning."""
    conf = settings.perceus
    port = options.port if options.port is not None else int(conf.get("perceusd port"))
    if options.bind:
        return options.bind, port
    device = conf.get("master network device")
    address = netinfo.ipv4_address(device)
    if address is None:
        log.warning(
            "master network device %r has no IPv4 address: listening on every address (%s)",
            device,
            conf.where("master network device"),
        )
        return "0.0.0.0", port
    return address, port


def bind_socket(address: str, port: int) -> socket.socket:
    """The listening TCP socket; PerceusError (port in use, bad address...) names the address."""
    where = f"{address}:{port}"
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PerceusError(f"cannot resolve the bind address: {exc.strerror}", where) from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(listen_backlog())
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        what = "the port is in use" if exc.errno == errno.EADDRINUSE else f"cannot listen: {exc.strerror}"
        raise PerceusError(what, where) from None
    return sock


def raise_fd_limit() -> None:
    """Each session holds a socket, the image and the kernel: lift the soft fd limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard)
            )


class Server:
    """perceusd's listener, sessions, database thread and control socket."""

    def __init__(self, settings: Settings, options: Options | None = None) -> None:
        self.settings = settings
        self.options = options or Options()
        self.db = CheckinWriter(settings)
        self.hashes = Memo()
        self.dirs = Memo(size=16)
        self.streamer = Streamer()
        self.ctx: Context | None = None
        self.warming: asyncio.Task | None = None  # the memos being filled for every VNFS
        self.sessions: dict[int, Progress] = {}
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.AbstractServer | None = None
        self._control: control.ControlServer | None = None
        self._next_sid = 0
        self.started = time.time()
        self.address = ""
        self.port = 0
        self.totals = {"sessions": 0, "refused_busy": 0, "bytes_sent": 0}
        self.checkins: collections.deque[float] = collections.deque(maxlen=CHECKIN_SAMPLES)

    def _context(self, settings: Settings) -> Context:
        key = sitekey.load(settings.paths)
        auth = settings.perceus.get("node auth") == "required"
        if auth and key is None:
            raise PerceusError(
                "node auth = required, but there is no site key", str(sitekey.path_of(settings.paths))
            )
        return Context(
            settings=settings,
            db=self.db,
            hashes=self.hashes,
            dirs=self.dirs,
            site_key=key,
            auth_required=auth,
            retry=int(settings.perceus.get("node retry")),
            provisiond_interval=int(settings.perceus.get("provisiond interval")),
            script_timeout=self.options.script_timeout,
            max_idle=self.options.max_idle,
            streamer=self.streamer,
        )

    async def start(self, sock: socket.socket | None = None) -> None:
        """Check the configuration, open the database and start listening (on ``sock`` if given)."""
        self.ctx = self._context(self.settings)
        raise_fd_limit()
        if sock is None:
            sock = bind_socket(*listen_address(self.settings, self.options))
        try:
            self.db.start()
            self.streamer.start()
            # start_server listens again with its own backlog (100 by default): pass ours
            self._server = await asyncio.start_server(
                self._accept, sock=sock, limit=1 << 16, backlog=listen_backlog()
            )
            name = sock.getsockname()
            self.address, self.port = name[0], name[1]
            if self.options.control_socket:
                directory = self.options.rundir or control.rundir()
                self._control = control.ControlServer(control.socket_path(directory), self.status)
                await self._control.start()
        except BaseException:
            sock.close()
            self.streamer.stop()
            await self.db.stop()
            raise
        log.info("listening on %s:%s", self.address, self.port)
        self._warm()

    def _warm(self) -> None:
        """Fill the image memos for every imported VNFS in the background (start-up, SIGHUP)."""
        if self.warming is not None and not self.warming.done():
            self.warming.cancel()  # a node waiting on a memo keeps its computation (shielded)
        assert self.ctx is not None
        self.warming = asyncio.ensure_future(warm(self.ctx.store, self.hashes, self.dirs))

    def reload(self) -> None:
        """SIGHUP: re-read perceus.conf, defaults.conf and the site key; running sessions keep theirs."""
        try:
            settings = load_settings(self.settings.paths)
            ctx = self._context(settings)
        except PerceusError as exc:
            log.error("reload failed, keeping the old configuration: %s", exc)
            return
        self.settings, self.ctx = settings, ctx
        self.db.settings = settings
        log.info("configuration reloaded")
        self._warm()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, give running sessions ``grace`` seconds, then end the rest."""
        grace = self.options.shutdown_grace if grace is None else grace
        if self._server is not None:
            self._server.close()
        if self.warming is not None:
            self.warming.cancel()
            await asyncio.gather(self.warming, return_exceptions=True)
        if self._tasks:
            log.info("waiting up to %g s for %d sessions", grace, len(self._tasks))
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._control is not None:
            await self._control.stop()
            self._control = None
        self.streamer.stop()
        await self.db.stop()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.totals["sessions"] += 1
        if len(self.sessions) >= self.options.max_sessions or self.ctx is None:
            self.totals["refused_busy"] += 1
            busy = protocol.Error(
                protocol.ErrorCode.REFUSED, "perceusd is busy: too many sessions, try again"
            )
            writer.write(protocol.encode_message(busy))
            writer.close()
            return
        self._next_sid += 1
        sid = self._next_sid
        progress = Progress(sid, str(writer.get_extra_info("peername", ("", 0))[0]))
        self.sessions[sid] = progress
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await Session(self.ctx, reader, writer, progress).run()
        finally:
            self.totals["bytes_sent"] += progress.bytes_sent
            if progress.checkin_s is not None:
                self.checkins.append(progress.checkin_s)
            del self.sessions[sid]
            self._tasks.discard(task)

    def status(self) -> dict:
        """The control socket's document: every session, and the daemon's totals."""
        sessions = [p.as_dict() for p in self.sessions.values()]
        return {
            "perceusd": {
                "pid": os.getpid(),
                "started": round(self.started, 3),
                "listening": f"{self.address}:{self.port}",
                "active_sessions": len(sessions),
                "sessions_total": self.totals["sessions"],
                "refused_busy": self.totals["refused_busy"],
                "bytes_sent_total": self.totals["bytes_sent"] + sum(s["bytes_sent"] for s in sessions),
                "rate_bps": sum(s["rate_bps"] for s in sessions),
                "nodes_added": self.db.added,
                "checkin_p50_ms": round(percentile(self.checkins, 50) * 1000, 2),
                "checkin_p99_ms": round(percentile(self.checkins, 99) * 1000, 2),
                "time": round(time.time(), 3),
            },
            "sessions": sorted(sessions, key=lambda s: s["session"]),
        }


@contextlib.asynccontextmanager
async def serve(settings: Settings, options: Options | None = None, **overrides) -> AsyncIterator[Server]:
    """A running perceusd in this event loop (``overrides`` are Options fields), stopped at exit."""
    server = Server(settings, replace(options or Options(), **overrides))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --------------------------------------------------------------------------- the process


def _check_pidfile(pidfile: Pidfile) -> None:
    """Refuse to start while a live perceusd holds the pidfile."""
    pid = pidfile.holder()
    if pid is not None and pid != os.getpid():
        raise PerceusError(f"perceusd is already running as process {pid}", str(pidfile.path))


def _write_pidfile(pidfile: Pidfile) -> None:
    try:
        pidfile.write()
    except OSError as exc:
        raise PerceusError(f"cannot write the pidfile: {exc.strerror}", str(pidfile.path)) from exc


class _LogPump(logging.handlers.QueueHandler):
    """Hands log records to a thread that writes them to stderr and syslog.

    Writing on the event loop would stall every session whenever stderr or /dev/log
    blocks (a pipe nobody reads, a busy syslog). At most ``size`` records wait; past that
    new ones are dropped and counted, and the count is written when perceusd stops.
    """

    def __init__(self, targets: list[logging.Handler], size: int = LOG_QUEUE) -> None:
        super().__init__(queue.Queue(size))
        self.targets = targets
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="perceusd-log", daemon=True)
        self._thread.start()

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while (record := self.queue.get()) is not None:
            self._write(record)

    def _write(self, record: logging.LogRecord) -> None:
        for target in self.targets:
            if record.levelno >= target.level:
                target.handle(record)

    def close(self) -> None:
        """Write what is queued (for up to 2 s) and stop the thread."""
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self.queue.put(None, timeout=2)
            self._thread.join(2)
        if not self._thread.is_alive():  # else a target is stuck (holding its lock): leave them
            if self.dropped:
                note = logging.LogRecord("perceusd", logging.WARNING, __file__, 0, "", None, None)
                note.msg = f"{self.dropped} log lines were dropped: the log output was not keeping up"
                self._write(note)
            for target in self.targets:
                target.close()
        super().close()


def _setup_logging(foreground: bool) -> None:
    root = logging.getLogger("perceusd")
    root.setLevel(logging.INFO)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if isinstance(handler, _LogPump):
            handler.close()
    targets: list[logging.Handler] = []
    if foreground:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter("perceusd: %(message)s"))
        targets.append(stderr)
    if os.path.exists("/dev/log"):
        try:
            syslog = logging.handlers.SysLogHandler("/dev/log", logging.handlers.SysLogHandler.LOG_DAEMON)
            syslog.setFormatter(logging.Formatter(f"perceusd[{os.getpid()}]: %(message)s"))
            targets.append(syslog)
        except OSError:
            pass
    if targets:
        root.addHandler(_LogPump(targets))


def _stop_logging() -> None:
    root = logging.getLogger("perceusd")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="perceusd", description="Answer booting and running Perceus nodes.")
    parser.add_argument("--foreground", action="store_true", help="Do not daemonise; log to stderr too.")
    parser.add_argument("--port", type=int, help="TCP port (default: perceus.conf 'perceusd port', 987).")
    parser.add_argument("--bind", metavar="ADDRESS", help="Address to listen on (default: master device's).")
    parser.add_argument("--pidfile", type=Path, help="Pidfile (default: $PERCEUS_RUNDIR/perceusd.pid).")
    args = parser.parse_args(argv)
    if args.port is not None and not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: must be 0 to 65535")
    return args


async def _run(server: Server, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await server.start(sock)
    await stopping.wait()
    log.info("stopping")
    await server.stop()
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = _arguments(argv)
    _setup_logging(True)
    paths = Paths.from_environment()
    rundir = control.rundir()
    pidfile = Pidfile(args.pidfile or rundir / control.PIDFILE_NAME, "perceusd")
    options = Options(port=args.port, bind=args.bind, rundir=rundir)
    try:
        settings = load_settings(paths)
        server = Server(settings, options)
        server.ctx = server._context(settings)  # site key and auth errors before anything starts
        _check_pidfile(pidfile)
        sock = bind_socket(*listen_address(settings, options))
    except PerceusError as exc:
        print(f"perceusd: error: {exc}", file=sys.stderr)
        sys.exit(1)
    if not args.foreground:
        _stop_logging()  # write what is queued: the log thread does not survive the fork
        daemonize()
        _setup_logging(False)
    try:
        _write_pidfile(pidfile)
        try:
            asyncio.run(_run(server, sock))
        finally:
            pidfile.remove()
    except PerceusError as exc:
        log.error("error: %s", exc)
        _stop_logging()
        print(f"perceusd: error: {exc}", file=sys.stderr)
        sys.exit(1)
    _stop_logging()
    sys.exit(0)
