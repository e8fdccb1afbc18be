"""Click options, arguments and completions more than one command group uses.

CLI modules share these instead of importing each other's helpers.
"""

from collections.abc import Sequence

import click
from click.shell_completion import CompletionItem

from perceus.server.cli.app import App
from perceus.server.cli.errors import command_where
from perceus.server.db import Node
from perceus.server.selection import select_nodes

__all__ = ["JSON", "complete_nodes", "selected"]

JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of columns.")


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


def selected(app: App, patterns: Sequence[str]) -> list[Node]:
    """The nodes the arguments name (bracket ranges, globs; MACs with -i), in listing order;
    errors and warnings that name no place name the running command."""
    where = command_where(click.get_current_context())
    chosen = select_nodes(app.db.nodes(), patterns, app.by_nodeid, where, app.warn)
    app.debug(f"{' '.join(patterns) or 'all nodes'}: {len(chosen)} nodes")
    return chosen
