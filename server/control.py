"""perceusd's control socket: live session status for ``perceus node status --watch``.

A Unix stream socket, ``$PERCEUS_RUNDIR/perceusd.sock`` (default ``/run/perceus``), mode
0600 and answering only root (or perceusd's own user), checked with SO_PEERCRED. The
protocol is lines: the client sends one command line, perceusd answers with JSON
documents, one per line.

    status              one document, then perceusd closes
    watch [SECONDS]     a document every SECONDS (default 1, 0.1 to 3600) until the client leaves

A document is ``{"perceusd": {...daemon totals...}, "sessions": [{...}, ...]}``; an unknown
or malformed command gets ``{"error": "..."}`` and the connection is closed. A command
line is at most 256 bytes; a client that sends more, or nothing for 10 s, is dropped.
Nothing a client does reaches the rest of the daemon.
"""

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from perceus.server.errors import PerceusError

log = logging.getLogger("perceusd")

SOCKET_NAME = "perceusd.sock"
PIDFILE_NAME = "perceusd.pid"
DEFAULT_RUNDIR = "/run/perceus"
MAX_LINE = 256
READ_TIMEOUT = 10.0
MIN_INTERVAL, MAX_INTERVAL = 0.1, 3600.0


def rundir() -> Path:
    """Where the pidfile and the control socket live: $PERCEUS_RUNDIR, else /run/perceus."""
    return Path(os.environ.get("PERCEUS_RUNDIR") or DEFAULT_RUNDIR)


def socket_path(directory: Path | None = None) -> Path:
    return (directory or rundir()) / SOCKET_NAME


def parse_command(line: bytes) -> tuple[str, float]:
    """(command, interval) of one request line; ValueError with a message if it is not one."""
    try:
        words = line.decode("ascii").split()
    except UnicodeDecodeError:
        raise ValueError("commands are ASCII") from None
    if not words:
        raise ValueError("empty command; try 'status' or 'watch'")
    command, args = words[0], words[1:]
    if command == "status" and not args:
        return command, 0.0
    if command == "watch" and len(args) <= 1:
        try:
            interval = float(args[0]) if args else 1.0
        except ValueError:
            raise ValueError(f"watch: not a number of seconds: {args[0][:20]!r}") from None
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:  # also refuses nan and inf
            raise ValueError(f"watch: interval must be {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds")
        return command, interval
    raise ValueError(f"unknown command {line[:40].decode('ascii', 'replace')!r}; try 'status' or 'watch'")


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer:
    """The listening control socket; ``status()`` makes each document."""

    def __init__(self, path: Path, status: Callable[[], dict]) -> None:
        self.path = Path(path)
        self.status = status
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Bind beside the final name, chmod 0600, then rename: never reachable with a wider mode."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if tmp.exists():
                tmp.unlink()
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
            sock.listen(16)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._client, sock=sock)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise PerceusError(f"cannot create the control socket: {exc.strerror}", str(self.path)) from exc

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - a control client must never hurt the daemon
            log.exception("control socket client")
        finally:
            self._clients.discard(task)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = _peer_uid(writer.get_extra_info("socket"))
        if uid is None or uid not in (0, os.geteuid()):
            await self._send(writer, {"error": "permission denied: root only"})
            return
        line = await asyncio.wait_for(self._read_line(reader), READ_TIMEOUT)
        try:
            command, interval = parse_command(line)
        except ValueError as exc:
            await self._send(writer, {"error": str(exc)})
            return
        await self._send(writer, self.status())
        if command == "watch":
            while True:
                await asyncio.sleep(interval)
                await self._send(writer, self.status())

    @staticmethod
    async def _read_line(reader: asyncio.StreamReader) -> bytes:
        data = bytearray()
        while b"\n" not in data:
            piece = await reader.read(MAX_LINE + 1 - len(data))
            if not piece:
                break
            data += piece
            if len(data) > MAX_LINE:
                return bytes(data)  # parse_command refuses it as unknown
        return bytes(data.split(b"\n", 1)[0])

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, document: dict) -> None:
        writer.write(json.dumps(document, sort_keys=True).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), READ_TIMEOUT)


# --------------------------------------------------------------------------- client side


class NotRunning(PerceusError):
    """perceusd's control socket does not answer."""


def _connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except FileNotFoundError:
        sock.close()
        raise NotRunning("perceusd is not running (no control socket)", str(path)) from None
    except OSError as exc:
        sock.close()
        raise NotRunning(f"perceusd is not running ({exc.strerror})", str(path)) from None
    return sock


def _documents(sock: socket.socket, path: Path) -> Iterator[dict]:
    buf = bytearray()
    while True:
        while b"\n" not in buf:
            try:
                piece = sock.recv(1 << 16)
            except OSError as exc:
                raise PerceusError(f"perceusd's control socket failed: {exc}", str(path)) from None
            if not piece:
                return
            buf += piece
            if len(buf) > 64 << 20:
                raise PerceusError("perceusd sent an oversized status document", str(path))
        line, _, rest = bytes(buf).partition(b"\n")
        buf = bytearray(rest)
        try:
            document = json.loads(line)
        except ValueError:
            raise PerceusError("perceusd sent something that is not JSON", str(path)) from None
        if not isinstance(document, dict):
            raise PerceusError("perceusd sent something that is not a status document", str(path))
        if "error" in document:
            raise PerceusError(f"perceusd: {document['error']}", str(path))
        yield document


def query(path: Path | None = None, timeout: float = 10.0) -> dict:
    """One status document from a running perceusd; NotRunning if there is none."""
    path = path or socket_path()
    with _connect(path, timeout) as sock:
        sock.sendall(b"status\n")
        for document in _documents(sock, path):
            return document
    raise PerceusError("perceusd closed the control socket without answering", str(path))


def watch(path: Path | None = None, interval: float = 1.0, timeout: float = 10.0) -> Iterator[dict]:
    """Status documents every ``interval`` seconds for as long as the caller iterates."""
    path = path or socket_path()
    with _connect(path, max(timeout, interval + timeout)) as sock:
        sock.sendall(f"watch {interval:g}\n".encode())
        yield from _documents(sock, path)
