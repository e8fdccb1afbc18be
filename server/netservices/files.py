"""Writing the services' files: atomically, and a failure is one line naming the file."""

import os
from pathlib import Path

from perceus.common.atomicfile import atomic_write
from perceus.server.errors import PerceusError


def install_text(path: Path, text: str, mode: int = 0o644, like: os.stat_result | None = None) -> None:
    """Put ``text`` at ``path`` (its directory made if needed) by write-beside-and-rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text, mode=mode, like=like)
    except OSError as exc:
        raise PerceusError(f"cannot write it: {exc.strerror or exc}", str(path)) from None


def remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise PerceusError(f"cannot remove it: {exc.strerror or exc}", str(path)) from None
