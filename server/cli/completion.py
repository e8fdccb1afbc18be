"""Bash completion: click's machinery, plus node, group and field names from the database."""

import click
from click.shell_completion import CompletionItem, get_completion_class

from perceus.server.cli.app import App
from perceus.server.cli.errors import PerceusCommand


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


@click.command(cls=PerceusCommand)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]), default="bash")
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(perceus completion bash)"."""
    from perceus.server.cli import cli

    cls = get_completion_class(shell)
    click.echo(cls(cli, {}, "perceus", "_PERCEUS_COMPLETE").source())
