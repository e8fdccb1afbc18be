"""State one ``perceus`` invocation shares between its commands: flags, config, database."""

import json
import sys
from dataclasses import dataclass, field
from functools import cached_property

import click

from perceus.server.config import Settings
from perceus.server.db import Database, Node
from perceus.server.errors import PerceusError
from perceus.server.instance import Instance
from perceus.server.paths import Paths


@dataclass
class App:
    """The global options, and the instance the commands' services work on."""

    by_nodeid: bool = False
    assume_yes: bool = False
    quiet: bool = False
    verbose: int = 0
    paths: Paths = field(default_factory=Paths.from_environment)

    @cached_property
    def instance(self) -> Instance:
        return Instance(self.paths, warn=self.warn, note=self.debug)

    @property
    def settings(self) -> Settings:
        return self.instance.settings

    @property
    def db(self) -> Database:
        return self.instance.db

    # -- output -------------------------------------------------------------------------

    def info(self, message: str) -> None:
        """Headers and chatter: hidden by -q, like the original's iprint."""
        if not self.quiet:
            click.echo(message)

    def warn(self, message: str) -> None:
        click.echo(message, err=True)

    def debug(self, message: str) -> None:
        if self.verbose:
            click.echo(f"perceus: {message}", err=True)

    @staticmethod
    def emit_json(data: object) -> None:
        click.echo(json.dumps(data, indent=2, sort_keys=True))

    def confirm(self, question: str, listing: list[str], where: str = "") -> None:
        """Show what a destructive command touches and ask; anything but yes changes nothing.

        A refusal names ``where``, or the command when that is empty."""
        if self.assume_yes:
            return
        for line in listing:
            click.echo(line, err=True)
        click.echo(f"\n{question}", err=True)
        while True:
            click.echo("Please Confirm [yes/no]> ", nl=False, err=True)
            answer = sys.stdin.readline()
            if not sys.stdin.isatty():
                click.echo("", err=True)  # nobody typed a newline after the prompt
            if not answer:
                break
            answer = answer.strip().lower()
            if answer in ("yes", "y"):
                return
            if answer in ("no", "n"):
                break
        raise PerceusError("not confirmed, nothing changed (pass -y to skip the question)", where)


def node_rows(nodes: list[Node]) -> list[str]:
    """The original's listing of the nodes a confirmation is about."""
    header = ["   Hostname             Group                NodeID", "   " + "-" * 76]
    return header + [f"   {node.hostname:<20} {node.group:<20} {node.nodeid}" for node in nodes]


pass_app = click.make_pass_decorator(App)
