"""The node database, in one thread with its own connection, for every check-in.

:class:`CheckinWriter` finds the node (adding an unknown MAC at ``init`` through
:func:`perceus.server.registry.add_nodes`, whose IMMEDIATE transaction keeps name allocation
atomic even between two masters) and records every check-in. Jobs are queued; each pass of
the thread takes everything pending, answers lookups at once and commits all the check-in
records in one transaction, so hundreds of simultaneous nodes cost a handful of commits.
"""

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from perceus.server.config import Settings
from perceus.server.db import Database, DatabaseBusy, Node, open_database
from perceus.server.errors import PerceusError
from perceus.server.registry import NewNode, add_nodes

log = logging.getLogger("perceusd")

LOCK_RETRIES = 6


@dataclass
class _Job:
    mac: str
    state: str
    ipaddr: str
    when: int
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


_STOP = object()


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

    def _process(self, db: Database, batch: list[_Job]) -> None:
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

    def _record(self, db: Database, records: list[tuple[_Job, Node]]) -> None:
        with db.transaction():
            for job, node in records:
                db.record_checkin(node.nodeid, status=job.state, ipaddr=job.ipaddr, when=job.when)
        self.commits += 1

    def _add(self, db: Database, macs: list[str]) -> dict[str, Node]:
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
            except DatabaseBusy:  # another writer (perceus node import, a second master) holds it
                if attempt == LOCK_RETRIES - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")
