"""``perceus service``: start, stop and check perceusd and dnsmasq together.

The guide's two services (3.1.4) as plain processes with pidfiles in $PERCEUS_RUNDIR
(default /run/perceus); on a systemd master, ``systemctl start perceus.target`` runs the
same two from server/data/. ``status`` exits 0 only if both run, else 3 (as LSB init
scripts and systemctl do for "not running").
"""

from collections.abc import Iterable

import click

from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusGroup
from perceus.server.cli.options import warner
from perceus.server.services import netservices
from perceus.server.services.netservices import Change, DaemonEvent

NOT_RUNNING = 3


@click.group(cls=PerceusGroup)
def service() -> None:
    """Run the master's services: perceusd and dnsmasq (DHCP, TFTP, DNS)."""


def _report(app: App, events: Iterable[DaemonEvent]) -> None:
    """Each daemon's change as it happens: ``dnsmasq: started (pid 123)``."""
    for event in events:
        if event.change is Change.NOT_RUNNING:
            app.info(f"{event.name}: {event.change.value}")
        else:
            app.info(f"{event.name}: {event.change.value} (pid {event.pid})")


@service.command()
@pass_app
def start(app: App) -> None:
    """Start perceusd, then dnsmasq.

    If one cannot start, neither is left running."""
    _report(app, netservices.start(app.instance, warner(app)))


@service.command()
@pass_app
def stop(app: App) -> None:
    """Stop dnsmasq, then perceusd.

    SIGTERM, then a bounded wait: perceusd lets running sessions finish first."""
    _report(app, netservices.stop(app.instance))


@service.command()
@pass_app
def restart(app: App) -> None:
    """Stop, then start both services.

    dnsmasq reads a new dnsmasq.conf only when it starts."""
    _report(app, netservices.stop(app.instance))
    _report(app, netservices.start(app.instance, warner(app)))


@service.command()
@pass_app
def status(app: App) -> None:
    """Say whether each service runs.

    One line per service: running with its pid, or stopped. Exit status 0 only if
    both run, else 3."""
    down = 0
    for name, pid in netservices.status(app.instance):
        click.echo(f"{name}: running (pid {pid})" if pid is not None else f"{name}: stopped")
        down += pid is None
    if down:
        raise click.exceptions.Exit(NOT_RUNNING)
