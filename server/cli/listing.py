"""What ``node`` and ``group`` commands share: the status, summary and show listings, deletion."""

import time

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
    app.info(f"'{count}' nodes have been deleted")
