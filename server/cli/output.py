"""Tables in the original's columns, so scripts that parse them keep working."""

import time

from perceus.server.db import Node

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
