"""The site key: a shared secret baked into stage one that lets perceusd tell its own nodes apart.

It lives in ``$SYSCONFDIR/site.key`` as raw bytes (16 to 4096 of them). Because whoever
reads it can pass for a node and receive secret modules and SSH host keys, perceusd
refuses a key file that its group or others can read, rather than quietly trusting it.
"""

import os
import stat
from pathlib import Path

from perceus.server.errors import PerceusError
from perceus.server.paths import Paths

FILENAME = "site.key"
MIN_SIZE = 16
MAX_SIZE = 4096


def path_of(paths: Paths) -> Path:
    return paths.sysconfdir / FILENAME


def load(paths: Paths) -> bytes | None:
    """The site key, or None when the site has none; PerceusError if the file is unusable."""
    path = path_of(paths)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PerceusError(f"cannot open the site key: {exc.strerror}", str(path)) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PerceusError("the site key is not a regular file", str(path))
        if info.st_mode & 0o077:
            raise PerceusError(
                f"the site key is readable by others (mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it",
                str(path),
            )
        data = os.read(fd, MAX_SIZE + 1)
    except OSError as exc:
        raise PerceusError(f"cannot read the site key: {exc.strerror}", str(path)) from exc
    finally:
        os.close(fd)
    if not MIN_SIZE <= len(data) <= MAX_SIZE:
        size = f"more than {MAX_SIZE}" if len(data) > MAX_SIZE else str(len(data))
        raise PerceusError(f"the site key has {size} bytes; it must have {MIN_SIZE} to {MAX_SIZE}", str(path))
    return data
