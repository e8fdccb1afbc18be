"""What ``node`` and ``group`` commands print alike: status, summary and show listings, the live
status view, and the confirmation before nodes are deleted."""

import json
import sys
import time
from collections.abc import Iterator

import click

from perceus.server.cli import output
from perceus.server.cli.app import App, node_rows
from perceus.server.db import Node
from perceus.server.services import nodes as node_service
from perceus.server.services.nodes import LiveStatus


def print_status(app: App, nodes: list[Node], as_json: bool) -> None:
    timeout = node_service.status_timeout(app.instance)
    now = time.time()
    if as_json:
        app.emit_json([output.status_json(node, timeout, now) for node in nodes])
        return
    app.info(output.STATUS_HEADER)
    app.info(output.RULE)
    for node in nodes:
        print(output.status_row(node, timeout, now))


WATCH_HEADER = f"{output.STATUS_HEADER:<79} {'Phase':<8} {'Sent':>9} {'Rate':>10}"
CLEAR = "\033[H\033[2J"


def _human(count: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if count < 1000 or unit == "T":
            return f"{count:.0f}{unit}" if not unit else f"{count:.1f}{unit}"
        count /= 1000
    return str(count)


def watch_rows(live: LiveStatus) -> list[tuple[Node, dict]]:
    """Each node with its row: the status columns, and its live session's phase, bytes and rate."""
    rows = []
    for node, session in live.nodes:
        row = output.status_json(node, live.timeout, live.now) | {
            "phase": "-",
            "bytes_sent": 0,
            "rate_bps": 0,
        }
        if session is not None:
            for key in ("phase", "bytes_sent", "bytes_total", "rate_bps", "peer"):
                row[key] = session.get(key, row.get(key))
        rows.append((node, row))
    return rows


def _live_columns(phase: object, sent: object, rate: object) -> str:
    sent = sent if isinstance(sent, int | float) else 0
    rate = rate if isinstance(rate, int | float) else 0
    return f"{str(phase)[:8]:<8} {_human(sent):>9} {_human(rate) + '/s':>10}"


def _render(rows: list[tuple[Node, dict]], live: LiveStatus) -> str:
    lines = [WATCH_HEADER, "-" * len(WATCH_HEADER)]
    for node, row in rows:
        columns = _live_columns(row["phase"], row["bytes_sent"], row["rate_bps"])
        lines.append(f"{output.status_row(node, live.timeout, live.now):<79} {columns}")
    for session in live.unknown:
        name = f"({session.get('nodeid')})"
        state, peer = str(session.get("state", "")), str(session.get("peer", ""))
        columns = _live_columns(session.get("phase", "?"), session.get("bytes_sent"), session.get("rate_bps"))
        lines.append(f"{name[:20]:<20} {state[:14]:<14} {peer[:22]:<22} {'(not added yet)':<20} {columns}")
    daemon = live.perceusd
    lines.append(
        f"perceusd: {daemon.get('active_sessions', 0)} active sessions, "
        f"{_human(daemon.get('bytes_sent_total', 0))}B sent, {_human(daemon.get('rate_bps', 0))}B/s"
    )
    return "\n".join(lines)


def print_watch(views: Iterator[LiveStatus], as_json: bool, count: int | None) -> None:
    """``node status --watch``: redraw (on a terminal) or print each view, ``count`` times or
    until interrupted."""
    tty = sys.stdout.isatty() and not as_json
    shown = 0
    try:
        for live in views:
            rows = watch_rows(live)
            if as_json:
                click.echo(
                    json.dumps({"nodes": [row for _, row in rows], "new": live.unknown}, sort_keys=True)
                )
            else:
                text = _render(rows, live)
                click.echo((CLEAR + text) if tty else (text + "\n"))
            shown += 1
            if count is not None and shown >= count:
                return
    except KeyboardInterrupt:
        return


def print_summary(app: App, nodes: list[Node], as_json: bool) -> None:
    if as_json:
        app.emit_json([output.summary_json(node) for node in nodes])
        return
    app.info(output.SUMMARY_HEADER)
    app.info(output.RULE)
    for node in nodes:
        print(output.summary_row(node))


def print_show(app: App, nodes: list[Node], as_json: bool) -> None:
    if as_json:
        app.emit_json([node.as_dict() for node in nodes])
        return
    for node in nodes:
        print("\n".join(output.show_lines(node)))


def delete_confirmed(app: App, nodes: list[Node]) -> None:
    """List the nodes, ask (unless -y), then delete them and their boot files."""
    app.confirm(f"Are you sure you wish to delete {len(nodes)} nodes from Perceus?", node_rows(nodes))
    count = node_service.delete(app.instance, nodes)
    app.info(f"'{count}' nodes have been deleted")
