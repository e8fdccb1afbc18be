"""``perceus module``: import, activate and show the modules that extend provisioning (guide 4.6).

``module pack`` builds a ``.pmod`` from a module directory so a site can make its own;
it is the only command here that does not need an initialised master.
"""

from pathlib import Path

import click

from perceus import capsule
from perceus.server.cli.app import App, pass_app
from perceus.server.cli.capsule import failures
from perceus.server.cli.errors import PerceusGroup
from perceus.server.cli.output import RULE
from perceus.server.errors import InvalidRequest
from perceus.server.modules import Activation, Module, ModuleStore, links, pack
from perceus.server.paths import Paths

JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of columns.")
SUMMARY_HEADER = f"{'Module':<16} {'Version':<10} {'Active states':<28} Description"
STATES_HEADER = f"{'State':<40} Modules"


def complete_modules(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    return [n for n in ModuleStore(Paths.from_environment()).names() if n.startswith(incomplete)]


MODULE = click.argument("name", metavar="MODULE", shell_complete=complete_modules)
STATES = click.argument("states", nargs=-1, metavar="[STATES]...")


def _store(app: App) -> ModuleStore:
    app.settings  # noqa: B018 - an uninitialised master is an error before anything else
    return ModuleStore(app.paths)


def _activations(module: Module, states: tuple[str, ...], where: str) -> list[Activation]:
    """The states asked for (deduplicated, in order), or the module's defaults."""
    chosen = [Activation.parse(s, where) for s in states] if states else list(module.info.states)
    if not chosen:
        raise InvalidRequest(
            f"module '{module.name}' has no default states: name them (e.g. init/all)", where
        )
    return list(dict.fromkeys(chosen))


def _active(app: App) -> dict[str, list[Activation]]:
    """Module name -> the activations it has links in, sorted."""
    found: dict[str, set[Activation]] = {}
    for link in links.scan(app.paths):
        found.setdefault(link.module, set()).add(link.activation)
    return {name: sorted(acts) for name, acts in found.items()}


@click.group(cls=PerceusGroup)
def module() -> None:
    """Import, activate and display Perceus modules."""


@module.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-f", "--force", is_flag=True, help="Replace an installed module of the same name.")
@pass_app
@failures("module import")
def import_(app: App, file: Path, force: bool) -> None:
    """Import a module capsule (.pmod); it stays inactive until activated."""
    installed = _store(app).import_capsule(file, force, "module import", app.warn)
    app.info(f"Module '{installed.name}' (version {installed.info.version}) has been imported")
    app.info(f"Activate it with: perceus module activate {installed.name}")


@module.command("list")
@JSON
@pass_app
def list_(app: App, as_json: bool) -> None:
    """List the installed modules, one name a line."""
    names = _store(app).names()
    if as_json:
        app.emit_json(names)
        return
    for name in names:
        click.echo(name)


@module.command()
@MODULE
@STATES
@pass_app
@failures("module activate")
def activate(app: App, name: str, states: tuple[str, ...]) -> None:
    """Activate MODULE at STATES such as init/all or ready/group/NAME (default: the module's own)."""
    where = "module activate"
    store = _store(app)
    mod = store.get(name, where)
    chosen = _activations(mod, states, where)
    with store.locked():
        todo = links.plan_links(app.paths, mod, chosen, where)
        if todo:
            output = links.run_hook(app.paths, mod, chosen, links.HOOK_TIMEOUT)
            for line in output.splitlines():
                app.info(line)
            links.create_links(todo)
    for activation in chosen:
        app.info(f"Module '{name}' is active at {activation}")


@module.command()
@MODULE
@STATES
@pass_app
@failures("module deactivate")
def deactivate(app: App, name: str, states: tuple[str, ...]) -> None:
    """Deactivate MODULE at STATES (default: everywhere it is active)."""
    where = "module deactivate"
    store = _store(app)
    store.get(name, where)
    wanted = [Activation.parse(s, where) for s in states]
    with store.locked():
        mine = [link for link in links.scan(app.paths) if link.module == name]
        for activation in wanted:
            if not any(link.activation == activation for link in mine):
                raise InvalidRequest(f"module '{name}' is not active at {activation}", where)
        doomed = [link for link in mine if not wanted or link.activation in wanted]
        links.remove_links(doomed)
    places = sorted({link.activation for link in doomed})
    if not places:
        app.info(f"Module '{name}' is not active anywhere")
    for activation in places:
        app.info(f"Module '{name}' is no longer active at {activation}")


@module.command()
@click.argument("names", nargs=-1, required=True, metavar="MODULE...", shell_complete=complete_modules)
@pass_app
@failures("module delete")
def delete(app: App, names: tuple[str, ...]) -> None:
    """Deactivate modules everywhere and remove them."""
    where = "module delete"
    store = _store(app)
    doomed = [n for n in dict.fromkeys(names) if store.path_of(n, where)]
    active = _active(app)
    listing = [
        f"   {n:<20} " + (", ".join(str(a) for a in active.get(n, [])) or "(not active)") for n in doomed
    ]
    app.confirm(f"Are you sure you wish to delete {len(doomed)} modules?", listing, where)
    for name in doomed:
        store.remove(name)
        app.info(f"Module '{name}' has been deleted")


@module.command()
@JSON
@pass_app
def summary(app: App, as_json: bool) -> None:
    """Each module with its version, where it is active and what it does."""
    store = _store(app)
    active = _active(app)
    mods = [store.get(n, "module summary") for n in store.names()]
    if as_json:
        app.emit_json(
            [
                {
                    "name": m.name,
                    "version": m.info.version,
                    "active": [str(a) for a in active.get(m.name, [])],
                    "defaults": [str(a) for a in m.info.states],
                    "secret": m.info.secret,
                    "description": m.info.description,
                }
                for m in mods
            ]
        )
        return
    app.info(SUMMARY_HEADER)
    app.info(RULE)
    for m in mods:
        states = ",".join(str(a) for a in active.get(m.name, [])) or "-"
        click.echo(f"{m.name[:16]:<16} {m.info.version[:10]:<10} {states:<28} {m.info.description}")


@module.command()
@JSON
@pass_app
def states(app: App, as_json: bool) -> None:
    """Every nodescript state/scope directory and the modules active in it."""
    _store(app)
    where: dict[Activation, set[str]] = {activation: set() for activation, _ in links.layer_dirs(app.paths)}
    for link in links.scan(app.paths):
        where.setdefault(link.activation, set()).add(link.module)
    if as_json:
        app.emit_json({str(a): sorted(mods) for a, mods in sorted(where.items())})
        return
    app.info(STATES_HEADER)
    app.info(RULE)
    for activation, mods in sorted(where.items()):
        click.echo(f"{str(activation):<40} {', '.join(sorted(mods)) or '-'}")


@module.command("pack")
@click.argument("source", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("-f", "--force", is_flag=True, help="Replace OUT if it exists.")
@pass_app
@failures("module pack")
def pack_(app: App, source: Path, out: Path, force: bool) -> None:
    """Pack the module directory DIR into a .pmod capsule OUT (a file, or a directory to name it in)."""
    manifest = pack(source, out, force)
    app.info(f"Module {manifest.fullname} written to {capsule.output_path(out, manifest)}")
