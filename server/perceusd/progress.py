"""What the control socket shows of one session: its node, phase, bytes and rate."""

import time
from collections import deque
from dataclasses import dataclass, field

RATE_WINDOW = 5.0  # seconds the rate is averaged over


@dataclass
class Progress:
    """What the control socket shows of one session."""

    sid: int
    peer: str
    started: float = field(default_factory=time.time)
    nodeid: str = ""
    name: str = ""
    state: str = ""
    phase: str = "hello"
    bytes_sent: int = 0
    bytes_total: int = 0
    checkin_s: float | None = None  # HELLO read -> ASSIGN or WAIT written, seconds
    _hello_at: float = field(default_factory=time.perf_counter, repr=False)
    _samples: deque = field(default_factory=lambda: deque(maxlen=64), repr=False)

    def hello(self) -> None:
        """HELLO is read: the master's part of the check-in starts."""
        self._hello_at = time.perf_counter()

    def answered(self) -> None:
        """ASSIGN or WAIT is written: the check-in's latency on the master's side is known."""
        self.checkin_s = time.perf_counter() - self._hello_at

    def account(self, count: int) -> None:
        self.bytes_sent += count
        now = time.monotonic()
        if not self._samples or now - self._samples[-1][0] >= 0.1:
            self._samples.append((now, self.bytes_sent))

    def rate_bps(self, now: float | None = None) -> float:
        """Bytes per second over the last few seconds (0 when idle)."""
        now = time.monotonic() if now is None else now
        recent = [(t, b) for t, b in self._samples if now - t <= RATE_WINDOW]
        if not recent:
            return 0.0
        t0, b0 = recent[0]
        if self.bytes_sent == b0 or now - t0 <= 0:
            return 0.0
        return (self.bytes_sent - b0) / max(now - t0, 0.2)

    def as_dict(self) -> dict:
        return {
            "session": self.sid,
            "nodeid": self.nodeid,
            "name": self.name,
            "state": self.state,
            "phase": self.phase,
            "peer": self.peer,
            "bytes_sent": self.bytes_sent,
            "bytes_total": self.bytes_total,
            "rate_bps": round(self.rate_bps()),
            "started": round(self.started, 3),
        }
