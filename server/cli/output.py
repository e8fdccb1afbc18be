"""Tables in the original's columns, so scripts that parse them keep working; sizes and
progress bars as the commands show them."""

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

import click

from perceus.server.db import Node
from perceus.server.services.progress import Advance, Progress

STATUS_HEADER = f"{'HostName':<20} {'Status':<14} {'IP Address':<22} Last Contact"
SUMMARY_HEADER = f"{'HostName':<20} {'GroupName':<16} {'Enabled':<9} Vnfs"
RULE = "-" * 79
UNDEFINED = "(undefined)"


def elapsed(seconds: int) -> str:
    """Time since the last contact as the original printed it: HH:MM:SS, hours unbounded."""
    seconds = max(0, seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def status_row(node: Node, timeout: int, now: float | None = None) -> str:
    now = time.time() if now is None else now
    if node.lastcontact is None:
        contact = UNDEFINED
    else:
        age = int(now) - node.lastcontact
        contact = elapsed(age) + (" timed out" if age > timeout else "")
    return (
        f"{node.hostname[:20]:<20} {(node.status or UNDEFINED)[:14]:<14} "
        f"{(node.ipaddr or UNDEFINED)[:22]:<22} {contact}"
    )


def summary_row(node: Node) -> str:
    enabled = "yes" if node.enabled else "no"
    return (
        f"{node.hostname[:20]:<20} {(node.group or UNDEFINED)[:16]:<16} {enabled:<9} {node.vnfs or UNDEFINED}"
    )


def show_lines(node: Node) -> list[str]:
    return [f"{node.hostname}: {key}={'' if value is None else value}" for key, value in node.show_items()]


def status_json(node: Node, timeout: int, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    age = None if node.lastcontact is None else int(now) - node.lastcontact
    return {
        "hostname": node.hostname,
        "nodeid": node.nodeid,
        "status": node.status,
        "ipaddr": node.ipaddr,
        "lastcontact": node.lastcontact,
        "seconds_since_contact": age,
        "timed_out": age is not None and age > timeout,
    }


def summary_json(node: Node) -> dict:
    return {
        "hostname": node.hostname,
        "nodeid": node.nodeid,
        "group": node.group,
        "enabled": bool(node.enabled),
        "vnfs": node.vnfs,
    }


def human_size(size: float) -> str:
    """``512 bytes``, ``1.5 KiB`` ... ``3.0 GiB`` (powers of 1024)."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)  # pragma: no cover


def progress_bar(label: str) -> Progress:
    """A service's progress as a bar on a terminal, and as nothing (the total never counted) otherwise."""

    @contextlib.contextmanager
    def bar(total: Callable[[], int | None], /) -> Iterator[Advance | None]:
        length = total() if sys.stdout.isatty() else None
        if not length:
            yield None
            return
        with click.progressbar(length=length, label=label, show_eta=True) as shown:
            yield shown.update

    return bar
