"""perceusd and dnsmasq as plain daemons, each started and stopped on its own.

Both daemonise themselves only once they are serving, so a start-up failure is still
their exit status and their one line on stderr. A pidfile counts only while the process
it names is alive and really is that daemon (its command line says so): a stale pidfile
whose number was reused by something else is never signalled. Starting them together,
all or nothing, is the service layer's job (``services/netservices.py``).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from perceus.common.daemonize import Pidfile
from perceus.server import control
from perceus.server.errors import PerceusError
from perceus.server.netservices import dnsmasq

START_TIMEOUT = 30.0  # a daemon's start-up, and then its pidfile appearing
STOP_TIMEOUT = 30.0  # perceusd lets running sessions finish for up to 10 s
POLL = 0.05


@dataclass(frozen=True)
class Daemon:
    """One daemon: how to start it and how to tell it is the one running."""

    name: str
    pidfile: Path
    command: tuple[str, ...]
    marker: str  # must appear in /proc/PID/cmdline

    def pid(self) -> int | None:
        """The running daemon's pid, or None if it is not running."""
        return Pidfile(self.pidfile, self.marker).holder()

    def start(self) -> int:
        """Start the daemon and wait for its pidfile; its pid. PerceusError with its complaint."""
        self.pidfile.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        try:
            proc = subprocess.run(
                list(self.command),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PerceusError(
                f"{self.name} did not finish starting in {START_TIMEOUT:.0f} s", self.name
            ) from None
        except OSError as exc:
            raise PerceusError(f"cannot run {self.name}: {exc.strerror}", self.command[0]) from None
        if proc.returncode != 0:
            said = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            for prefix in (f"{self.name}: error: ", f"{self.name}: "):
                said = said.removeprefix(prefix)
            raise PerceusError(f"{self.name} did not start: {said}", self.name)
        deadline = time.monotonic() + START_TIMEOUT
        while (pid := self.pid()) is None:
            if time.monotonic() > deadline:
                raise PerceusError(
                    f"{self.name} started but wrote no pidfile in {START_TIMEOUT:.0f} s (see the system log)",
                    str(self.pidfile),
                )
            time.sleep(POLL)
        return pid

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the daemon and wait for it to go; the pid it had, None if it was not running."""
        pid = self.pid()
        if pid is None:
            return None
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return pid
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise PerceusError(f"{self.name} (pid {pid}) did not stop within {timeout:.0f} s", self.name)
            time.sleep(POLL)
        try:  # dnsmasq leaves its pidfile behind; perceusd removes its own
            if int(self.pidfile.read_text().strip()) == pid:
                self.pidfile.unlink()
        except (OSError, ValueError):
            pass
        return pid


def perceusd_binary() -> str:
    """The perceusd installed beside this Python (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "perceusd"
    if beside.exists():
        return str(beside)
    found = shutil.which("perceusd")
    if found is None:
        raise PerceusError("perceusd is not installed", "PATH")
    return found


def perceusd_daemon() -> Daemon:
    pidfile = control.rundir() / control.PIDFILE_NAME
    return Daemon("perceusd", pidfile, (perceusd_binary(), "--pidfile", str(pidfile)), "perceusd")


def dnsmasq_daemon(conf: Path, pidfile: Path) -> Daemon:
    return Daemon("dnsmasq", pidfile, (dnsmasq.dnsmasq_binary(), "-C", str(conf)), str(conf))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has stopped: only its parent's wait is missing
