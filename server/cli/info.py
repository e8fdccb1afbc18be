"""``perceus info``: about, config KEY, system."""

import platform

import click

from perceus.server import netinfo
from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusGroup
from perceus.server.config import DEFAULTS_KEYS, PERCEUS_KEYS
from perceus.server.errors import PerceusError

ABOUT = """\
Perceus {version}

Perceus provisions and manages the nodes of a cluster: nodes boot a small stage one,
check in with the master on TCP port 987, receive their VNFS image and run it.
This is a Python re-creation of the original Perceus by Infiscale, compatible with its
configuration files, commands and node scripts.
"""


def config_value(app: App, key: str) -> str:
    """A configuration value as ``info config`` reports it, with derived defaults filled in."""
    special = {
        "sysconfdir": str(app.paths.sysconfdir),
        "statedir": str(app.paths.statedir),
        "database": str(app.paths.database_file),
    }
    if key in special:
        return special[key]
    settings = app.settings
    names = {k.name: settings.perceus for k in PERCEUS_KEYS} | {
        k.name: settings.defaults for k in DEFAULTS_KEYS
    }
    if key not in names:
        raise PerceusError(f"no configuration key {key!r}", "info config")
    value = names[key].get(key)
    if key == "vnfs transfer master" and not value:
        value = netinfo.ipv4_address(settings.perceus.get("master network device")) or ""
    return value


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
        value = config_value(app, key)
        app.emit_json({key: value}) if as_json else click.echo(value)
        return
    keys = [k.name for k in PERCEUS_KEYS + DEFAULTS_KEYS] + ["statedir", "sysconfdir", "database"]
    values = {k: config_value(app, k) for k in keys}
    if as_json:
        app.emit_json(values)
    else:
        for k, v in values.items():
            click.echo(f"{k} = {v}")


def _release() -> str:
    try:
        data = platform.freedesktop_os_release()
        return data.get("PRETTY_NAME", "unknown")
    except OSError:
        return "unknown"


@info.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def system(app: App, as_json: bool) -> None:
    """Perceus information, status, and the master's system configuration."""
    from perceus.server.cli import VERSION

    settings = app.settings
    conf = {k.name: settings.perceus.get(k.name) for k in PERCEUS_KEYS if k.name != "database pass"}
    vnfs = sorted(p.name for p in app.paths.vnfs_dir.iterdir()) if app.paths.vnfs_dir.is_dir() else []
    devices = {dev: netinfo.ipv4_address(dev) or "" for dev in netinfo.interfaces()}
    data = {
        "version": VERSION,
        "database": str(app.paths.database_file),
        "schema_version": app.db.schema_version,
        "sysconfdir": str(app.paths.sysconfdir),
        "statedir": str(app.paths.statedir),
        "config": conf,
        "nodes": len(app.db.nodes()),
        "vnfs": vnfs,
        "release": _release(),
        "devices": devices,
        "architecture": platform.machine(),
        "kernel": platform.release(),
    }
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
