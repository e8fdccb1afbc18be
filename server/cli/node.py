"""``perceus node``: add, delete, list, replace, set, show, status, summary, import."""

import sys

import click

from perceus.server.cli import listing, options
from perceus.server.cli.app import App, node_rows, pass_app
from perceus.server.cli.errors import PerceusGroup
from perceus.server.cli.options import JSON, NODES, SOME_NODES, complete_nodes, query, warner
from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.services import nodes as node_service

__all__ = ["node"]


@click.group(cls=PerceusGroup)
def node() -> None:
    """Set, display and list node attributes and statistics."""


@node.command()
@click.argument("mac")
@click.argument("name", required=False)
@pass_app
def add(app: App, mac: str, name: str | None) -> None:
    """Add a node by MAC address, named from defaults.conf unless NAME is given."""
    added = node_service.add(app.instance, mac, name, warner(app))
    app.info(f"Node '{added.hostname}' has been added to Perceus")


@node.command("import")
@click.option("--dhcpd", "dhcpd", type=click.File("r"), help="ISC dhcpd.conf with host blocks.")
@click.option("--ethers", "ethers", type=click.File("r"), help="/etc/ethers: MAC and hostname per line.")
@click.option("--csv", "csv_file", type=click.File("r"), help="CSV rows: mac,name (name optional).")
@pass_app
def import_(app: App, dhcpd, ethers, csv_file) -> None:
    """Add many nodes in file order, in one transaction; MACs on standard input if no file."""
    given = [
        (handle, form)
        for handle, form in ((dhcpd, "dhcpd"), (ethers, "ethers"), (csv_file, "csv"))
        if handle is not None
    ]
    if len(given) > 1:
        raise InvalidRequest("give one of --dhcpd, --ethers, --csv")
    if given:
        handle, form = given[0]
        source = handle.name
    elif sys.stdin.isatty():
        raise InvalidRequest("give --dhcpd, --ethers or --csv FILE, or MACs on standard input")
    else:
        handle, form, source = sys.stdin, "macs", "<stdin>"
    try:
        text = handle.read()
    except UnicodeDecodeError as exc:
        raise PerceusError("input is not text", source) from exc
    added = node_service.import_nodes(app.instance, text, source, form, warner(app))
    for new in added:
        app.info(f"Node '{new.hostname}' has been added to Perceus")
    app.info(f"'{len(added)}' nodes imported")


@node.command()
@SOME_NODES
@pass_app
def delete(app: App, nodes: tuple[str, ...]) -> None:
    """Delete nodes from the database."""
    listing.delete_confirmed(app, options.selected(app, nodes))


@node.command("list")
@NODES
@JSON
@pass_app
def list_(app: App, nodes: tuple[str, ...], as_json: bool) -> None:
    """List node names (all nodes when none are given)."""
    chosen = options.selected(app, nodes)
    if as_json:
        app.emit_json([{"hostname": n.hostname, "nodeid": n.nodeid} for n in chosen])
    else:
        for n in chosen:
            print(n.hostname)


@node.command()
@click.argument("old", shell_complete=complete_nodes)
@click.argument("new", shell_complete=complete_nodes)
@pass_app
def replace(app: App, old: str, new: str) -> None:
    """Give node NEW (new hardware) the identity of node OLD; OLD's MAC is forgotten."""
    plan = node_service.plan_replace(app.instance, old, new, app.by_nodeid, warner(app))
    app.confirm(
        f"Are you sure you wish to replace '{plan.old.hostname}' with '{plan.new.hostname}'?",
        node_rows([plan.old, plan.new]),
    )
    node_service.replace(app.instance, plan)
    app.info(f"Node '{plan.old.hostname}' has been replaced.")


@node.command("set")
@click.argument("field", type=click.Choice(node_service.FIELDS), metavar="FIELD")
@click.argument("value")
@SOME_NODES
@pass_app
def set_(app: App, field: str, value: str, nodes: tuple[str, ...]) -> None:
    """Set FIELD to VALUE on nodes. FIELD: debug, desc, enabled, group, hostname, vnfs;
    boot (local, perceus or default) writes the nodes' own pxelinux files."""
    count = node_service.set_field(app.instance, field, value, query(app, nodes), warner(app))
    app.info(f"'{count}' nodes set {field}='{value}'")


@node.command()
@NODES
@JSON
@pass_app
def show(app: App, nodes: tuple[str, ...], as_json: bool) -> None:
    """Print every field of nodes as 'host: field=value' lines."""
    listing.print_show(app, options.selected(app, nodes), as_json)


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
        views = node_service.watch(app.instance, query(app, nodes), warner(app), interval)
        listing.print_watch(views, as_json, count)
        return
    listing.print_status(app, options.selected(app, nodes), as_json)


@node.command()
@NODES
@JSON
@pass_app
def summary(app: App, nodes: tuple[str, ...], as_json: bool) -> None:
    """Group, enabled flag and VNFS of nodes."""
    listing.print_summary(app, options.selected(app, nodes), as_json)
