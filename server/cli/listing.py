"""What ``node`` and ``group`` commands share: the status, summary and show listings, deletion."""

import json
import sys
import time
from collections.abc import Callable

import click

from perceus.server import control
from perceus.server.cli import output
from perceus.server.cli.app import App, node_rows
from perceus.server.db import Node


def print_status(app: App, nodes: list[Node], as_json: bool) -> None:
    timeout = app.settings.perceus.get_int("node timeout") or 600
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


def watch_rows(
    nodes: list[Node], document: dict, timeout: int, now: float
) -> tuple[list[tuple[Node, dict]], list[dict]]:
    """Each node with its row (status columns plus its live session: the newest, if several),
    and the sessions of MACs not in the database yet (a node between HELLO and being added)."""
    live: dict[str, dict] = {}
    for session in document.get("sessions", []):
        if isinstance(session, dict) and isinstance(session.get("nodeid"), str):
            live[session["nodeid"]] = session
    rows = []
    for node in nodes:
        row = output.status_json(node, timeout, now) | {"phase": "-", "bytes_sent": 0, "rate_bps": 0}
        session = live.pop(node.nodeid, None)
        if session is not None:
            for key in ("phase", "bytes_sent", "bytes_total", "rate_bps", "peer"):
                row[key] = session.get(key, row.get(key))
        rows.append((node, row))
    return rows, [s for nodeid, s in live.items() if nodeid]


def _live_columns(phase: object, sent: object, rate: object) -> str:
    sent = sent if isinstance(sent, int | float) else 0
    rate = rate if isinstance(rate, int | float) else 0
    return f"{str(phase)[:8]:<8} {_human(sent):>9} {_human(rate) + '/s':>10}"


def _render(
    rows: list[tuple[Node, dict]], extra: list[dict], document: dict, timeout: int, now: float
) -> str:
    lines = [WATCH_HEADER, "-" * len(WATCH_HEADER)]
    for node, row in rows:
        live = _live_columns(row["phase"], row["bytes_sent"], row["rate_bps"])
        lines.append(f"{output.status_row(node, timeout, now):<79} {live}")
    for session in extra:
        name = f"({session.get('nodeid')})"
        state, peer = str(session.get("state", "")), str(session.get("peer", ""))
        live = _live_columns(session.get("phase", "?"), session.get("bytes_sent"), session.get("rate_bps"))
        lines.append(f"{name[:20]:<20} {state[:14]:<14} {peer[:22]:<22} {'(not added yet)':<20} {live}")
    daemon = document.get("perceusd", {})
    lines.append(
        f"perceusd: {daemon.get('active_sessions', 0)} active sessions, "
        f"{_human(daemon.get('bytes_sent_total', 0))}B sent, {_human(daemon.get('rate_bps', 0))}B/s"
    )
    return "\n".join(lines)


def watch_status(
    app: App, nodes: Callable[[], list[Node]], as_json: bool, interval: float, count: int | None
) -> None:
    """``node status --watch``: redraw (on a terminal) or print successive tables from perceusd's
    control socket every ``interval`` seconds, ``count`` times or until interrupted."""
    timeout = app.settings.perceus.get_int("node timeout") or 600
    tty = sys.stdout.isatty() and not as_json
    shown = 0
    try:
        for document in control.watch(control.socket_path(), interval):
            now = time.time()
            rows, extra = watch_rows(nodes(), document, timeout, now)
            if as_json:
                click.echo(json.dumps({"nodes": [row for _, row in rows], "new": extra}, sort_keys=True))
            else:
                text = _render(rows, extra, document, timeout, now)
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


def delete_confirmed(app: App, nodes: list[Node], where: str) -> None:
    """List the nodes, ask (unless -y), then delete them in one transaction."""
    app.confirm(f"Are you sure you wish to delete {len(nodes)} nodes from Perceus?", node_rows(nodes), where)
    with app.db.transaction():
        count = app.db.delete_nodes(n.nodeid for n in nodes)
    from perceus.server.netservices import pxelinux

    pxelinux.sync_boot_files(app.paths.tftp_dir, app.db.nodes(), app.warn, [n.nodeid for n in nodes])
    app.info(f"'{count}' nodes have been deleted")
