"""Root trees seen from inside: paths resolved as a chroot would resolve them."""

import os
import stat
from pathlib import Path

MAX_SYMLINKS = 40  # as the kernel's path walk


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part and part != "."]


def resolve_in_root(root: Path, relpath: str) -> str | None:
    """``relpath`` with every symlink resolved as if ``root`` were ``/`` (chroot-style).

    Absolute link targets restart at ``root`` and ``..`` stops at it, so the walk can never
    leave the tree. Returns the relative path of the object (the last component is followed
    too) or None when it is missing, loops, or passes through a non-directory.
    """
    pending = _components(relpath)
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        try:
            info = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            pending = _components(target) + pending
            continue
        if pending and not stat.S_ISDIR(info.st_mode):
            return None
        done.append(part)
    return "/".join(done)
