"""Downloading the image, overlay and kernel with verification as the bytes arrive.

Every chunk of the image is hashed as it streams in and checked against the offer's chunk
table; each object's sha256 is checked as a whole. The overlay and the kernel have no chunk
table: each is one chunk, its sha256 the object's. Progress survives a lost connection: a new
session resumes from the last verified chunk boundary when the new offer describes the same
object (same size and sha256). Bytes go to a :class:`Sink`: a file (at any base offset, so
stage one can lay image and overlay out as one initrd) or nowhere (benchmarks).
"""

import hashlib
import os
from collections.abc import Callable
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
]

KINDS = (ObjectKind.IMAGE, ObjectKind.OVERLAY, ObjectKind.KERNEL)
MAX_CHECKSUM_FAILURES = 3  # per object and session, then the session fails


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


class ObjectFetch:
    """One object's progress: bytes verified so far (a chunk boundary) and the running hashes."""

    def __init__(self, kind: ObjectKind, offer: ImageOffer, sink: Sink) -> None:
        self.kind = kind
        self.size = offer.size_of(kind)
        self.sha256 = offer.sha256_of(kind)
        self.chunks = _chunks_of(offer, kind)
        self.sink = sink
        self.good = 0  # bytes verified: the end of chunk ``idx - 1``
        self.received = 0  # every byte that arrived, good or not
        self.failures = 0  # checksum failures in the current session
        self.last_error = ""
        # Whole-object hash: only worth a second pass when there is more than one chunk.
        self._whole_needed = len(self.chunks) > 1
        self._idx = 0
        self._whole_good = hashlib.sha256()
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

    def _reset_transfer(self) -> None:
        self._pos = self.good
        self._chunk = hashlib.sha256()
        self._whole = self._whole_good.copy() if self._whole_needed else None
        self._skipping = False

    def begin(self) -> int:
        """Start a transfer; returns the offset to request from (the last good chunk boundary)."""
        self._reset_transfer()
        return self.good

    def feed(self, data: bytes) -> None:
        """Bytes of the current transfer, in order; verifies each chunk as its last byte arrives."""
        n = len(data)
        self.received += n
        if self._skipping or not n:
            self._pos += n
            return
        mv = memoryview(data)
        if self._pos + n > self.size:
            raise ChecksumError(f"{self.kind.name}: more bytes than the offer's {self.size}")
        self.sink.write(self._pos, mv)
        start = 0
        chunk_hash, whole = self._chunk, self._whole
        while start < n:
            chunk = self.chunks[self._idx]
            end = chunk.offset + chunk.csize
            take = min(n - start, end - self._pos)
            piece = mv[start : start + take] if take != n else mv
            chunk_hash.update(piece)
            if whole is not None:
                whole.update(piece)
            self._pos += take
            start += take
            if self._pos == end:
                if chunk_hash.hexdigest() != chunk.sha256:
                    self._bad(f"chunk {self._idx} ({chunk.csize} bytes at {chunk.offset}) fails its sha256")
                    self._pos += n - start
                    return
                self._chunk_done(end)
                chunk_hash, whole = self._chunk, self._whole

    def _chunk_done(self, end: int) -> None:
        self._idx += 1
        self.good = end
        self._chunk = hashlib.sha256()
        if self._whole is not None:
            self._whole_good = self._whole.copy()
        if end == self.size and self._whole is not None and self._whole.hexdigest() != self.sha256:
            # Every chunk matched its table entry, but the table does not add up to the object.
            self.good, self._idx, self._whole_good = 0, 0, hashlib.sha256()
            self._bad(f"the whole {self.kind.name.lower()} fails its sha256 {self.sha256[:16]}...")

    def _bad(self, message: str) -> None:
        self.failures += 1
        self.last_error = f"{self.kind.name.lower()}: {message}"
        self._skipping = True
        if self.failures >= MAX_CHECKSUM_FAILURES:
            raise ChecksumError(f"{self.last_error} ({self.failures} times)")

    def end(self) -> bool:
        """The transfer's raw bytes are all in; True if it left a chunk to fetch again."""
        return self._skipping


@dataclass
class Download:
    """The three objects of one provisioning, kept across sessions for resuming."""

    sinks: SinkFactory = discard_sinks
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
            objects[kind] = ObjectFetch(kind, offer, self.sinks(kind, offer))
        self.objects, self.offer = objects, offer
        return notes

    @property
    def verified_bytes(self) -> int:
        return sum(o.good for o in (self.objects or {}).values())

    @property
    def received_bytes(self) -> int:
        return sum(o.received for o in (self.objects or {}).values())

    @property
    def complete(self) -> bool:
        return self.objects is not None and all(o.complete for o in self.objects.values())

    def close(self) -> None:
        for o in (self.objects or {}).values():
            o.sink.close()
