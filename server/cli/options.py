"""What several command groups share: --json, node and group arguments with completion from
the database, node selection, and warnings that name the command when they name no place."""

from collections.abc import Sequence

import click
from click.shell_completion import CompletionItem

from perceus.server.cli.app import App
from perceus.server.cli.errors import command_where
from perceus.server.db import Node
from perceus.server.errors import Warn
from perceus.server.selection import NodeQuery
from perceus.server.services import nodes as node_service


def _app(ctx: click.Context) -> App:
    """Completion parses without running callbacks, so build the App from the root's options."""
    root = ctx.find_root()
    if isinstance(root.obj, App):
        return root.obj
    return App(by_nodeid=bool(root.params.get("by_nodeid")), quiet=True)


def complete_nodes(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Node names (MACs with -i) known to the database; nothing if it cannot be read."""
    app = _app(ctx)
    try:
        nodes = app.db.nodes()
    except Exception:  # noqa: BLE001 - completion must never spill errors into the shell
        return []
    keys = sorted({n.nodeid if app.by_nodeid else n.hostname for n in nodes})
    return [CompletionItem(key) for key in keys if key.startswith(incomplete)]


def complete_groups(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    app = _app(ctx)
    try:
        groups = app.db.groups()
    except Exception:  # noqa: BLE001
        return []
    return [CompletionItem(g.name) for g in groups if g.name.startswith(incomplete)]


JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of columns.")
NODES = click.argument("nodes", nargs=-1, shell_complete=complete_nodes)
SOME_NODES = click.argument("nodes", nargs=-1, required=True, shell_complete=complete_nodes)
GROUPS = click.argument("groups", nargs=-1, shell_complete=complete_groups)
SOME_GROUPS = click.argument("groups", nargs=-1, required=True, shell_complete=complete_groups)


def warner(app: App) -> Warn:
    """The services' ``warn`` for the running command: ``perceus: warning: <what> (<where>)``,
    the command itself where the warning names no place."""
    command = command_where(click.get_current_context())

    def warn(what: str, where: str | None) -> None:
        app.warn(f"perceus: warning: {what} ({where or command})")

    return warn


def query(app: App, patterns: Sequence[str]) -> NodeQuery:
    """The nodes some arguments name, as -i/--nodeid says to read them."""
    return NodeQuery(tuple(patterns), app.by_nodeid)


def selected(app: App, patterns: Sequence[str]) -> list[Node]:
    """The nodes the arguments name (all when there are none), in listing order."""
    return node_service.select(app.instance, query(app, patterns), warner(app))
