"""What perceusd decides at each check-in, and the slow work behind it, kept off the event loop.

* :class:`CheckinWriter`: the one thread that talks to the node database. It finds the
  node (adding an unknown MAC at ``init`` through :func:`perceus.server.registry.add_nodes`,
  whose IMMEDIATE transaction keeps name allocation atomic even between two masters) and
  records every check-in. Jobs are queued; each pass of the thread takes everything
  pending, answers lookups at once and commits all the check-in records in one
  transaction, so hundreds of simultaneous nodes cost a handful of commits.
* :func:`decide`: WAIT, ASSIGN (with or without an image) or REFUSE, from the node record.
* :func:`open_offer`: the VNFS files a session will stream, opened once so a VNFS replaced
  mid-transfer keeps serving the bytes that were offered, checked against the manifest.
* :class:`Memo`: expensive facts (file sha256s, an image's directory set) computed once
  per file version, in a thread, however many sessions ask at the same moment;
  :func:`warm` fills them for every imported VNFS when perceusd starts or reloads.
"""

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

from perceus.imagefmt import image
from perceus.server import modules, overlay, vnfsconfigure
from perceus.server import vnfs as vnfs_mod
from perceus.server.config import Settings
from perceus.server.db import Node, open_database
from perceus.server.errors import PerceusError
from perceus.server.paths import Paths
from perceus.server.registry import NewNode, add_nodes
from perceus.stage1 import protocol

log = logging.getLogger("perceusd")

LOCK_RETRIES = 6
HASH_PIECE = 1 << 20

# --------------------------------------------------------------------------- decisions


class Action(Enum):
    WAIT = "wait"  # come back in `node retry` seconds
    ASSIGN = "assign"  # name, VNFS and (at init) the image
    REFUSE = "refuse"  # ERROR(REFUSED): not a node of ours


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    vnfs: vnfs_mod.Vnfs | None = None  # set when an image follows
    vnfs_name: str = ""  # what ASSIGN names (empty if the node's VNFS cannot be named on the wire)


def _wire_vnfs(name: str) -> str:
    return name if name and protocol._VNFS_RE.fullmatch(name) and ".." not in name else ""


def decide(node: Node | None, state: str, store: vnfs_mod.VnfsStore) -> Decision:
    """What a node checking in at ``state`` gets.

    A disabled node waits at any state. At ``init`` the node also needs an imported VNFS
    (else it waits: "no VNFS assigned" / "VNFS 'X' is not imported") and gets its image;
    at other states (ready, halt, reboot...) it gets its name and that state's script only.
    """
    if node is None:
        return Decision(Action.REFUSE, "unknown node: check in with state init first")
    if not node.enabled:
        return Decision(Action.WAIT, "node is disabled")
    name = _wire_vnfs(node.vnfs)
    if state != "init":
        return Decision(Action.ASSIGN, vnfs_name=name)
    if not node.vnfs:
        return Decision(Action.WAIT, "no VNFS assigned")
    if not name or not store.exists(name):
        return Decision(Action.WAIT, f"VNFS '{node.vnfs}' is not imported")
    return Decision(Action.ASSIGN, vnfs=vnfs_mod.Vnfs(name, store.root / name), vnfs_name=name)


def secret_filter(paths: Paths, site_key: bytes | None, authenticated: bool) -> Callable[[Path], bool] | None:
    """The nodescript ``skip`` for this node: secret module parts are withheld when the master
    has a site key and the node did not prove it."""
    if site_key is None or authenticated:
        return None
    found = _SECRET_FILTERS.get(paths)
    if found is None:
        found = _SECRET_FILTERS[paths] = modules.secret_filter(paths)
    return found


_SECRET_FILTERS: dict[Paths, Callable[[Path], bool]] = {}  # one per instance: it caches module.json


# --------------------------------------------------------------------------- memo


class Memo:
    """An LRU of results computed in a thread, one computation per key however many wait."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._done: OrderedDict[Hashable, Any] = OrderedDict()
        self._running: dict[Hashable, asyncio.Future] = {}

    async def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key in self._done:
            self._done.move_to_end(key)
            return self._done[key]
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(asyncio.to_thread(compute))
            self._running[key] = running
            running.add_done_callback(lambda fut, key=key: self._finish(key, fut))
        return await asyncio.shield(running)

    def _finish(self, key: Hashable, fut: asyncio.Future) -> None:
        self._running.pop(key, None)
        if not fut.cancelled() and fut.exception() is None:
            self._done[key] = fut.result()
            while len(self._done) > self.size:
                self._done.popitem(last=False)


def file_version(info: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies one version of a file's content for the caches."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def fd_sha256(fd: int, size: int) -> str:
    """sha256 of the first ``size`` bytes of an open file, read with pread (no shared offset)."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        piece = os.pread(fd, min(HASH_PIECE, size - offset), offset)
        if not piece:
            raise PerceusError("file shrank while it was hashed", f"/proc/self/fd/{fd}")
        digest.update(piece)
        offset += len(piece)
    return digest.hexdigest()


# --------------------------------------------------------------------------- offers


@dataclass
class OpenVnfs:
    """The files one session streams, open from offer to close, and what the offer says of them."""

    vnfs: vnfs_mod.Vnfs
    image: BinaryIO
    image_size: int
    image_sha256: str
    chunks: list[image.Chunk]
    kernel: BinaryIO | None
    kernel_size: int
    kernel_sha256: str
    kernel_args: str
    image_version: tuple[int, int, int, int] = (0, 0, 0, 0)

    def close(self) -> None:
        self.image.close()
        if self.kernel is not None:
            self.kernel.close()


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


async def open_offer(v: vnfs_mod.Vnfs, hashes: Memo) -> OpenVnfs:
    """Open the VNFS's image and kernel and check the image against its manifest.

    The image is opened before the manifest is read and its sha256 (cached per file
    version) must match the manifest's: a VNFS being replaced renames the image first and
    the manifest last, so a mismatch means "caught in between" and is tried again.
    """
    for attempt in range(3):
        opened = await asyncio.to_thread(_open_files, v)
        try:
            image_sha = await hashes.get(
                ("sha256", opened.image_version), lambda o=opened: fd_sha256(o.image.fileno(), o.image_size)
            )
            if image_sha == opened.image_sha256:
                if opened.kernel is not None:
                    kinfo = os.fstat(opened.kernel.fileno())
                    opened.kernel_sha256 = await hashes.get(
                        ("sha256", file_version(kinfo)),
                        lambda o=opened: fd_sha256(o.kernel.fileno(), o.kernel_size),
                    )
                return opened
        except BaseException:
            opened.close()
            raise
        opened.close()
        await asyncio.sleep(0.05 * (attempt + 1))
    raise PerceusError("the VNFS image does not match its manifest (being replaced?)", str(v.image_path))


def _open_files(v: vnfs_mod.Vnfs) -> OpenVnfs:
    where = str(v.path)
    try:
        img = open(v.image_path, "rb")  # noqa: SIM115 - lives as long as the session
    except OSError as exc:
        raise PerceusError(f"cannot open the VNFS image: {exc.strerror}", str(v.image_path)) from exc
    try:
        info = os.fstat(img.fileno())
        member = vnfs_mod.image_member(v)
        chunks = vnfs_mod.image_chunks(v)
        size, sha = member.get("size"), member.get("sha256")
        if not isinstance(size, int) or not isinstance(sha, str) or len(sha) != 64:
            raise PerceusError("the VNFS manifest's image entry has no size or sha256", str(v.manifest_path))
        if sum(c.csize for c in chunks) != size or info.st_size < size:
            raise PerceusError("the VNFS image does not match its chunk table", where)
        kernel, ksize = _open_kernel(v.path / "kernel")
        args = _kernel_args(v)
    except BaseException:
        img.close()
        raise
    return OpenVnfs(v, img, size, sha, chunks, kernel, ksize, EMPTY_SHA256, args, file_version(info))


def _open_kernel(path: Path) -> tuple[BinaryIO | None, int]:
    try:
        kernel = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return None, 0  # a VNFS packed --no-kernel: offered as empty
    except OSError as exc:
        raise PerceusError(f"cannot open the VNFS kernel: {exc.strerror}", str(path)) from exc
    info = os.fstat(kernel.fileno())
    if not stat.S_ISREG(info.st_mode):
        kernel.close()
        raise PerceusError("the VNFS kernel is not a regular file", str(path))
    return kernel, info.st_size


def _kernel_args(v: vnfs_mod.Vnfs) -> str:
    config = v.path / "config"
    if not config.exists():
        return ""
    args = " ".join(vnfsconfigure.read_config(config).get("KERNEL_ARGS", "").split())
    if len(args.encode()) > protocol.MAX_KERNEL_ARGS:
        raise PerceusError(f"KERNEL_ARGS is longer than {protocol.MAX_KERNEL_ARGS} bytes", str(config))
    return args


async def image_directories(opened: OpenVnfs, dirs: Memo) -> frozenset[str]:
    """The directories of the offered image (what the overlay must not emit), memoised."""
    fd = opened.image.fileno()
    return await dirs.get(
        ("dirs", str(opened.vnfs.path), opened.image_sha256),
        lambda: overlay.image_directories(Path(f"/proc/self/fd/{fd}"), opened.chunks),
    )


async def warm(store: vnfs_mod.VnfsStore, hashes: Memo, dirs: Memo) -> int:
    """Hash and list every imported VNFS's image into the memos, one after the other, so the
    first nodes after start-up (or SIGHUP) do not pay for it; a node arriving meanwhile
    waits on the same computation. Returns how many VNFS were warmed; one that cannot be
    read is logged and skipped (its nodes will get the error)."""
    warmed = 0
    try:
        names = await asyncio.to_thread(store.names)
    except OSError as exc:
        log.warning("cannot list the VNFS to warm the caches: %s", exc)
        return 0
    for name in names:
        v = vnfs_mod.Vnfs(name, store.root / name)
        try:
            opened = await open_offer(v, hashes)
            try:
                await image_directories(opened, dirs)
            finally:
                opened.close()
        except (PerceusError, OSError, ValueError) as exc:
            log.warning("VNFS %s: cannot prepare its image: %s", name, exc)
            continue
        warmed += 1
    return warmed


def chunk_entries(chunks: list[image.Chunk]) -> tuple[protocol.ChunkEntry, ...]:
    return tuple(protocol.ChunkEntry(**c.as_dict()) for c in chunks)


# --------------------------------------------------------------------------- the database thread


@dataclass
class _Job:
    mac: str
    state: str
    ipaddr: str
    when: int
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


_STOP = object()


def _locked(exc: BaseException) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class CheckinWriter:
    """The node database, in one thread with its own connection; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings  # replaced on SIGHUP (defaults.conf for new nodes)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.commits = 0
        self.added = 0

    def start(self) -> None:
        """Open the database (errors raise here, at start-up) and start the thread."""
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="perceusd-db", daemon=True)
        self._thread.start()
        ready.result()

    async def checkin(self, mac: str, state: str, ipaddr: str, when: int | None = None) -> Node | None:
        """The node checking in (added if unknown at init), its check-in recorded; None if unknown."""
        job = _Job(mac, state, ipaddr, int(time.time()) if when is None else when)
        self._queue.put(job)
        return await asyncio.wrap_future(job.future)

    async def stop(self) -> None:
        """Commit what is pending and end the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def _run(self, ready: concurrent.futures.Future) -> None:
        try:
            db = open_database(self.settings)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            while True:
                job = self._queue.get()
                if job is _STOP:
                    return
                batch, stop = [job], False
                while len(batch) < 8192:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop = True
                        break
                    batch.append(more)
                self._process(db, batch)
                if stop:
                    return
        finally:
            db.close()

    def _process(self, db, batch: list[_Job]) -> None:
        try:
            records: list[tuple[_Job, Node]] = []
            fresh: dict[str, list[_Job]] = {}
            for job in batch:
                node = self._retry(lambda job=job: db.node(job.mac))
                if node is not None:
                    records.append((job, node))
                    job.future.set_result(node)
                elif job.state == "init":
                    fresh.setdefault(job.mac, []).append(job)
                else:
                    job.future.set_result(None)
            if fresh:
                for mac, node in self._add(db, list(fresh)).items():
                    for job in fresh[mac]:
                        records.append((job, node))
                        job.future.set_result(node)
            if records:
                self._retry(lambda: self._record(db, records))
        except BaseException as exc:  # noqa: BLE001 - a database failure fails these check-ins only
            log.error("node database: %s", exc)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(PerceusError(f"node database: {exc}"))

    def _record(self, db, records: list[tuple[_Job, Node]]) -> None:
        with db.transaction():
            for job, node in records:
                db.record_checkin(node.nodeid, status=job.state, ipaddr=job.ipaddr, when=job.when)
        self.commits += 1

    def _add(self, db, macs: list[str]) -> dict[str, Node]:
        """Add unknown MACs in one transaction; if another process added one meanwhile, one by one."""
        try:
            added = self._retry(
                lambda: add_nodes(db, self.settings, [NewNode(m, None, "perceusd") for m in macs])
            )
            self.added += len(added)
            return {n.nodeid: n for n in added}
        except PerceusError:
            if len(macs) == 1:
                node = db.node(macs[0])
                if node is None:
                    raise
                return {node.nodeid: node}
        result = {}
        for mac in macs:
            result.update(self._add(db, [mac]))
        return result

    @staticmethod
    def _retry(work: Callable[[], Any]) -> Any:
        for attempt in range(LOCK_RETRIES):
            try:
                return work()
            except (PerceusError, sqlite3.OperationalError) as exc:
                if not _locked(exc) or attempt == LOCK_RETRIES - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")
