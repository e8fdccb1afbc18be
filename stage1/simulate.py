"""A simulated node: the whole init sequence and the ready check-ins, harmless on the host.

No root: facts are generated, the image, overlay and kernel go to ``DIR/<MAC>/`` (or
nowhere with ``discard``), nodescripts run under /bin/sh with DESTDIR=``DIR/<MAC>/root``
and PERCEUS_PROC=``DIR/<MAC>/proc``. "Booting" unpacks the overlay into the root (``zstd
-dc`` and :func:`unpack_archive`), replacing what a previous boot left but not
what this boot's init script wrote (the DESTDIR archive comes last in a real initrd); the
image is not unpacked. Then it records ``boot.json``.
Hundreds of these run in one event loop (``perceus-sim``); :func:`simulate_node` never
raises for a node failure, it returns a :class:`NodeResult`.
"""

import asyncio
import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from perceus.common.atomicfile import atomic_write
from perceus.common.newc import NewcError
from perceus.common.unpack import Specials, extract
from perceus.stage1.cmdline import Master
from perceus.stage1.facts import Facts, simulated_facts
from perceus.stage1.fetch import DiscardSink, Download, FileSink, Sink, hash_executor
from perceus.stage1.protocol import ImageOffer, ObjectKind
from perceus.stage1.retry import NoMaster, RetryPolicy, Stats, Target, check_in_until_done
from perceus.stage1.scriptrun import DEFAULT_SCRIPT_TIMEOUT, ScriptEnv
from perceus.stage1.session import CONNECT_TIMEOUT, CheckIn, Outcome

__all__ = [
    "MAX_REPROVISIONS",
    "BootFailed",
    "NodeResult",
    "SimOptions",
    "simulate_node",
    "simulate_nodes",
    "unpack_archive",
    "unpack_overlay",
]

log = logging.getLogger("perceus.stage1")

MAX_REPROVISIONS = 10  # a script asking for reprovision every time must not loop forever
_FILES = {ObjectKind.IMAGE: "image", ObjectKind.OVERLAY: "overlay", ObjectKind.KERNEL: "kernel"}


@dataclass(frozen=True)
class SimOptions:
    """How to run simulated nodes (shared by all nodes of one run)."""

    masters: tuple[Master, ...]
    simdir: Path | None = None  # None: a temporary directory, removed afterwards
    discard: bool = False
    site_key: bytes | None = None
    ready_checkins: int = 1
    ready_interval: float = 0.0
    policy: RetryPolicy = RetryPolicy()
    script_timeout: float = DEFAULT_SCRIPT_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    io_timeout: float | None = None
    timeout: float | None = None  # seconds for one node's whole run
    # Hash on worker threads beside the receiving (None: when this process runs fewer nodes than
    # there are cores; more nodes than cores keep every core busy hashing in place, which is cheaper).
    hash_threads: bool | None = None


@dataclass
class NodeResult:
    """One simulated node's run."""

    mac: str
    ok: bool = False
    error: str = ""
    name: str = ""
    vnfs: str = ""
    bytes: int = 0
    checkins: list[float] = field(default_factory=list)  # latencies, seconds
    ready: int = 0  # ready check-ins completed
    reprovisions: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _node_dir_sinks(node_dir: Path, discard: bool):
    def sinks(kind: ObjectKind, offer: ImageOffer) -> Sink:
        if discard:
            return DiscardSink()
        path = node_dir / _FILES[kind]
        path.unlink(missing_ok=True)  # a new object: start from an empty file
        return FileSink(path, offer.size_of(kind))

    return sinks


class BootFailed(Exception):
    """The simulated node could not "boot" what it received (the overlay does not unpack)."""


def unpack_archive(src: BinaryIO, root: Path, keep: Callable[[os.stat_result], bool] | None = None) -> int:
    """One newc archive unpacked into a simulated node's root as the kernel unpacks an initrd onto one.

    Symlinks already in the root are followed when they stay inside it (``lib -> usr/lib``);
    device nodes, FIFOs and sockets are passed over (no privileges needed); owners are kept
    when running as root. ``keep(os.lstat(path))`` True leaves what is there. Returns the
    entries made; NewcError for a truncated, corrupt or unsafe archive.
    """
    return extract(src, root, keep=keep, follow_inside=True, specials=Specials.SKIP)


def unpack_overlay(overlay: Path, root: Path, since_ns: int | None = None) -> int:
    """Unpack an overlay (one zstd frame of one newc archive) into ``root``, as the kernel would.

    Decompresses with the ``zstd`` command (stage one imports no zstd module). The overlay
    replaces what a previous boot left; with ``since_ns``, files changed since then (this
    boot's init script's DESTDIR files, which a real initrd unpacks last) are kept instead.
    Returns the entries written; raises BootFailed with a one-line reason.
    """
    if overlay.stat().st_size == 0:
        return 0
    zstd = shutil.which("zstd")
    if zstd is None:
        raise BootFailed("cannot unpack the overlay: the zstd command is not installed")
    argv = [zstd, "-dc", "--", str(overlay)]
    pipe = subprocess.PIPE
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            keep = None if since_ns is None else (lambda st: st.st_ctime_ns >= since_ns)
            written = unpack_archive(proc.stdout, root, keep)
        except NewcError as exc:
            problem = _zstd_problem(proc)  # a zstd error truncates the stream: say why
            raise BootFailed(f"cannot unpack the overlay: {problem or exc}") from None
        problem = _zstd_problem(proc)
    if problem:
        raise BootFailed(f"cannot unpack the overlay: {problem}")
    return written


def _zstd_problem(proc: subprocess.Popen) -> str:
    """zstd's complaint (its last stderr line), or "" when it exited 0 or by a signal (SIGPIPE)."""
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # a zstd still writing gets EPIPE and ends
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.returncode <= 0:
        return ""
    last = err.splitlines()[-1] if err else f"exit status {proc.returncode}"
    return f"zstd: {last.removeprefix('zstd: ')}"


def _fs_clock_ns() -> int:
    """Now, on the clock file timestamps come from (the coarse one on Linux: never ahead of them)."""
    coarse = getattr(time, "CLOCK_REALTIME_COARSE", None)
    return time.clock_gettime_ns(coarse) if coarse is not None else time.time_ns() - 20_000_000


def _write_boot_record(node_dir: Path, facts: Facts, outcome: Outcome) -> None:
    offer, assign = outcome.offer, outcome.assign
    assert assign is not None
    record = {
        "nodeid": facts.nodeid,
        "name": assign.name,
        "vnfs": assign.vnfs,
        "image_sha256": offer.image_sha256 if offer else "",
        "overlay_sha256": offer.overlay_sha256 if offer else "",
        "kernel_sha256": offer.kernel_sha256 if offer else "",
        "kernel_args": offer.kernel_args if offer else "",
        "image_size": offer.image_size if offer else 0,
        "booted": int(time.time()),
    }
    atomic_write(node_dir / "boot.json", json.dumps(record, indent=2) + "\n")


class _Node:
    def __init__(self, opts: SimOptions, simdir: Path, mac: str | None, rng: random.Random) -> None:
        self.opts = opts
        self.rng = rng
        self.facts = simulated_facts(mac, rng)
        self.dir = simdir / self.facts.nodeid
        self.root = self.dir / "root"
        self.proc = self.dir / "proc"
        self.stats = Stats()
        self.result = NodeResult(self.facts.nodeid)
        self.targets = [Target(m) for m in opts.masters]
        self.env = ScriptEnv("simulate", str(self.root), str(self.proc))

    def _request(self, state: str, download: Download | None) -> CheckIn:
        o = self.opts
        return CheckIn(
            state=state,
            facts=self.facts,
            env=self.env,
            site_key=o.site_key,
            download=download,
            script_timeout=o.script_timeout,
            connect_timeout=o.connect_timeout,
            io_timeout=o.io_timeout,
            bye_reason="simulated",
        )

    async def _check_in(self, state: str, download: Download | None) -> Outcome:
        return await check_in_until_done(
            self.targets, self._request(state, download), self.opts.policy, stats=self.stats, rng=self.rng
        )

    async def _boot(self, outcome: Outcome, since_ns: int) -> None:
        if not self.opts.discard:
            overlay = self.dir / _FILES[ObjectKind.OVERLAY]
            written = await asyncio.to_thread(unpack_overlay, overlay, self.root, since_ns)
            log.debug("%s: unpacked %d overlay entries into %s", self.facts.nodeid, written, self.root)
        await asyncio.to_thread(_write_boot_record, self.dir, self.facts, outcome)

    async def run(self) -> None:
        for path in (self.dir, self.root, self.proc):
            path.mkdir(parents=True, exist_ok=True)
        while True:
            since_ns = _fs_clock_ns()  # files changed from now on are this boot's DESTDIR files
            lanes = None if self.opts.hash_threads is False else hash_executor()
            download = Download(_node_dir_sinks(self.dir, self.opts.discard), lanes)
            try:
                outcome = await self._check_in("init", download)
            finally:
                download.close()
            assert outcome.assign is not None
            self.result.name, self.result.vnfs = outcome.assign.name, outcome.assign.vnfs
            if outcome.offer is None:
                raise NoMaster("the master assigned no image to boot (no VNFS?)")
            if await self._after(outcome.request, "init"):
                continue
            await self._boot(outcome, since_ns)
            log.info("%s: booted %s as %s", self.facts.nodeid, outcome.assign.vnfs, outcome.assign.name)
            again = False
            for i in range(self.opts.ready_checkins):
                if i and self.opts.ready_interval > 0:
                    await asyncio.sleep(self.opts.ready_interval)
                outcome = await self._check_in("ready", None)
                self.result.ready += 1
                if await self._after(outcome.request, "ready"):
                    again = True
                    break
                if outcome.request == "halt":
                    break
            if not again:
                return

    async def _after(self, request: str, state: str) -> bool:
        """Act on a script's request word; True to run the init sequence again."""
        if request in ("reprovision", "reboot"):
            self.result.reprovisions += 1
            if self.result.reprovisions > MAX_REPROVISIONS:
                raise NoMaster(f"the {state} script asked to {request} more than {MAX_REPROVISIONS} times")
            log.info("%s: the %s script asks to %s: running init again", self.facts.nodeid, state, request)
            return True
        if request == "halt":
            log.info("%s: the %s script asks to halt", self.facts.nodeid, state)
        return False


async def simulate_node(
    opts: SimOptions, mac: str | None = None, *, rng: random.Random | None = None
) -> NodeResult:
    """Boot one simulated node to ready; the result says how it went (never raises for failures)."""
    rng = rng or random.Random()
    own_dir = opts.simdir is None
    simdir = Path(tempfile.mkdtemp(prefix="perceus-sim-")) if own_dir else opts.simdir
    assert simdir is not None
    node = _Node(opts, simdir, mac, rng)
    started = time.monotonic()
    try:
        async with asyncio.timeout(opts.timeout):
            await node.run()
        node.result.ok = True
    except TimeoutError:
        node.result.error = f"timed out after {opts.timeout:g} s"
        if node.stats.last_wait:
            node.result.error += f" (last answer: {node.stats.last_wait})"
    except (NoMaster, BootFailed) as exc:
        node.result.error = str(exc)
    except OSError as exc:
        node.result.error = f"local error: {exc}"
    finally:
        node.result.seconds = time.monotonic() - started
        node.result.checkins = node.stats.latencies
        node.result.bytes = node.stats.bytes
        if own_dir:
            shutil.rmtree(simdir, ignore_errors=True)
    return node.result


async def simulate_nodes(opts: SimOptions, count: int, *, macs: list[str] | None = None) -> list[NodeResult]:
    """Boot ``count`` simulated nodes concurrently in this event loop (random MACs unless ``macs``)."""
    own_dir = opts.simdir is None
    simdir = Path(tempfile.mkdtemp(prefix="perceus-sim-")) if own_dir else opts.simdir
    assert simdir is not None
    threads = opts.hash_threads if opts.hash_threads is not None else count < (os.cpu_count() or 1)
    shared = replace(opts, simdir=simdir, hash_threads=threads)
    try:
        chosen = list(macs or [])[:count]
        chosen += [None] * (count - len(chosen))  # type: ignore[list-item]
        return list(await asyncio.gather(*(simulate_node(shared, mac) for mac in chosen)))
    finally:
        if own_dir:
            shutil.rmtree(simdir, ignore_errors=True)
