"""Downloading the image, overlay and kernel with verification as the bytes arrive.

Every chunk of the image is hashed as it streams in and checked against the offer's chunk
table: the image's integrity rests on that table (the sum of the chunk sizes is the image
size, checked by the protocol), so the image is hashed once, chunk by chunk, never a second
time as a whole. The overlay and the kernel have no chunk table: each is one chunk, its
sha256 the object's. Progress survives a lost connection: a new session resumes from the
last verified chunk boundary when the new offer describes the same object (same size,
sha256 and chunk table). Bytes go to a :class:`Sink`: a file (at any base offset, so stage
one can lay image and overlay out as one initrd) or nowhere (benchmarks).

Hashing is the node's main cost, and a chunk table lets it run beside the receiving: with
an executor (:func:`hash_executor`), each object's bytes are hashed and written in order
on a worker thread (hashlib and pwrite release the GIL), so the event loop only moves
bytes and one node uses two cores where a whole-file checksum would be stuck on one. A
lane pauses the socket while more than :data:`LANE_HIGH` bytes wait to be hashed.
"""

import asyncio
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from perceus.stage1.protocol import ChunkEntry, ImageOffer, ObjectKind

__all__ = [
    "KINDS",
    "ChecksumError",
    "DiscardSink",
    "Download",
    "FileSink",
    "ObjectFetch",
    "Sink",
    "SinkFactory",
    "hash_executor",
]

KINDS = (ObjectKind.IMAGE, ObjectKind.OVERLAY, ObjectKind.KERNEL)
MAX_CHECKSUM_FAILURES = 3  # per object and session, then the session fails
LANE_HIGH = 4 << 20  # bytes waiting to be hashed before the socket is paused
LANE_LOW = 1 << 20  # ... and resumed

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def hash_executor() -> ThreadPoolExecutor:
    """The process's hashing threads, one per core (made on first use)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="perceus-hash")
        return _executor


class ChecksumError(Exception):
    """Received bytes do not match the offer, too often to go on in this session."""


class Sink(Protocol):
    """Where the verified object's bytes go."""

    def write(self, offset: int, data: memoryview) -> None: ...

    def close(self) -> None: ...


class DiscardSink:
    """Keeps nothing: the bytes are verified and dropped (``--discard``)."""

    def write(self, offset: int, data: memoryview) -> None:
        pass

    def close(self) -> None:
        pass


class FileSink:
    """Writes the object at ``base`` + offset in ``path`` (created; resized to base + size)."""

    def __init__(self, path: Path, size: int, base: int = 0) -> None:
        self.path = path
        self.base = base
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(self.fd).st_size < base + size:
                os.ftruncate(self.fd, base + size)
        except OSError:
            os.close(self.fd)
            raise

    def write(self, offset: int, data: memoryview) -> None:
        pos = self.base + offset
        while data:
            n = os.pwrite(self.fd, data, pos)
            data = data[n:]
            pos += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


SinkFactory = Callable[[ObjectKind, ImageOffer], Sink]


def discard_sinks(kind: ObjectKind, offer: ImageOffer) -> Sink:
    """A SinkFactory that keeps no bytes."""
    return DiscardSink()


def _chunks_of(offer: ImageOffer, kind: ObjectKind) -> tuple[ChunkEntry, ...]:
    if kind is ObjectKind.IMAGE:
        return offer.chunks
    size = offer.size_of(kind)
    return (ChunkEntry(0, size, size, offer.sha256_of(kind)),) if size else ()


def _chunk_at(chunks: tuple[ChunkEntry, ...], offset: int) -> int:
    """The index of the chunk starting at ``offset`` (len(chunks) at the end)."""
    return next((i for i, c in enumerate(chunks) if c.offset == offset), len(chunks))


class ObjectFetch:
    """One object's progress: bytes verified so far (a chunk boundary) and the running hashes."""

    def __init__(
        self, kind: ObjectKind, offer: ImageOffer, sink: Sink, lanes: Executor | None = None
    ) -> None:
        self.kind = kind
        self.size = offer.size_of(kind)
        self.sha256 = offer.sha256_of(kind)
        self.chunks = _chunks_of(offer, kind)
        self.sink = sink
        self.good = 0  # bytes verified: the end of chunk ``idx - 1``
        self.failures = 0  # checksum failures in the current session
        self.last_error = ""
        self._idx = 0
        self._lanes = lanes
        self._verifier: _Verifier | None = None
        self._reset_transfer()

    def matches(self, offer: ImageOffer) -> bool:
        """Whether ``offer`` describes the same object (so progress can be kept)."""
        return (
            offer.size_of(self.kind) == self.size
            and offer.sha256_of(self.kind) == self.sha256
            and _chunks_of(offer, self.kind) == self.chunks
        )

    @property
    def complete(self) -> bool:
        return self.good == self.size

    @property
    def threaded(self) -> bool:
        """Whether bytes are hashed on worker threads (so fed buffers must stay until released)."""
        return self._lanes is not None

    def _reset_transfer(self) -> None:
        self._pos = self.good
        self._chunk = hashlib.sha256()
        self._skipping = False

    def begin(self, flow: "_Flow | None" = None) -> int:
        """Start a transfer; returns the offset to request from (the last good chunk boundary).

        ``flow`` (the transport) is paused while the hashing threads lag behind the socket."""
        self._reset_transfer()
        if self._lanes is not None:
            self._idx = _chunk_at(self.chunks, self.good)
            self._verifier = _Verifier(self._lanes, self, flow)
        return self.good

    async def quiesce(self) -> None:
        """Wait for bytes of an earlier (perhaps broken) transfer still being hashed, keeping the
        chunks it verified; call before begin."""
        verifier = self._verifier
        if verifier is not None:
            await verifier.idle()
            self.good, _ = verifier.verified_prefix(self.good)

    def feed(self, data: bytes | memoryview, release: Callable[[], None] | None = None) -> None:
        """Bytes of the current transfer, in order; verifies each chunk as its last byte arrives
        (on the hashing threads when there are some: then call :meth:`settle` before reading results).

        ``release`` is called once the bytes are no longer needed (their buffer can be reused)."""
        if self._verifier is not None:
            self._verifier.feed(data, release)
            return
        try:
            self._consume(data)
        finally:
            if release is not None:
                release()

    async def settle(self) -> bool:
        """Wait until every byte fed is verified; then as :meth:`end` (raises ChecksumError)."""
        verifier = self._verifier
        if verifier is not None:
            await verifier.idle()
            self.good, bad = verifier.verified_prefix(self.good)
            if verifier.error is not None:
                raise verifier.error
            if bad is not None:
                chunk = self.chunks[bad]
                self._bad(f"chunk {bad} ({chunk.csize} bytes at {chunk.offset}) fails its sha256")
        return self.end()

    def _consume(self, data: bytes | memoryview) -> None:
        n = len(data)
        if self._skipping or not n:
            self._pos += n
            return
        mv = memoryview(data)
        if self._pos + n > self.size:
            raise ChecksumError(f"{self.kind.name}: more bytes than the offer's {self.size}")
        self.sink.write(self._pos, mv)
        start = 0
        chunk_hash = self._chunk
        while start < n:
            chunk = self.chunks[self._idx]
            end = chunk.offset + chunk.csize
            take = min(n - start, end - self._pos)
            piece = mv[start : start + take] if take != n else mv
            chunk_hash.update(piece)
            self._pos += take
            start += take
            if self._pos == end:
                if chunk_hash.hexdigest() != chunk.sha256:
                    self._bad(f"chunk {self._idx} ({chunk.csize} bytes at {chunk.offset}) fails its sha256")
                    self._pos += n - start
                    return
                self._idx += 1
                self.good = end
                self._chunk = chunk_hash = hashlib.sha256()

    def _bad(self, message: str) -> None:
        self.failures += 1
        self.last_error = f"{self.kind.name.lower()}: {message}"
        self._skipping = True
        if self.failures >= MAX_CHECKSUM_FAILURES:
            raise ChecksumError(f"{self.last_error} ({self.failures} times)")

    def end(self) -> bool:
        """The transfer's raw bytes are all in (and verified); True if it left a chunk to fetch again."""
        return self._skipping


class _Flow(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class _Verifier:
    """One transfer's chunks verified on worker threads.

    The event loop cuts the bytes at chunk boundaries and queues each piece on its chunk's
    lane. A lane is drained by one job at a time (hash, then write to the sink, in order);
    different chunks' lanes run on different threads at once. ``flow`` is paused while more
    than LANE_HIGH bytes wait and resumed below LANE_LOW, which bounds memory per node.
    """

    def __init__(self, executor: Executor, fetch: "ObjectFetch", flow: _Flow | None) -> None:
        self.executor = executor
        self.chunks = fetch.chunks
        self.sink = fetch.sink
        self.size = fetch.size
        self.kind = fetch.kind
        self.flow = flow
        self.loop = asyncio.get_running_loop()
        self.lock = threading.Lock()
        self.backlog = 0  # bytes queued, not yet hashed
        self.running = 0  # drain jobs submitted or running
        self.paused = False
        self.waiter: asyncio.Future | None = None
        self.verdicts: dict[int, bool] = {}
        self.error: ChecksumError | None = None
        self.pos = fetch.good
        self.idx = fetch._idx
        self.lane: _ChunkLane | None = None

    def feed(self, data: bytes | memoryview, release: Callable[[], None] | None) -> None:
        """Loop thread: queue ``data`` on the lanes of the chunks it belongs to."""
        n = len(data)
        if self.error is not None or not n or self.pos + n > self.size:
            if n and self.error is None:
                self.error = ChecksumError(f"{self.kind.name}: more bytes than the offer's {self.size}")
            if release is not None:
                release()
            return
        mv = memoryview(data)
        holder = _Holder(release)
        start = 0
        while start < n:
            chunk = self.chunks[self.idx]
            if self.lane is None:
                self.lane = _ChunkLane(self, self.idx, chunk.sha256)
            end = chunk.offset + chunk.csize
            take = min(n - start, end - self.pos)
            holder.refs += 1
            self.lane.put(self.pos, mv[start : start + take] if take != n else mv, holder)
            self.pos += take
            start += take
            if self.pos == end:
                self.lane.close()
                self.lane = None
                self.idx += 1
        holder.drop()  # the reference feed held while it cut the pieces

    def queued(self, count: int, submit: "_ChunkLane | None") -> None:
        with self.lock:
            self.backlog += count
            if submit is not None:
                self.running += 1
            pause = self.backlog > LANE_HIGH and self.flow is not None and not self.paused
            if pause:
                self.paused = True
        if pause:
            self.flow.pause_reading()  # type: ignore[union-attr]
        if submit is not None:
            self.executor.submit(submit.drain)

    def hashed(self, count: int) -> None:
        """Worker thread: ``count`` bytes are done."""
        with self.lock:
            self.backlog -= count
            resume = self.paused and self.backlog < LANE_LOW
            if resume:
                self.paused = False
        if resume:
            self._call(self._resume)

    def drained(self, idx: int | None, verdict: bool) -> None:
        """Worker thread: a drain job ended (with a chunk's verdict when ``idx`` is set)."""
        with self.lock:
            if idx is not None:
                self.verdicts[idx] = verdict
            self.running -= 1
            waiter = self.waiter if self.running == 0 else None
            if waiter is not None:
                self.waiter = None
        if waiter is not None:
            self._call(lambda: waiter.done() or waiter.set_result(None))

    def _call(self, callback: Callable[[], object]) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(callback)

    def _resume(self) -> None:
        if self.flow is not None:
            self.flow.resume_reading()

    async def idle(self) -> None:
        """Return once every byte fed so far has been hashed."""
        with self.lock:
            if self.running == 0:
                return
            if self.waiter is None:
                self.waiter = self.loop.create_future()
            waiter = self.waiter
        await waiter

    def verified_prefix(self, good: int) -> tuple[int, int | None]:
        """(end of the verified chunks from ``good`` on, the first failed chunk or None)."""
        idx = _chunk_at(self.chunks, good)
        while self.verdicts.get(idx):
            good = self.chunks[idx].offset + self.chunks[idx].csize
            idx += 1
        return good, idx if self.verdicts.get(idx) is False else None


class _Holder:
    """Counts the queued pieces of one received buffer; the last one done releases it."""

    __slots__ = ("lock", "refs", "release")

    def __init__(self, release: Callable[[], None] | None) -> None:
        self.lock = threading.Lock()
        self.refs = 1
        self.release = release

    def drop(self) -> None:
        with self.lock:
            self.refs -= 1
            last = self.refs == 0
        if last and self.release is not None:
            self.release()


class _ChunkLane:
    """One chunk's bytes, hashed and written in order by one drain job at a time."""

    def __init__(self, verifier: _Verifier, idx: int, sha256: str) -> None:
        self.verifier = verifier
        self.idx = idx
        self.sha256 = sha256
        self.digest = hashlib.sha256()
        self.lock = threading.Lock()
        self.pieces: deque[tuple[int, memoryview, _Holder]] = deque()
        self.active = False
        self.closed = False

    def put(self, offset: int, data: memoryview, holder: _Holder) -> None:
        with self.lock:
            self.pieces.append((offset, data, holder))
            submit = not self.active
            self.active = True
        self.verifier.queued(len(data), self if submit else None)

    def close(self) -> None:
        """The chunk's last byte is queued: the drain that empties the lane gives the verdict."""
        with self.lock:
            self.closed = True
            submit = not self.active
            self.active = True
        if submit:
            self.verifier.queued(0, self)

    def drain(self) -> None:
        sink = self.verifier.sink
        while True:
            with self.lock:
                if not self.pieces:
                    self.active = False
                    done = self.closed
                    break
                offset, data, holder = self.pieces.popleft()
            self.digest.update(data)
            try:
                sink.write(offset, data)
            except OSError as exc:
                self.verifier.error = ChecksumError(f"{self.verifier.kind.name}: cannot store: {exc}")
            size = len(data)
            del data
            holder.drop()
            self.verifier.hashed(size)
        verdict = done and self.digest.hexdigest() == self.sha256
        self.verifier.drained(self.idx if done else None, verdict)


@dataclass
class Download:
    """The three objects of one provisioning, kept across sessions for resuming."""

    sinks: SinkFactory = discard_sinks
    lanes: Executor | None = None  # hash on these threads (hash_executor()), else inline
    objects: dict[ObjectKind, ObjectFetch] | None = None
    offer: ImageOffer | None = None

    def accept(self, offer: ImageOffer) -> list[str]:
        """Take a (new session's) offer: keep progress of objects it still describes; returns notes."""
        notes: list[str] = []
        old = self.objects or {}
        objects: dict[ObjectKind, ObjectFetch] = {}
        for kind in KINDS:
            prev = old.get(kind)
            if prev is not None and prev.matches(offer):
                prev.failures = 0
                objects[kind] = prev
                if prev.good:
                    notes.append(f"resuming the {kind.name.lower()} at byte {prev.good} of {prev.size}")
                continue
            if prev is not None:
                prev.sink.close()
                if prev.good:
                    notes.append(f"the {kind.name.lower()} changed on the master: fetching it from the start")
            objects[kind] = ObjectFetch(kind, offer, self.sinks(kind, offer), self.lanes)
        self.objects, self.offer = objects, offer
        return notes

    @property
    def verified_bytes(self) -> int:
        return sum(o.good for o in (self.objects or {}).values())

    @property
    def complete(self) -> bool:
        return self.objects is not None and all(o.complete for o in self.objects.values())

    def close(self) -> None:
        for o in (self.objects or {}).values():
            o.sink.close()
