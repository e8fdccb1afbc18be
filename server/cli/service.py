"""``perceus service``: start, stop and check perceusd and dnsmasq together.

The guide's two services (3.1.4) as plain processes with pidfiles in $PERCEUS_RUNDIR
(default /run/perceus); on a systemd master, ``systemctl start perceus.target`` runs the
same two from server/data/. ``status`` exits 0 only if both run, else 3 (as LSB init
scripts and systemctl do for "not running").
"""

import click

from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusGroup
from perceus.server.errors import PerceusError
from perceus.server.netservices import dnsmasq, master, services

NOT_RUNNING = 3


def _services(app: App) -> list[services.Service]:
    return [
        services.perceusd_service(),
        services.dnsmasq_service(app.paths.dnsmasq_conf.absolute(), master.dnsmasq_pidfile().absolute()),
    ]


@click.group(cls=PerceusGroup)
def service() -> None:
    """Run the master's services: perceusd and dnsmasq (DHCP, TFTP, DNS)."""


def _start(app: App) -> None:
    where = "service start"
    app.settings  # noqa: B018 - an uninitialised master is an error before anything starts
    conf = app.paths.dnsmasq_conf
    if not conf.exists():
        raise PerceusError("no dnsmasq configuration: run 'perceus configure dnsmasq' first", str(conf))
    dnsmasq.check_file(conf)
    started: list[services.Service] = []
    try:
        for each in _services(app):
            pid = each.pid()
            if pid is not None:
                app.info(f"{each.name}: already running (pid {pid})")
                continue
            pid = services.start(each)
            started.append(each)
            app.info(f"{each.name}: started (pid {pid})")
    except PerceusError as exc:
        for each in reversed(started):  # all or nothing: do not leave half the services up
            try:
                services.stop(each)
            except PerceusError as again:
                app.warn(f"perceus: warning: {again} ({where})")
        raise exc from None


def _stop(app: App) -> None:
    failures = []
    for each in reversed(_services(app)):
        try:
            pid = services.stop(each)
        except PerceusError as exc:
            failures.append(exc)
            continue
        app.info(f"{each.name}: stopped (pid {pid})" if pid is not None else f"{each.name}: was not running")
    if failures:
        raise failures[0]


@service.command()
@pass_app
def start(app: App) -> None:
    """Start perceusd, then dnsmasq.

    If one cannot start, neither is left running."""
    _start(app)


@service.command()
@pass_app
def stop(app: App) -> None:
    """Stop dnsmasq, then perceusd.

    SIGTERM, then a bounded wait: perceusd lets running sessions finish first."""
    _stop(app)


@service.command()
@pass_app
def restart(app: App) -> None:
    """Stop, then start both services.

    dnsmasq reads a new dnsmasq.conf only when it starts."""
    _stop(app)
    _start(app)


@service.command()
@pass_app
def status(app: App) -> None:
    """Say whether each service runs.

    One line per service: running with its pid, or stopped. Exit status 0 only if
    both run, else 3."""
    down = 0
    for each in _services(app):
        pid = each.pid()
        click.echo(f"{each.name}: running (pid {pid})" if pid is not None else f"{each.name}: stopped")
        down += pid is None
    if down:
        raise click.exceptions.Exit(NOT_RUNNING)
