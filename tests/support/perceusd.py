"""What the perceusd tests share: a VNFS to serve, an in-process perceusd, and a node.

The node is ``stage1.protocol.NodeConnection`` over asyncio streams, so the tests speak
the real protocol without depending on the stage-one program.
"""

import asyncio
import hashlib
import io
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from perceus.common import newc
from perceus.server.config import Settings
from perceus.server.daemon import Options
from perceus.server.paths import Paths
from perceus.stage1.protocol import (
    CLOSED,
    NEED_DATA,
    Assign,
    AuthChallenge,
    Bye,
    Error,
    Follows,
    ImageOffer,
    ImageRequest,
    NodeConnection,
    ObjectKind,
    RawBytes,
    RemoteProtocolError,
    Script,
    ScriptResult,
    Wait,
    decode_frame,
    decode_payload,
    encode_message,
)

from tests.support.capsule_trees import make_tree
from tests.support.instance import BIN, Instance

VNFS = "test-1.0-1.stateless.x86_64"
KERNEL = b"not really a kernel, but bytes to send\n" * 1000
STEP = 20.0  # seconds any single wait may take before a test fails (never reached when things work)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def settings_of(instance: Instance) -> Settings:
    return Settings.load(Paths(instance.sysconfdir, instance.statedir))


def options(tmp_path: Path, **kw) -> Options:
    return Options(port=0, bind="127.0.0.1", rundir=tmp_path / "run", **kw)


def import_vnfs(instance: Instance, tmp_path: Path, *, filler: int = 0, default: bool = True) -> Path:
    """Pack a small busybox tree with a kernel and import it; new nodes get it when ``default``.
    The tree has no device node: perceusd serves the image's bytes whatever they hold, and
    its tests need no root."""
    tree = make_tree(tmp_path / "tree", filler=filler, device=False)
    (tree / "root").mkdir(mode=0o700)
    os.chmod(tree / "root", 0o700)
    kernel = tmp_path / "vmlinuz-6.1.0-test"
    kernel.write_bytes(KERNEL)
    capsule = tmp_path / f"{VNFS}.vnfs"
    instance.ok(
        "capsule", "pack", str(tree), str(capsule), "--kernel", str(kernel), "--kernel-args", "quiet x=1"
    )
    instance.ok("vnfs", "import", str(capsule))
    if default:
        conf = instance.sysconfdir / "defaults.conf"
        conf.write_text(conf.read_text() + f"\nVnfs Name = {VNFS}\n")
    return tree


def add_script(instance: Instance, relpath: str, body: str, executable: bool = False) -> Path:
    path = instance.statedir / "nodescripts" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755 if executable else 0o644)
    return path


def mac(i: int) -> str:
    return f"52:54:00:{(i >> 16) & 255:02X}:{(i >> 8) & 255:02X}:{i & 255:02X}"


@dataclass
class Outcome:
    """Everything one node session saw."""

    assign: Assign | None = None
    wait: Wait | None = None
    error: Error | RemoteProtocolError | None = None
    script: bytes | None = None
    offer: ImageOffer | None = None
    data: dict = field(default_factory=dict)  # ObjectKind -> bytes

    @property
    def image(self) -> bytes:
        return self.data.get(ObjectKind.IMAGE, b"")

    @property
    def overlay(self) -> bytes:
        return self.data.get(ObjectKind.OVERLAY, b"")

    @property
    def kernel(self) -> bytes:
        return self.data.get(ObjectKind.KERNEL, b"")


class Node:
    """A simulated node: one connection, driven step by step or through :meth:`boot`."""

    def __init__(self, port: int, nodeid: str, state: str = "init", site_key: bytes | None = None) -> None:
        self.port, self.nodeid, self.state = port, nodeid, state
        self.conn = NodeConnection(site_key=site_key, require_master_auth=site_key is not None)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> "Node":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.writer is not None
        self.writer.close()

    async def send(self, message) -> None:
        assert self.writer is not None
        self.writer.write(self.conn.send(message))
        await self.writer.drain()

    async def send_unchecked(self, message) -> None:
        """Send a message the node-side rules would refuse (to test the master's checks)."""
        await self.raw(encode_message(message))

    async def raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def event(self):
        """The next event (RawBytes included); CLOSED when the master hung up."""
        assert self.reader is not None
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            data = await asyncio.wait_for(self.reader.read(1 << 20), STEP)
            self.conn.receive_data(data)

    async def closed_with_error(self) -> Error:
        """Read until the master closes; the ERROR it sent."""
        assert self.reader is not None
        data = b""
        while chunk := await asyncio.wait_for(self.reader.read(1 << 16), STEP):
            data += chunk
        frames = []
        while data:
            decoded = decode_frame(data)
            assert decoded is not None, data
            frame, size = decoded
            frames.append(decode_payload(frame.type, frame.payload))
            data = data[size:]
        assert frames and isinstance(frames[-1], Error), frames
        return frames[-1]

    async def fetch(self, kind: ObjectKind, offset: int = 0, length: int = 0) -> bytes:
        await self.send(ImageRequest(kind, offset, length))
        got = bytearray()
        header = await self.event()
        if header.length == 0:
            return b""
        while True:
            event = await self.event()
            assert isinstance(event, RawBytes), event
            got += event.data
            if len(got) == header.length:
                return bytes(got)

    async def boot(self, status: int = 0, fetch: bool = True, bye: bool = True) -> Outcome:
        """HELLO through BYE as stage one does it (without running the script: ``status`` is its result)."""
        out = Outcome()
        try:
            await self.send(self.conn.make_hello(self.nodeid, self.state))
            event = await self.event()
            if isinstance(event, AuthChallenge):
                await self.send(self.conn.auth_response())
                event = await self.event()
            if isinstance(event, Wait):
                out.wait = event
                return out
            if isinstance(event, Error):
                out.error = event
                return out
            assert isinstance(event, Assign), event
            out.assign = event
            event = None
            if Follows.SCRIPT in event_follows(out.assign):
                event = await self.event()
                assert isinstance(event, Script), event
                out.script = event.body
                await self.send(ScriptResult(status, b"ran\n"))
            if Follows.IMAGE in event_follows(out.assign) or status:
                event = await self.event()
            if isinstance(event, Error):
                out.error = event
                return out
            if isinstance(event, ImageOffer):
                out.offer = event
                if fetch:
                    for kind in ObjectKind:
                        out.data[kind] = await self.fetch(kind)
            if bye:
                await self.send(Bye("simulated"))
        except RemoteProtocolError as exc:
            out.error = exc
        return out


def event_follows(assign: Assign) -> Follows:
    return Follows(assign.follows)


async def boot(port: int, nodeid: str, state: str = "init", **kw) -> Outcome:
    async with Node(port, nodeid, state, kw.pop("site_key", None)) as node:
        return await node.boot(**kw)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def overlay_entries(overlay: bytes) -> dict[str, newc.Entry]:
    """The entries of an overlay: one zstd frame of one cpio archive."""
    import zstandard

    raw = zstandard.ZstdDecompressor().decompress(overlay)
    return {e.name.decode(): e for e in newc.iter_entries(io.BytesIO(raw))}


async def wait_until(check, what: str, timeout: float = STEP):
    """Poll ``check()`` (bounded) until it is truthy; its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def perceusd_process(instance: Instance, tmp_path: Path, *args: str) -> subprocess.Popen:
    """perceusd --foreground as a child process with the instance's environment."""
    env = dict(instance.env, PERCEUS_RUNDIR=str(tmp_path / "run"))
    return subprocess.Popen(
        [str(BIN / "perceusd"), "--foreground", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


__all__ = ["CLOSED"]
