"""``perceus node``: add, delete, list, replace, set, show, status, summary, import."""

import sys

import click

from perceus.server import importers
from perceus.server.cli import listing
from perceus.server.cli.app import App, node_rows, pass_app
from perceus.server.cli.completion import complete_nodes
from perceus.server.cli.errors import PerceusGroup
from perceus.server.cli.fields import check_value
from perceus.server.db import Node
from perceus.server.db.model import DAEMON_FIELDS, SETTABLE_FIELDS
from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.macaddr import require_mac
from perceus.server.netservices import pxelinux
from perceus.server.registry import NewNode, add_nodes
from perceus.server.selection import select_nodes

JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of columns.")
NODES = click.argument("nodes", nargs=-1, shell_complete=complete_nodes)
SOME_NODES = click.argument("nodes", nargs=-1, required=True, shell_complete=complete_nodes)


def selected(app: App, patterns: tuple[str, ...], where: str) -> list[Node]:
    chosen = select_nodes(app.db.nodes(), patterns, app.by_nodeid, where, app.warn)
    app.debug(f"{' '.join(patterns) or 'all nodes'}: {len(chosen)} nodes")
    return chosen


def warn_unknown_vnfs(app: App, vnfs: str) -> None:
    if vnfs and not (app.paths.vnfs_dir / vnfs).is_dir():
        app.warn(f"perceus: warning: VNFS '{vnfs}' is not imported yet ({app.paths.vnfs_dir})")


@click.group(cls=PerceusGroup)
def node() -> None:
    """Set, display and list node attributes and statistics."""


@node.command()
@click.argument("mac")
@click.argument("name", required=False)
@pass_app
def add(app: App, mac: str, name: str | None) -> None:
    """Add a node by MAC address, named from defaults.conf unless NAME is given."""
    where = "node add"
    nodeid = require_mac(mac, where)
    if name is not None:
        check_value("hostname", name, where)
    (added,) = add_nodes(app.db, app.settings, [NewNode(nodeid, name, where)])
    warn_unknown_vnfs(app, added.vnfs)
    app.info(f"Node '{added.hostname}' has been added to Perceus")


@node.command("import")
@click.option("--dhcpd", "dhcpd", type=click.File("r"), help="ISC dhcpd.conf with host blocks.")
@click.option("--ethers", "ethers", type=click.File("r"), help="/etc/ethers: MAC and hostname per line.")
@click.option("--csv", "csv_file", type=click.File("r"), help="CSV rows: mac,name (name optional).")
@pass_app
def import_(app: App, dhcpd, ethers, csv_file) -> None:
    """Add many nodes in file order, in one transaction; MACs on standard input if no file."""
    where = "node import"
    sources = [
        (f, r)
        for f, r in (
            (dhcpd, importers.read_dhcpd),
            (ethers, importers.read_ethers),
            (csv_file, importers.read_csv),
        )
        if f is not None
    ]
    if len(sources) > 1:
        raise InvalidRequest("give one of --dhcpd, --ethers, --csv", where)
    if sources:
        handle, reader = sources[0]
    else:
        if sys.stdin.isatty():
            raise InvalidRequest("give --dhcpd, --ethers or --csv FILE, or MACs on standard input", where)
        handle, reader = sys.stdin, importers.read_macs
    name = "<stdin>" if handle is sys.stdin else handle.name
    try:
        entries = reader(handle.read(), name)
    except UnicodeDecodeError as exc:
        raise PerceusError("input is not text", name) from exc
    known = {n.nodeid: n.hostname for n in app.db.nodes()}
    fresh = []
    for entry in entries:
        if entry.mac in known:
            app.warn(
                f"perceus: warning: NodeID '{entry.mac}' already exists as node "
                f"'{known[entry.mac]}', skipped ({entry.where})"
            )
        else:
            fresh.append(entry)
    added = add_nodes(app.db, app.settings, fresh)
    for new in added:
        app.info(f"Node '{new.hostname}' has been added to Perceus")
    app.info(f"'{len(added)}' nodes imported")


@node.command()
@SOME_NODES
@pass_app
def delete(app: App, nodes: tuple[str, ...]) -> None:
    """Delete nodes from the database."""
    where = "node delete"
    chosen = selected(app, nodes, where)
    listing.delete_confirmed(app, chosen, where)


@node.command("list")
@NODES
@JSON
@pass_app
def list_(app: App, nodes: tuple[str, ...], as_json: bool) -> None:
    """List node names (all nodes when none are given)."""
    chosen = selected(app, nodes, "node list")
    if as_json:
        app.emit_json([{"hostname": n.hostname, "nodeid": n.nodeid} for n in chosen])
    else:
        for n in chosen:
            print(n.hostname)


def _one(app: App, pattern: str, where: str) -> Node:
    chosen = selected(app, (pattern,), where)
    if len(chosen) != 1:
        raise InvalidRequest(
            f"{pattern!r} names {len(chosen)} nodes, not one (use -i with the MAC address)", where
        )
    return chosen[0]


@node.command()
@click.argument("old", shell_complete=complete_nodes)
@click.argument("new", shell_complete=complete_nodes)
@pass_app
def replace(app: App, old: str, new: str) -> None:
    """Give node NEW (new hardware) the identity of node OLD; OLD's MAC is forgotten."""
    where = "node replace"
    old_node, new_node = _one(app, old, where), _one(app, new, where)
    if old_node.nodeid == new_node.nodeid:
        raise InvalidRequest(f"{old!r} and {new!r} are the same node", where)
    app.confirm(
        f"Are you sure you wish to replace '{old_node.hostname}' with '{new_node.hostname}'?",
        node_rows([old_node, new_node]),
        where,
    )
    boot = pxelinux.boot_follows(app.paths.tftp_dir, app.db, old_node, new_node, app.warn)
    with boot, app.db.transaction():
        if app.db.node(old_node.nodeid) is None or app.db.node(new_node.nodeid) is None:
            raise PerceusError("a node changed while you were asked; nothing replaced", where)
        app.db.replace_node(old_node.nodeid, new_node.nodeid)
    app.info(f"Node '{old_node.hostname}' has been replaced.")


# ``node set`` fields that are files rather than database columns.
FILE_FIELDS = ("boot",)


def set_boot(app: App, value: str, nodes: tuple[str, ...], where: str) -> None:
    """``boot``: the nodes' own pxelinux files (local disk, stage one, or the default)."""
    if value not in pxelinux.BOOT_CHOICES:
        raise InvalidRequest(f"boot takes local, perceus or default, not {value!r}", where)
    chosen = selected(app, nodes, where)
    count = pxelinux.set_boot(app.paths.tftp_dir, [n.nodeid for n in chosen], value, where)
    app.info(f"'{count}' nodes set boot='{value}'")


@node.command("set")
@click.argument("field", type=click.Choice(SETTABLE_FIELDS + DAEMON_FIELDS + FILE_FIELDS), metavar="FIELD")
@click.argument("value")
@SOME_NODES
@pass_app
def set_(app: App, field: str, value: str, nodes: tuple[str, ...]) -> None:
    """Set FIELD to VALUE on nodes. FIELD: debug, desc, enabled, group, hostname, vnfs;
    boot (local, perceus or default) writes the nodes' own pxelinux files."""
    where = "node set"
    if field == "boot":
        set_boot(app, value, nodes, where)
        return
    stored = check_value(field, value, where)
    if field in DAEMON_FIELDS:
        app.warn(f"perceus: warning: {field} is written by perceusd as nodes check in ({where})")
    if field == "vnfs":
        warn_unknown_vnfs(app, value)
    with app.db.transaction():
        chosen = selected(app, nodes, where)
        if field == "hostname" and len(chosen) > 1:
            app.warn(
                f"perceus: warning: {len(chosen)} nodes now share the name {value!r}; "
                f"use -i with MAC addresses to tell them apart ({where})"
            )
        count = app.db.set_field((n.nodeid for n in chosen), field, stored)
    app.info(f"'{count}' nodes set {field}='{value}'")


@node.command()
@NODES
@JSON
@pass_app
def show(app: App, nodes: tuple[str, ...], as_json: bool) -> None:
    """Print every field of nodes as 'host: field=value' lines."""
    listing.print_show(app, selected(app, nodes, "node show"), as_json)


@node.command()
@NODES
@JSON
@click.option("--watch", is_flag=True, help="Live view from perceusd: phase, bytes sent and rate too.")
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 3600),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many refreshes (default: never).")
@pass_app
def status(
    app: App, nodes: tuple[str, ...], as_json: bool, watch: bool, interval: float, count: int | None
) -> None:
    """Status, address and time since last contact; late nodes say 'timed out'."""
    if watch:
        listing.watch_status(app, lambda: selected(app, nodes, "node status"), as_json, interval, count)
        return
    listing.print_status(app, selected(app, nodes, "node status"), as_json)


@node.command()
@NODES
@JSON
@pass_app
def summary(app: App, nodes: tuple[str, ...], as_json: bool) -> None:
    """Group, enabled flag and VNFS of nodes."""
    listing.print_summary(app, selected(app, nodes, "node summary"), as_json)
