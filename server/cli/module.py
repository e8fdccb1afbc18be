"""``perceus module``: import, activate and show the modules that extend provisioning (guide 4.6).

``module pack`` builds a ``.pmod`` from a module directory so a site can make its own;
it is the only command here that does not need an initialised master.
"""

from pathlib import Path

import click

from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusGroup
from perceus.server.cli.options import JSON
from perceus.server.cli.output import RULE
from perceus.server.modules import ModuleStore
from perceus.server.paths import Paths
from perceus.server.services import modules as service

SUMMARY_HEADER = f"{'Module':<16} {'Version':<10} {'Active states':<28} Description"
STATES_HEADER = f"{'State':<40} Modules"


def complete_modules(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    return [n for n in ModuleStore(Paths.from_environment()).names() if n.startswith(incomplete)]


MODULE = click.argument("name", metavar="MODULE", shell_complete=complete_modules)
STATES = click.argument("states", nargs=-1, metavar="[STATES]...")


@click.group(cls=PerceusGroup)
def module() -> None:
    """Import, activate and display Perceus modules."""


@module.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-f", "--force", is_flag=True, help="Replace an installed module of the same name.")
@pass_app
def import_(app: App, file: Path, force: bool) -> None:
    """Import a module capsule (.pmod); it stays inactive until activated."""
    installed = service.import_module(app.instance, file, force)
    app.info(f"Module '{installed.name}' (version {installed.info.version}) has been imported")
    app.info(f"Activate it with: perceus module activate {installed.name}")


@module.command("list")
@JSON
@pass_app
def list_(app: App, as_json: bool) -> None:
    """List the installed modules, one name a line."""
    names = service.names(app.instance)
    if as_json:
        app.emit_json(names)
        return
    for name in names:
        click.echo(name)


@module.command()
@MODULE
@STATES
@pass_app
def activate(app: App, name: str, states: tuple[str, ...]) -> None:
    """Activate MODULE at STATES such as init/all or ready/group/NAME (default: the module's own)."""
    activated = service.activate(app.instance, name, states)
    for line in activated.hook_output.splitlines():
        app.info(line)
    for activation in activated.plan.activations:
        app.info(f"Module '{name}' is active at {activation}")


@module.command()
@MODULE
@STATES
@pass_app
def deactivate(app: App, name: str, states: tuple[str, ...]) -> None:
    """Deactivate MODULE at STATES (default: everywhere it is active)."""
    places = service.deactivate(app.instance, name, states).places
    if not places:
        app.info(f"Module '{name}' is not active anywhere")
    for activation in places:
        app.info(f"Module '{name}' is no longer active at {activation}")


@module.command()
@click.argument("names", nargs=-1, required=True, metavar="MODULE...", shell_complete=complete_modules)
@pass_app
def delete(app: App, names: tuple[str, ...]) -> None:
    """Deactivate modules everywhere and remove them."""
    plan = service.delete_plan(app.instance, names)
    listing = [
        f"   {n:<20} " + (", ".join(str(a) for a in plan.active[n]) or "(not active)") for n in plan.names
    ]
    app.confirm(f"Are you sure you wish to delete {len(plan.names)} modules?", listing, "module delete")
    for name in plan.names:
        service.remove(app.instance, name)
        app.info(f"Module '{name}' has been deleted")


@module.command()
@JSON
@pass_app
def summary(app: App, as_json: bool) -> None:
    """Each module with its version, where it is active and what it does."""
    mods = service.summary(app.instance)
    if as_json:
        app.emit_json(
            [
                {
                    "name": m.name,
                    "version": m.version,
                    "active": [str(a) for a in m.active],
                    "defaults": [str(a) for a in m.defaults],
                    "secret": m.secret,
                    "description": m.description,
                }
                for m in mods
            ]
        )
        return
    app.info(SUMMARY_HEADER)
    app.info(RULE)
    for m in mods:
        states = ",".join(str(a) for a in m.active) or "-"
        click.echo(f"{m.name[:16]:<16} {m.version[:10]:<10} {states:<28} {m.description}")


@module.command()
@JSON
@pass_app
def states(app: App, as_json: bool) -> None:
    """Every nodescript state/scope directory and the modules active in it."""
    layers = service.states(app.instance)
    if as_json:
        app.emit_json({str(a): mods for a, mods in layers.items()})
        return
    app.info(STATES_HEADER)
    app.info(RULE)
    for activation, mods in layers.items():
        click.echo(f"{str(activation):<40} {', '.join(mods) or '-'}")


@module.command("pack")
@click.argument("source", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("-f", "--force", is_flag=True, help="Replace OUT if it exists.")
@pass_app
def pack_(app: App, source: Path, out: Path, force: bool) -> None:
    """Pack the module directory DIR into a .pmod capsule OUT (a file, or a directory to name it in)."""
    written = service.pack(source, out, force)
    app.info(f"Module {written.manifest.fullname} written to {written.path}")
