"""VNFS images (guide 4.3) as workflows: import, export, list, delete, clone, mount, umount,
close, rebuild and configure. Livesync is in ``services.livesync``.

Each takes the instance and a VNFS name; ``server.vnfs`` does the work on the files.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from perceus.imagefmt.image import PackResult
from perceus.server import netinfo, vnfsconfigure
from perceus.server import vnfs as vnfs_files
from perceus.server.errors import PerceusError
from perceus.server.instance import Instance
from perceus.server.services.progress import Progress, no_progress, tree_bytes
from perceus.server.vnfs import Site, Vnfs, VnfsStore

__all__ = [
    "Configured",
    "VnfsDeletion",
    "VnfsSettings",
    "clone",
    "close",
    "configure",
    "delete_plan",
    "export",
    "get",
    "import_capsule",
    "list_all",
    "master_address",
    "mount",
    "rebuild",
    "remove",
    "site",
    "store",
    "umount",
]


def store(instance: Instance) -> VnfsStore:
    """The instance's VNFS; an uninitialised master is an error before anything else."""
    instance.settings  # noqa: B018 - reading the configuration is the check
    return VnfsStore(instance.paths.vnfs_dir)


def get(instance: Instance, name: str) -> Vnfs:
    return store(instance).get(name)


def master_address(instance: Instance) -> str:
    """The address nodes reach the master at: ``vnfs transfer master``, else the master device's."""
    conf = instance.settings.perceus
    master = conf.get_list("vnfs transfer master")
    return master[0] if master else netinfo.ipv4_address(conf.get("master network device")) or ""


def site(instance: Instance) -> Site:
    """What image builds need to know about this master."""
    mount_root = Path(instance.settings.perceus.get("vnfs mount directory"))
    return Site(instance.paths.statedir, master_address(instance), mount_root)


def import_capsule(
    instance: Instance, path: Path, name: str | None = None, progress: Progress = no_progress
) -> Vnfs:
    """Import a capsule (this format or an original Perceus one) as ``name`` (default: its full name)."""
    vnfs_store = store(instance)
    with progress(lambda: path.stat().st_size if path.is_file() else None) as advance:
        return vnfs_files.import_capsule(vnfs_store, path, name, advance)


def export(
    instance: Instance, name: str, out: Path, overwrite: bool = False, progress: Progress = no_progress
) -> Path:
    """Write VNFS ``name`` out as a capsule (``out`` a file or a directory); returns the file."""
    vnfs = get(instance, name)
    with progress(lambda: vnfs.image_path.stat().st_size) as advance:
        return vnfs_files.export_capsule(vnfs, out, overwrite, advance)


def list_all(instance: Instance) -> list[Vnfs]:
    vnfs_store = store(instance)
    return [vnfs_store.get(name) for name in vnfs_store.names()]


@dataclass(frozen=True)
class VnfsDeletion:
    """The VNFS a delete removes, and the nodes (hostnames) still set to use each."""

    doomed: list[Vnfs]
    users: dict[str, list[str]]


def delete_plan(instance: Instance, names: Sequence[str]) -> VnfsDeletion:
    """What deleting ``names`` touches; a mounted VNFS is refused (umount or close it first)."""
    vnfs_store = store(instance)
    doomed = [vnfs_store.get(name) for name in names]
    for vnfs in doomed:
        if vnfs.mounted_at:
            raise PerceusError(
                f"VNFS '{vnfs.name}' is mounted at {vnfs.mounted_at}: umount or close it first"
            )
    nodes = instance.db.nodes()
    return VnfsDeletion(doomed, {v.name: [n.hostname for n in nodes if n.vnfs == v.name] for v in doomed})


def remove(instance: Instance, vnfs: Vnfs) -> None:
    store(instance).remove(vnfs)


def clone(instance: Instance, name: str, new: str) -> Vnfs:
    """Copy VNFS ``name`` to ``new`` (hybridized content hard-linked where it can be)."""
    vnfs_store = store(instance)
    return vnfs_files.clone(vnfs_store, vnfs_store.get(name), new)


def mount(instance: Instance, name: str, progress: Progress = no_progress) -> Path:
    """Unpack VNFS ``name`` into a writable working tree; returns where."""
    vnfs = get(instance, name)
    with progress(lambda: vnfs_files.image_member(vnfs).get("usize")) as advance:
        return vnfs_files.mount(vnfs, site(instance), advance)


def umount(instance: Instance, name: str, progress: Progress = no_progress) -> PackResult:
    """Rebuild the image from the working tree and remove the tree."""
    vnfs = get(instance, name)
    tree = vnfs.mounted_at
    with progress(lambda: tree_bytes(tree) if tree else None) as advance:
        return vnfs_files.umount(vnfs, site(instance), advance)


def close(instance: Instance, name: str) -> None:
    """Discard the working tree and its changes."""
    vnfs_files.close(get(instance, name))


def rebuild(instance: Instance, name: str) -> PackResult:
    """Repack the image (from the working tree if mounted), applying the hybridize list."""
    return vnfs_files.rebuild(get(instance, name), site(instance))


@dataclass(frozen=True)
class VnfsSettings:
    """What ``configure`` sets; None (or False) leaves a setting as it is."""

    console: str | None = None  # kernel console, e.g. ttyS0,115200
    master: str | None = None  # the master's address
    root_password: str | None = None
    lock_root: bool = False

    def __bool__(self) -> bool:
        return any((self.console, self.master, self.root_password, self.lock_root))


@dataclass(frozen=True)
class Configured:
    """What ``configure`` changed (as asked for)."""

    console: str | None
    master: str | None
    root: str | None  # "set", "locked", or None when root's password was left alone


def configure(instance: Instance, name: str, settings: VnfsSettings) -> Configured:
    """Set the console and master in the VNFS config file, root's password in its tree.

    The password is changed in the mounted working tree (rebuilt at umount) or, when
    none is mounted, in a scratch copy the image is rebuilt from at once.
    """
    vnfs = get(instance, name)
    build_site = site(instance)
    config = vnfs.path / "config"
    if settings.console:
        vnfsconfigure.set_console(config, settings.console)
    if settings.master:
        vnfsconfigure.set_master(config, settings.master)
    root = None
    if settings.root_password or settings.lock_root:
        with vnfs_files.editable_tree(vnfs, build_site) as tree:
            vnfsconfigure.set_root_password(tree, settings.root_password, lock=settings.lock_root)
        root = "locked" if settings.lock_root else "set"
    return Configured(settings.console or None, settings.master or None, root)
