"""The VNFS workflows called in-process: import, clone, delete, mount/umount, configure, livesync plan."""

import time
from pathlib import Path

import pytest

from perceus.server.db import Node
from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.instance import Instance
from perceus.server.paths import Paths
from perceus.server.services import capsules, vnfs
from perceus.server.services import livesync as sync

NAME = "svc-1.0-1.stateless.x86_64"


def small_tree(root: Path) -> Path:
    """Just enough of an OS for the workflows: a shell, a shadow file, docs to hybridize."""
    for directory in ("bin", "etc", "usr/share/doc/pkg", "proc", "dev"):
        (root / directory).mkdir(parents=True)
    (root / "bin" / "sh").write_bytes(b"#!/bin/true\n")
    (root / "bin" / "sh").chmod(0o755)
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    (root / "etc" / "shadow").chmod(0o640)
    (root / "etc" / "fstab").write_text("proc /proc proc defaults 0 0\n")
    (root / "etc" / "os-release").write_text("ID=test\nVERSION_ID=1\n")
    (root / "usr" / "share" / "doc" / "pkg" / "README").write_text("documentation\n")
    return root


@pytest.fixture
def master(perceus, tmp_path: Path):
    """An initialised instance (transfer master 127.0.0.1) whose working trees go under tmp_path."""
    conf = perceus.sysconfdir / "perceus.conf"
    conf.write_text(conf.read_text() + f"vnfs mount directory = {tmp_path / 'mnt'}\n")
    instance = Instance(Paths(perceus.sysconfdir, perceus.statedir))
    yield instance
    instance.close()


@pytest.fixture
def imported(master: Instance, tmp_path: Path) -> Path:
    """VNFS NAME imported from a capsule packed in-process; returns the capsule."""
    request = capsules.PackRequest(
        small_tree(tmp_path / "tree"), tmp_path / f"{NAME}.vnfs", arch="x86_64", no_kernel=True
    )
    written = capsules.pack(request)
    assert written.path == tmp_path / f"{NAME}.vnfs" and written.manifest.kernel_version is None
    assert vnfs.import_capsule(master, written.path).name == NAME
    return written.path


def add_node(master: Instance, hostname: str, vnfs_name: str, ipaddr: str = "") -> None:
    now = int(time.time())
    nodeid = f"02:00:00:00:00:{len(master.db.nodes()):02X}"
    node = Node(nodeid, hostname, "", vnfs_name, 1, 0, "", "", ipaddr, None, now, now)
    with master.db.transaction():
        master.db.insert_node(node)


def test_import_clone_list_and_delete(master: Instance, imported: Path) -> None:
    assert [v.name for v in vnfs.list_all(master)] == [NAME]
    with pytest.raises(PerceusError, match=f"VNFS '{NAME}' already exists"):
        vnfs.import_capsule(master, imported)
    with pytest.raises(InvalidRequest, match="not a VNFS name"):
        vnfs.import_capsule(master, imported, "../evil")

    copy = vnfs.clone(master, NAME, "copy")
    assert copy.path == master.paths.vnfs_dir / "copy" and copy.manifest()["name"] == "svc"
    assert [v.name for v in vnfs.list_all(master)] == ["copy", NAME]

    add_node(master, "n0000", "copy")
    plan = vnfs.delete_plan(master, ["copy"])
    assert [v.name for v in plan.doomed] == ["copy"] and plan.users == {"copy": ["n0000"]}
    assert (master.paths.vnfs_dir / "copy").is_dir()  # planning deleted nothing
    for doomed in plan.doomed:
        vnfs.remove(master, doomed)
    assert [v.name for v in vnfs.list_all(master)] == [NAME]
    assert not any(p.name.startswith(".") for p in master.paths.vnfs_dir.iterdir())


@pytest.mark.root  # mounting restores the root-owned hybridize symlink
def test_mount_edit_umount_and_close(master: Instance, imported: Path, tmp_path: Path) -> None:
    tree = vnfs.mount(master, NAME)
    assert tree == tmp_path / "mnt" / NAME and vnfs.get(master, NAME).mounted_at == tree
    with pytest.raises(PerceusError, match="umount or close it first"):
        vnfs.delete_plan(master, [NAME])
    (tree / "etc" / "motd").write_text("changed\n")
    result = vnfs.umount(master, NAME)
    assert result.entries > 0 and not tree.exists()
    # the default hybridize list moved /usr/share/doc onto the NFS mount
    hybrid = master.paths.vnfs_dir / NAME / "hybrid" / "usr" / "share" / "doc" / "pkg" / "README"
    assert hybrid.read_text() == "documentation\n"

    tree = vnfs.mount(master, NAME)
    assert (tree / "etc" / "motd").read_text() == "changed\n"
    assert (tree / "usr" / "share" / "doc" / "pkg" / "README").is_file()
    (tree / "etc" / "motd").write_text("thrown away\n")
    vnfs.close(master, NAME)
    assert vnfs.get(master, NAME).mounted_at is None
    assert (vnfs.mount(master, NAME) / "etc" / "motd").read_text() == "changed\n"


@pytest.mark.root  # mounting restores the root-owned hybridize symlink
def test_configure(master: Instance, imported: Path) -> None:
    image = (master.paths.vnfs_dir / NAME / "image").read_bytes()
    done = vnfs.configure(master, NAME, vnfs.VnfsSettings(console="ttyS1", master="10.0.0.1"))
    assert (done.console, done.master, done.root) == ("ttyS1", "10.0.0.1", None)
    config = (master.paths.vnfs_dir / NAME / "config").read_text()
    assert "console=ttyS1,115200" in config and 'MASTER="10.0.0.1"' in config
    assert (master.paths.vnfs_dir / NAME / "image").read_bytes() == image  # the config only: no rebuild

    assert vnfs.configure(master, NAME, vnfs.VnfsSettings(lock_root=True)).root == "locked"
    tree = vnfs.mount(master, NAME)
    shadow = (tree / "etc" / "shadow").read_text().splitlines()
    assert shadow[0].startswith("root:!") and shadow[1].startswith("daemon:*")
    assert vnfs.configure(master, NAME, vnfs.VnfsSettings(root_password="s3cret")).root == "set"
    assert (tree / "etc" / "shadow").read_text().startswith("root:$6$")  # in the mounted tree
    assert not vnfs.VnfsSettings() and vnfs.VnfsSettings(lock_root=True)
    with pytest.raises(InvalidRequest, match="not a console device"):
        vnfs.configure(master, NAME, vnfs.VnfsSettings(console="tty S0"))


def test_livesync_plan(master: Instance, imported: Path) -> None:
    with pytest.raises(PerceusError, match="is not mounted: livesync copies from the working tree"):
        sync.plan_livesync(master, NAME)
    tree = vnfs.mount(master, NAME)
    with pytest.raises(PerceusError, match=f"no nodes use VNFS '{NAME}'"):
        sync.plan_livesync(master, NAME)
    add_node(master, "n0000", NAME, "10.0.0.5")
    add_node(master, "n0001", "other")
    plan = sync.plan_livesync(master, NAME)
    assert plan.tree == tree and plan.targets == [("n0000", "10.0.0.5")]
    assert plan.statedir_mount == str(master.paths.statedir)
    assert "/usr/share/doc" in plan.hybridized and "/etc/ssh/ssh_host_" in plan.skip
    chosen = [n for n in master.db.nodes() if n.hostname == "n0001"]
    assert sync.plan_livesync(master, NAME, chosen).targets == [("n0001", "n0001")]


def test_livesync_fails_a_node_with_a_bad_address_alone(master: Instance, imported: Path) -> None:
    vnfs.mount(master, NAME)
    add_node(master, "n0000", NAME, "-oProxyCommand=x")
    synced = sync.run_livesync(sync.plan_livesync(master, NAME), dry_run=True, timeout=5)
    assert synced.failed == 1
    assert synced.results["n0000"] == ("failed", "not a node address: '-oProxyCommand=x'")


def test_errors_name_no_command(master: Instance, imported: Path) -> None:
    """The CLI names the command; a service names only real places, or nothing."""
    for call in (
        lambda: vnfs.get(master, "nope"),
        lambda: vnfs.umount(master, NAME),
        lambda: vnfs.clone(master, NAME, NAME),
        lambda: sync.plan_livesync(master, NAME),
    ):
        with pytest.raises(PerceusError) as info:
            call()
        assert info.value.where == "", info.value
    with pytest.raises(PerceusError) as info:
        vnfs.import_capsule(master, Path("/nonexistent.vnfs"))
    assert info.value.where == "/nonexistent.vnfs"
