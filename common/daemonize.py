"""Becoming a daemon and holding a pidfile, as perceusd and provisiond both do."""

import contextlib
import os
from pathlib import Path

from perceus.common.atomicfile import atomic_write

__all__ = ["Pidfile", "daemonize"]


def daemonize() -> None:
    """Double fork and setsid: no controlling terminal, not a session leader, stdio on /dev/null."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


class Pidfile:
    """A pidfile written atomically, naming a live process of ``program`` or nobody.

    ``holder()`` is the pid in the file if that process is alive and its command line
    names ``program`` (a stale file left by a crash, or a recycled pid, holds nothing).
    """

    def __init__(self, path: Path, program: str) -> None:
        self.path = Path(path)
        self.program = program.encode()

    def holder(self) -> int | None:
        try:
            pid = int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            return None
        return pid if self.program in cmdline else None

    def write(self) -> None:
        """Record this process (OSError if the directory cannot be made or written)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        atomic_write(self.path, f"{os.getpid()}\n", mode=0o644)

    def remove(self) -> None:
        """Remove the file if it still names this process."""
        with contextlib.suppress(OSError, ValueError):
            if int(self.path.read_text().strip()) == os.getpid():
                self.path.unlink()
