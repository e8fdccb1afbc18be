"""State one ``perceus`` invocation shares between its commands: flags, config, database."""

import json
import sys
from dataclasses import dataclass, field
from functools import cached_property

import click

from perceus.server.config import Settings
from perceus.server.db import Database, Node, open_database
from perceus.server.errors import PerceusError
from perceus.server.paths import Paths


@dataclass
class App:
    """The global options and lazily opened configuration and database."""

    by_nodeid: bool = False
    assume_yes: bool = False
    quiet: bool = False
    verbose: int = 0
    paths: Paths = field(default_factory=Paths.from_environment)

    @cached_property
    def settings(self) -> Settings:
        if not self.paths.perceus_conf.exists():
            raise PerceusError("perceus is not initialised: run 'perceus init'", str(self.paths.perceus_conf))
        return Settings.load(self.paths, warn=self.warn)

    @cached_property
    def db(self) -> Database:
        database = open_database(self.settings)
        self.debug(f"node database {database.path} (schema {database.schema_version})")
        return database

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

    def confirm(self, question: str, listing: list[str], where: str) -> None:
        """Show what a destructive command touches and ask; anything but yes changes nothing."""
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
