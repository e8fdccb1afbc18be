"""How a long service call reports progress to whoever shows it.

The service says how much work there is; the caller decides whether and how to show it.
The amount is passed as a function because some (the bytes of a tree) cost a walk to
count: a caller that shows nothing never calls it.
"""

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

__all__ = ["Advance", "Progress", "no_progress", "tree_bytes"]

Advance = Callable[[int], None]
"""Called with each amount of work done (bytes, usually)."""


class Progress(Protocol):
    """``with progress(total) as advance:``; ``advance`` is None when nothing is shown."""

    def __call__(self, total: Callable[[], int | None], /) -> AbstractContextManager[Advance | None]: ...


@contextlib.contextmanager
def no_progress(total: Callable[[], int | None], /) -> Iterator[Advance | None]:
    """The default: nothing shown, the total never counted."""
    yield None


def tree_bytes(root: Path) -> int:
    """The bytes of every file under ``root`` (those that vanish while counting count nothing)."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total
