"""``perceus info``: about, config KEY, system."""

import click

from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusGroup
from perceus.server.services import site

ABOUT = """\
Perceus {version}

Perceus provisions and manages the nodes of a cluster: nodes boot a small stage one,
check in with the master on TCP port 987, receive their VNFS image and run it.
This is a Python re-creation of the original Perceus by Infiscale, compatible with its
configuration files, commands and node scripts.
"""


@click.group(cls=PerceusGroup)
def info() -> None:
    """Print various aspects about Perceus."""


@info.command()
def about() -> None:
    """What this program is."""
    from perceus.server.cli import VERSION

    click.echo(ABOUT.format(version=VERSION))


@info.command()
@click.argument("key", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def config(app: App, key: str | None, as_json: bool) -> None:
    """Print the value of configuration KEY (every key when none is given)."""
    if key is not None:
        value = site.config_value(app.instance, key)
        app.emit_json({key: value}) if as_json else click.echo(value)
        return
    values = {k: site.config_value(app.instance, k) for k in site.config_keys()}
    if as_json:
        app.emit_json(values)
    else:
        for k, v in values.items():
            click.echo(f"{k} = {v}")


@info.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def system(app: App, as_json: bool) -> None:
    """Perceus information, status, and the master's system configuration."""
    from perceus.server.cli import VERSION

    data = {"version": VERSION} | site.system_info(app.instance)
    conf, vnfs, devices = data["config"], data["vnfs"], data["devices"]
    if as_json:
        app.emit_json(data)
        return
    lines = [
        "Perceus Information:",
        f"   {'Version:':<28} {VERSION}",
        f"   {'Database:':<28} {data['database']} (schema {data['schema_version']})",
        f"   {'Configuration directory:':<28} {data['sysconfdir']}",
        f"   {'State directory:':<28} {data['statedir']}",
    ]
    lines += [f"     {k + ':':<25} {v}" for k, v in conf.items()]
    lines += [
        "",
        "Perceus Status:",
        f"   Nodes configured: {data['nodes']}",
        f"   VNFS capsules imported: {', '.join(vnfs) or '(none)'}",
    ]
    lines += ["", "System Configuration:", f"   {'Release:':<28} {data['release']}"]
    lines += [f"   {dev + ':':<28} {addr or '(no address)'}" for dev, addr in devices.items()]
    lines += [
        f"   {'Architecture:':<28} {data['architecture']}",
        f"   {'Kernel Release:':<28} {data['kernel']}",
    ]
    click.echo("\n".join(lines))
