"""``perceus vnfs``: import, export, list, delete, clone, mount, umount, close, rebuild,
configure and livesync the VNFS images nodes are provisioned with (guide 4.3)."""

import sys
from pathlib import Path

import click

from perceus.server import livesync as sync
from perceus.server import netinfo, vnfsconfigure
from perceus.server import vnfs as store_ops
from perceus.server.cli.app import App, pass_app
from perceus.server.cli.capsule import failures, progress_bar, tree_bytes
from perceus.server.cli.completion import complete_nodes
from perceus.server.cli.errors import PerceusGroup
from perceus.server.cli.node import JSON, selected
from perceus.server.errors import PerceusError
from perceus.server.hybridize import matches, parse_hybridize
from perceus.server.vnfs import Vnfs, VnfsStore


def _store(app: App) -> VnfsStore:
    app.settings  # noqa: B018 - an uninitialised master is an error before anything else
    return VnfsStore(app.paths.vnfs_dir)


def _site(app: App) -> store_ops.Site:
    conf = app.settings.perceus
    master = conf.get_list("vnfs transfer master")
    address = master[0] if master else netinfo.ipv4_address(conf.get("master network device")) or ""
    return store_ops.Site(app.paths.statedir, address, Path(conf.get("vnfs mount directory")))


def complete_vnfs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    from perceus.server.paths import Paths

    return [n for n in VnfsStore(Paths.from_environment().vnfs_dir).names() if n.startswith(incomplete)]


NAME = click.argument("name", shell_complete=complete_vnfs)


def _users(app: App, name: str) -> list[str]:
    return [n.hostname for n in app.db.nodes() if n.vnfs == name]


@click.group(cls=PerceusGroup)
def vnfs() -> None:
    """Import, delete, modify and sync VNFS capsules."""


@vnfs.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--name", help="Name to import it as (default: name-version-revision.state.arch).")
@pass_app
@failures("vnfs import")
def import_(app: App, file: Path, name: str | None) -> None:
    """Import a .vnfs capsule (this format, or an original Perceus one)."""
    with progress_bar("Importing", file.stat().st_size if file.is_file() else None) as advance:
        imported = store_ops.import_capsule(_store(app), file, name, "vnfs import", advance)
    app.info(f"VNFS '{imported.name}' has been imported")
    app.info(f"Configure it with: perceus vnfs configure {imported.name}")


@vnfs.command()
@NAME
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-f", "--force", is_flag=True, help="Overwrite FILE if it exists.")
@pass_app
@failures("vnfs export")
def export(app: App, name: str, file: Path, force: bool) -> None:
    """Write VNFS NAME out as a capsule (FILE may be a directory)."""
    vnfs = _store(app).get(name, "vnfs export")
    with progress_bar("Exporting", vnfs.image_path.stat().st_size) as advance:
        path = store_ops.export_capsule(vnfs, file, force, advance)
    app.info(f"VNFS '{name}' has been exported to {path}")


@vnfs.command("list")
@JSON
@pass_app
def list_(app: App, as_json: bool) -> None:
    """List imported VNFS; mounted ones say where."""
    store = _store(app)
    entries = [store.get(n, "vnfs list") for n in store.names()]
    if as_json:
        app.emit_json(
            [{"name": v.name, "mounted": str(v.mounted_at) if v.mounted_at else None} for v in entries]
        )
        return
    for v in entries:
        print(f"{v.name} (mounted at {v.mounted_at})" if v.mounted_at else v.name)


@vnfs.command()
@click.argument("names", nargs=-1, required=True, shell_complete=complete_vnfs)
@pass_app
@failures("vnfs delete")
def delete(app: App, names: tuple[str, ...]) -> None:
    """Delete VNFS images (refused while mounted)."""
    where = "vnfs delete"
    store = _store(app)
    doomed = [store.get(n, where) for n in names]
    for v in doomed:
        if v.mounted_at:
            raise PerceusError(
                f"VNFS '{v.name}' is mounted at {v.mounted_at}: umount or close it first", where
            )
        users = _users(app, v.name)
        if users:
            app.warn(f"perceus: warning: {len(users)} nodes use VNFS '{v.name}' ({where})")
    app.confirm(
        f"Are you sure you wish to delete {len(doomed)} VNFS?", [f"   {v.name}" for v in doomed], where
    )
    for v in doomed:
        store.remove(v)
        app.info(f"VNFS '{v.name}' has been deleted")


@vnfs.command("clone")
@NAME
@click.argument("new")
@pass_app
@failures("vnfs clone")
def clone_(app: App, name: str, new: str) -> None:
    """Copy VNFS NAME to NEW."""
    store = _store(app)
    store_ops.clone(store, store.get(name, "vnfs clone"), new, "vnfs clone")
    app.info(f"VNFS '{name}' has been cloned to '{new}'")


@vnfs.command()
@NAME
@pass_app
@failures("vnfs mount")
def mount(app: App, name: str) -> None:
    """Unpack VNFS NAME into a writable working tree (chroot into it to change it)."""
    v = _store(app).get(name, "vnfs mount")
    with progress_bar("Mounting", store_ops.image_member(v).get("usize")) as advance:
        target = store_ops.mount(v, _site(app), "vnfs mount", advance)
    app.info(f"VNFS '{name}' is mounted at {target}")


@vnfs.command()
@NAME
@pass_app
@failures("vnfs umount")
def umount(app: App, name: str) -> None:
    """Rebuild the image from the working tree and remove the tree."""
    v = _store(app).get(name, "vnfs umount")
    total = tree_bytes(v.mounted_at) if v.mounted_at and sys.stdout.isatty() else None
    with progress_bar("Rebuilding", total) as advance:
        result = store_ops.umount(v, _site(app), "vnfs umount", advance)
    app.info(f"VNFS '{name}' has been rebuilt ({result.entries} entries, {len(result.chunks)} chunks)")


@vnfs.command()
@NAME
@pass_app
@failures("vnfs close")
def close(app: App, name: str) -> None:
    """Discard the working tree and its changes."""
    store_ops.close(_store(app).get(name, "vnfs close"), "vnfs close")
    app.info(f"VNFS '{name}' has been closed; its changes were discarded")


@vnfs.command()
@NAME
@pass_app
@failures("vnfs rebuild")
def rebuild(app: App, name: str) -> None:
    """Repack the image (from the working tree if mounted), applying the hybridize list."""
    result = store_ops.rebuild(_store(app).get(name, "vnfs rebuild"), _site(app), "vnfs rebuild")
    app.info(f"VNFS '{name}' has been rebuilt ({result.entries} entries, {len(result.chunks)} chunks)")


@vnfs.command()
@NAME
@click.option("--root-password", help="Root's password in the image.")
@click.option("--lock-root", is_flag=True, help="Lock root's password instead.")
@click.option("--console", help="Kernel console, e.g. ttyS0,115200.")
@click.option("--master", help="Address of the Perceus master.")
@pass_app
@failures("vnfs configure")
def configure(app: App, name: str, root_password, lock_root, console, master) -> None:
    """Set root's password, the console and the master address; prompts unless flags or -y."""
    where = "vnfs configure"
    v = _store(app).get(name, where)
    site = _site(app)
    if not any((root_password, lock_root, console, master)) and not app.assume_yes:
        console = click.prompt("Kernel console", default="ttyS0,115200")
        master = click.prompt("Perceus master address", default=site.master or "")
        root_password = (
            click.prompt(
                "Root password (empty keeps it)",
                default="",
                hide_input=True,
                confirmation_prompt=True,
                show_default=False,
            )
            or None
        )
    config = v.path / "config"
    if console:
        vnfsconfigure.set_console(config, console)
        app.info(f"console={console}")
    if master:
        vnfsconfigure.set_master(config, master)
        app.info(f"master={master}")
    if root_password or lock_root:
        with store_ops.editable_tree(v, site, where) as tree:
            vnfsconfigure.set_root_password(tree, root_password, lock=lock_root)
        app.info("root password locked" if lock_root else "root password set")


@vnfs.command()
@NAME
@click.argument("nodes", nargs=-1, shell_complete=complete_nodes)
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
@click.option("--parallel", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option(
    "--timeout", type=click.FloatRange(1), default=600.0, show_default=True, help="Seconds per node."
)
@pass_app
@failures("vnfs livesync")
def livesync(app: App, name: str, nodes, dry_run: bool, parallel: int, timeout: float) -> None:
    """rsync the mounted VNFS onto running nodes (default: every node using it)."""
    where = "vnfs livesync"
    v: Vnfs = _store(app).get(name, where)
    tree = v.mounted_at
    if tree is None:
        raise PerceusError(f"VNFS '{name}' is not mounted: livesync copies from the working tree", where)
    chosen = selected(app, nodes, where) if nodes else [n for n in app.db.nodes() if n.vnfs == name]
    if not chosen:
        raise PerceusError(f"no nodes use VNFS '{name}'", where)
    skip_file, hybrid_file = v.path / "livesync.skip", v.path / "hybridize"
    skip = sync.parse_skip(skip_file.read_text(), str(skip_file)) if skip_file.is_file() else []
    patterns = parse_hybridize(hybrid_file.read_text(), str(hybrid_file)) if hybrid_file.is_file() else []
    hybridized = patterns + ["/" + p for p in matches(tree, patterns)]
    results = sync.livesync(
        tree,
        sync.node_targets(chosen),
        skip,
        hybridized,
        parallel=parallel,
        dry_run=dry_run,
        timeout=timeout,
        statedir_mount=str(app.paths.statedir),
    )
    failed = 0
    for host in sorted(results):
        status, message = results[host]
        failed += status != "ok"
        print(f"{host}: {status}: {message}")
    if failed:
        raise PerceusError(f"{failed} of {len(results)} nodes failed", where)
