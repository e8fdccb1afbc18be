"""The retry policy: every master (and interface) in turn, rounds, bounded backoff, WAIT.

One *round* tries every target once. A round in which no session completed is a failed
round; after ``rounds`` failed rounds in a row the caller gives up (initramfs: countdown
and reboot; simulate: exit 1). A session that moved the download forward, or a WAIT,
shows the master is there, so it resets the count.
"""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from perceus.common.jitter import jittered
from perceus.stage1.cmdline import Master
from perceus.stage1.session import CheckIn, Outcome, SessionFailed, check_in

__all__ = ["NoMaster", "RetryPolicy", "Stats", "Target", "check_in_until_done"]

log = logging.getLogger("perceus.stage1")


@dataclass(frozen=True)
class RetryPolicy:
    rounds: int = 5  # failed rounds in a row before giving up
    backoff: float = 2.0  # seconds after the first failed round, doubling
    backoff_max: float = 30.0
    wait_max: float = 600.0  # a WAIT from the master is obeyed up to this many seconds
    jitter: float = 0.2  # +- this fraction, so hundreds of nodes do not retry in step

    def round_delay(self, failed_rounds: int, rng: random.Random) -> float:
        base = min(self.backoff * 2 ** max(0, failed_rounds - 1), self.backoff_max)
        return jittered(base, self.jitter, rng)

    def wait_delay(self, seconds: float, rng: random.Random) -> float:
        return jittered(min(float(seconds), self.wait_max), self.jitter, rng)


@dataclass(frozen=True)
class Target:
    """A master, reached through one interface (its address) or any (None)."""

    master: Master
    source_address: str | None = None
    iface: str = ""

    def __str__(self) -> str:
        return f"{self.master} via {self.iface}" if self.iface else str(self.master)


@dataclass
class Stats:
    """What a node's check-ins cost: latency per check-in (connect -> ASSIGN/WAIT), bytes."""

    latencies: list[float] = field(default_factory=list)
    bytes: int = 0
    waits: int = 0
    last_wait: str = ""  # the master's last WAIT ("wait N s: reason"), cleared by an ASSIGN


class NoMaster(Exception):
    """Every target failed for ``rounds`` rounds in a row."""


Sleep = Callable[[float], Awaitable[None]]


async def check_in_until_done(
    targets: list[Target],
    req: CheckIn,
    policy: RetryPolicy = RetryPolicy(),
    *,
    stats: Stats | None = None,
    rng: random.Random | None = None,
    sleep: Sleep = asyncio.sleep,
) -> Outcome:
    """Check in until a session completes with ASSIGN (WAITs are slept through); raises NoMaster."""
    if not targets:
        raise NoMaster("no master to check in with")
    rng = rng or random.Random()
    failed_rounds = 0
    while True:
        last_error = ""
        waited = False
        for target in targets:
            before = req.download.verified_bytes if req.download else 0
            try:
                outcome = await check_in(target.master, replace(req, source_address=target.source_address))
            except SessionFailed as exc:
                last_error = f"{target}: {exc}"
                log.warning("%s", last_error)
                if stats is not None:
                    stats.bytes += exc.bytes_received
                if req.download is not None and req.download.verified_bytes > before:
                    failed_rounds = 0  # progress: the master is there, the link is flaky
                continue
            if stats is not None:
                stats.latencies.append(outcome.latency)
                stats.bytes += outcome.bytes_received
            if outcome.wait is None:
                if stats is not None:
                    stats.last_wait = ""
                return outcome
            reason = outcome.wait.reason or "no reason"
            if stats is not None:
                stats.waits += 1
                stats.last_wait = f"wait {outcome.wait.seconds} s: {reason}"
            delay = policy.wait_delay(outcome.wait.seconds, rng)
            log.info("%s says wait %d s (%s)", target, outcome.wait.seconds, reason)
            await sleep(delay)
            failed_rounds = 0
            waited = True
            break
        if waited:
            continue
        failed_rounds += 1
        if failed_rounds >= policy.rounds:
            raise NoMaster(f"no master answered in {failed_rounds} rounds; last: {last_error}")
        delay = policy.round_delay(failed_rounds, rng)
        log.warning("round %d of %d failed; next round in %.1f s", failed_rounds, policy.rounds, delay)
        await sleep(delay)
