"""``perceus completion``: the shell completion script (click's machinery; node, group and field
names come from the database through ``cli/options.py``)."""

import click
from click.shell_completion import get_completion_class

from perceus.server.cli.errors import PerceusCommand

__all__ = ["completion"]


@click.command(cls=PerceusCommand)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]), default="bash")
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(perceus completion bash)"."""
    from perceus.server.cli import cli

    cls = get_completion_class(shell)
    click.echo(cls(cli, {}, "perceus", "_PERCEUS_COMPLETE").source())
