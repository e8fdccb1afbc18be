"""``perceus vnfs``: import, export, list, delete, clone, mount, umount, close, rebuild,
configure and livesync the VNFS images nodes are provisioned with (guide 4.3)."""

from pathlib import Path

import click

from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusGroup
from perceus.server.cli.options import JSON, complete_nodes, selected
from perceus.server.cli.output import progress_bar
from perceus.server.errors import PerceusError
from perceus.server.paths import Paths
from perceus.server.services import livesync as sync
from perceus.server.services import vnfs as service
from perceus.server.vnfs import VnfsStore


def complete_vnfs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    return [n for n in VnfsStore(Paths.from_environment().vnfs_dir).names() if n.startswith(incomplete)]


NAME = click.argument("name", shell_complete=complete_vnfs)


@click.group(cls=PerceusGroup)
def vnfs() -> None:
    """Import, delete, modify and sync VNFS capsules."""


@vnfs.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--name", help="Name to import it as (default: name-version-revision.state.arch).")
@pass_app
def import_(app: App, file: Path, name: str | None) -> None:
    """Import a .vnfs capsule (this format, or an original Perceus one)."""
    imported = service.import_capsule(app.instance, file, name, progress_bar("Importing"))
    app.info(f"VNFS '{imported.name}' has been imported")
    app.info(f"Configure it with: perceus vnfs configure {imported.name}")


@vnfs.command()
@NAME
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-f", "--force", is_flag=True, help="Overwrite FILE if it exists.")
@pass_app
def export(app: App, name: str, file: Path, force: bool) -> None:
    """Write VNFS NAME out as a capsule (FILE may be a directory)."""
    path = service.export(app.instance, name, file, force, progress_bar("Exporting"))
    app.info(f"VNFS '{name}' has been exported to {path}")


@vnfs.command("list")
@JSON
@pass_app
def list_(app: App, as_json: bool) -> None:
    """List imported VNFS; mounted ones say where."""
    entries = service.list_all(app.instance)
    if as_json:
        app.emit_json(
            [{"name": v.name, "mounted": str(v.mounted_at) if v.mounted_at else None} for v in entries]
        )
        return
    for v in entries:
        click.echo(f"{v.name} (mounted at {v.mounted_at})" if v.mounted_at else v.name)


@vnfs.command()
@click.argument("names", nargs=-1, required=True, shell_complete=complete_vnfs)
@pass_app
def delete(app: App, names: tuple[str, ...]) -> None:
    """Delete VNFS images (refused while mounted)."""
    where = "vnfs delete"
    plan = service.delete_plan(app.instance, names)
    for v in plan.doomed:
        if plan.users[v.name]:
            app.warn(f"perceus: warning: {len(plan.users[v.name])} nodes use VNFS '{v.name}' ({where})")
    app.confirm(
        f"Are you sure you wish to delete {len(plan.doomed)} VNFS?",
        [f"   {v.name}" for v in plan.doomed],
        where,
    )
    for v in plan.doomed:
        service.remove(app.instance, v)
        app.info(f"VNFS '{v.name}' has been deleted")


@vnfs.command("clone")
@NAME
@click.argument("new")
@pass_app
def clone_(app: App, name: str, new: str) -> None:
    """Copy VNFS NAME to NEW."""
    service.clone(app.instance, name, new)
    app.info(f"VNFS '{name}' has been cloned to '{new}'")


@vnfs.command()
@NAME
@pass_app
def mount(app: App, name: str) -> None:
    """Unpack VNFS NAME into a writable working tree (chroot into it to change it)."""
    target = service.mount(app.instance, name, progress_bar("Mounting"))
    app.info(f"VNFS '{name}' is mounted at {target}")


@vnfs.command()
@NAME
@pass_app
def umount(app: App, name: str) -> None:
    """Rebuild the image from the working tree and remove the tree."""
    result = service.umount(app.instance, name, progress_bar("Rebuilding"))
    app.info(f"VNFS '{name}' has been rebuilt ({result.entries} entries, {len(result.chunks)} chunks)")


@vnfs.command()
@NAME
@pass_app
def close(app: App, name: str) -> None:
    """Discard the working tree and its changes."""
    service.close(app.instance, name)
    app.info(f"VNFS '{name}' has been closed; its changes were discarded")


@vnfs.command()
@NAME
@pass_app
def rebuild(app: App, name: str) -> None:
    """Repack the image (from the working tree if mounted), applying the hybridize list."""
    result = service.rebuild(app.instance, name)
    app.info(f"VNFS '{name}' has been rebuilt ({result.entries} entries, {len(result.chunks)} chunks)")


@vnfs.command()
@NAME
@click.option("--root-password", help="Root's password in the image.")
@click.option("--lock-root", is_flag=True, help="Lock root's password instead.")
@click.option("--console", help="Kernel console, e.g. ttyS0,115200.")
@click.option("--master", help="Address of the Perceus master.")
@pass_app
def configure(app: App, name: str, root_password, lock_root, console, master) -> None:
    """Set root's password, the console and the master address; prompts unless flags or -y."""
    settings = service.VnfsSettings(console, master, root_password, lock_root)
    service.get(app.instance, name)
    if not settings and not app.assume_yes:
        settings = service.VnfsSettings(
            console=click.prompt("Kernel console", default="ttyS0,115200"),
            master=click.prompt("Perceus master address", default=service.master_address(app.instance)),
            root_password=click.prompt(
                "Root password (empty keeps it)",
                default="",
                hide_input=True,
                confirmation_prompt=True,
                show_default=False,
            )
            or None,
        )
    done = service.configure(app.instance, name, settings)
    if done.console:
        app.info(f"console={done.console}")
    if done.master:
        app.info(f"master={done.master}")
    if done.root:
        app.info(f"root password {done.root}")


@vnfs.command()
@NAME
@click.argument("nodes", nargs=-1, shell_complete=complete_nodes)
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
@click.option("--parallel", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option(
    "--timeout", type=click.FloatRange(1), default=600.0, show_default=True, help="Seconds per node."
)
@pass_app
def livesync(app: App, name: str, nodes, dry_run: bool, parallel: int, timeout: float) -> None:
    """rsync the mounted VNFS onto running nodes (default: every node using it)."""
    chosen = selected(app, nodes) if nodes else None
    plan = sync.plan_livesync(app.instance, name, chosen)
    synced = sync.run_livesync(plan, parallel=parallel, dry_run=dry_run, timeout=timeout)
    for host in sorted(synced.results):
        status, message = synced.results[host]
        click.echo(f"{host}: {status}: {message}")
    if synced.failed:
        raise PerceusError(f"{synced.failed} of {len(synced.results)} nodes failed")
