"""``perceus vnfs``: import, export, mount/umount, hybridize, clone, delete, configure."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.capsule_trees import rich_tree, snapshot
from tests.support.instance import Instance

NAME = "test-1.0-1.stateless.x86_64"


@pytest.fixture
def site(perceus: Instance, tmp_path: Path) -> Instance:
    conf = perceus.sysconfdir / "perceus.conf"
    conf.write_text(conf.read_text() + f"vnfs mount directory = {tmp_path / 'mnt'}\n")
    return perceus


@pytest.fixture
def imported(site: Instance, tmp_path: Path, needs_root: None) -> Path:
    tree = rich_tree(tmp_path / "tree")
    site.ok("capsule", "pack", str(tree), str(tmp_path / f"{NAME}.vnfs"), "--no-kernel")
    site.ok("vnfs", "import", str(tmp_path / f"{NAME}.vnfs"))
    return tree


def unpacked(site: Instance, tmp_path: Path, label: str) -> Path:
    """Export the VNFS and unpack the capsule: the root tree a node would get."""
    out = tmp_path / f"{label}.vnfs"
    site.ok("vnfs", "export", NAME, str(out))
    site.ok("capsule", "unpack", str(out), str(tmp_path / label))
    return tmp_path / label / "rootfs"


def test_pack_import_export_unpack_round_trip(site: Instance, imported: Path, tmp_path: Path) -> None:
    assert site.ok("vnfs", "list").lines == [NAME]
    stored = site.statedir / "vnfs" / NAME
    assert {p.name for p in stored.iterdir()} >= {
        "image",
        "manifest.json",
        "config",
        "hybridize",
        "livesync.skip",
    }
    assert snapshot(unpacked(site, tmp_path, "exported")) == snapshot(imported)


def test_mount_edit_umount(site: Instance, imported: Path, tmp_path: Path) -> None:
    mounted = tmp_path / "mnt" / NAME
    assert f"is mounted at {mounted}" in site.ok("vnfs", "mount", NAME).out
    assert site.ok("vnfs", "list").lines == [f"{NAME} (mounted at {mounted})"]
    assert json.loads(site.ok("vnfs", "list", "--json").out) == [{"name": NAME, "mounted": str(mounted)}]
    assert (mounted / "usr/share/doc/pkg/README").read_text() == "documentation\n"
    (mounted / "etc/motd").write_text("changed in the working tree\n")
    site.error("vnfs", "mount", NAME, status=1, contains="already mounted")
    site.error("-y", "vnfs", "delete", NAME, status=1, contains="umount or close it first")
    site.ok("vnfs", "umount", NAME)
    assert not mounted.exists()
    tree = unpacked(site, tmp_path, "after")
    assert (tree / "etc/motd").read_text() == "changed in the working tree\n"
    # the default hybridize list moved /usr/share/doc off the image, onto the NFS mount
    statedir = site.statedir
    assert os.readlink(tree / "usr/share/doc") == f"{statedir}/vnfs/{NAME}/hybrid/usr/share/doc"
    assert (statedir / "vnfs" / NAME / "hybrid/usr/share/doc/pkg/README").read_text() == "documentation\n"
    assert f"127.0.0.1:{statedir}/vnfs {statedir}/vnfs nfs" in (tree / "etc/fstab").read_text()
    # mounting again brings the hybridized content back into the working tree
    site.ok("vnfs", "mount", NAME)
    assert (mounted / "usr/share/doc/pkg/README").is_file() and not (mounted / "usr/share/doc").is_symlink()


def test_close_discards(site: Instance, imported: Path, tmp_path: Path) -> None:
    image = (site.statedir / "vnfs" / NAME / "image").read_bytes()
    site.ok("vnfs", "mount", NAME)
    (tmp_path / "mnt" / NAME / "etc/motd").write_text("throw me away\n")
    site.ok("vnfs", "close", NAME)
    assert not (tmp_path / "mnt" / NAME).exists()
    assert (site.statedir / "vnfs" / NAME / "image").read_bytes() == image
    site.error("vnfs", "close", NAME, status=1, contains="is not mounted")


def test_umount_refused_while_something_is_mounted_inside(
    site: Instance, imported: Path, tmp_path: Path
) -> None:
    site.ok("vnfs", "mount", NAME)
    inside = tmp_path / "mnt" / NAME / "proc"
    subprocess.run(["mount", "-t", "tmpfs", "none", str(inside)], check=True)
    try:
        site.error(
            "vnfs",
            "umount",
            NAME,
            status=1,
            contains=f"something is mounted inside the working tree: {inside}",
        )
        site.error("vnfs", "close", NAME, status=1, contains="something is mounted inside")
    finally:
        subprocess.run(["umount", str(inside)], check=True)
    site.ok("vnfs", "umount", NAME)


def test_hybridizing_the_state_directory_is_refused(site: Instance, imported: Path) -> None:
    hybridize = site.statedir / "vnfs" / NAME / "hybridize"
    hybridize.write_text(f"/usr/share/doc\n{site.statedir}\n")
    before = (site.statedir / "vnfs" / NAME / "image").read_bytes()
    site.error("vnfs", "rebuild", NAME, status=1, contains=f"{hybridize}:2")
    hybridize.write_text("/var/*\n")
    site.error("vnfs", "rebuild", NAME, status=1, contains=f"{hybridize}:1")
    assert (site.statedir / "vnfs" / NAME / "image").read_bytes() == before


def test_rebuild_applies_a_new_hybridize_list(site: Instance, imported: Path, tmp_path: Path) -> None:
    (site.statedir / "vnfs" / NAME / "hybridize").write_text("/srv\n")
    site.ok("vnfs", "rebuild", NAME)
    tree = unpacked(site, tmp_path, "rebuilt")
    assert (tree / "srv").is_symlink() and not (tree / "usr/share/doc").is_symlink()
    assert (site.statedir / "vnfs" / NAME / "hybrid/srv/owned").stat().st_uid == 1234


def test_clone_and_delete(site: Instance, imported: Path, tmp_path: Path) -> None:
    site.ok("vnfs", "clone", NAME, "copy")
    assert site.ok("vnfs", "list").lines == ["copy", NAME]
    site.ok("node", "add", "00:11:22:33:44:55")
    site.ok("node", "set", "vnfs", "copy", "n0000")
    site.error("vnfs", "delete", "copy", input="n\n", status=1, contains="not confirmed")
    result = site.ok("vnfs", "delete", "copy", input="y\n")
    assert "1 nodes use VNFS 'copy'" in result.err
    assert site.ok("vnfs", "list").lines == [NAME]
    assert not any(p.name.startswith(".") for p in (site.statedir / "vnfs").iterdir())


def test_configure(site: Instance, imported: Path, tmp_path: Path) -> None:
    site.ok("vnfs", "configure", NAME, "--console", "ttyS0,115200", "--master", "10.0.0.1")
    config = (site.statedir / "vnfs" / NAME / "config").read_text()
    assert "console=ttyS0,115200" in config and 'MASTER="10.0.0.1"' in config
    site.ok("vnfs", "configure", NAME, "--root-password", "s3cret")
    shadow = (unpacked(site, tmp_path, "configured") / "etc/shadow").read_text().splitlines()
    assert shadow[0].startswith("root:$6$") and shadow[1].startswith("daemon:*")
    prompted = site.ok("vnfs", "configure", NAME, input="ttyS1\n10.0.0.2\n\n\n")
    assert "console=ttyS1" in prompted.out


def test_import_refusals_leave_nothing(site: Instance, imported: Path, tmp_path: Path) -> None:
    capsule_file = tmp_path / f"{NAME}.vnfs"
    site.error("vnfs", "import", str(capsule_file), status=1, contains=f"VNFS '{NAME}' already exists")
    junk = tmp_path / "junk.vnfs"
    junk.write_bytes(b"\0" * 4096)
    site.error("vnfs", "import", str(junk), status=1, contains="not a VNFS capsule")
    damaged = tmp_path / "damaged.vnfs"
    data = bytearray(capsule_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    site.error("vnfs", "import", str(damaged), "--name", "damaged", status=1, contains="damaged.vnfs")
    site.error("vnfs", "import", str(tmp_path / "missing.vnfs"), status=1, contains="no such file")
    site.error("vnfs", "import", str(capsule_file), "--name", "../evil", status=2, contains="not a VNFS name")
    assert sorted(p.name for p in (site.statedir / "vnfs").iterdir()) == [NAME]


def test_unknown_vnfs_and_livesync_errors(site: Instance, imported: Path) -> None:
    for args in (
        ("export", "nope", "/tmp/x.vnfs"),
        ("mount", "nope"),
        ("umount", "nope"),
        ("rebuild", "nope"),
    ):
        site.error("vnfs", *args, status=1, contains="VNFS 'nope' does not exist")
    site.error("vnfs", "livesync", NAME, status=1, contains="is not mounted")
    site.ok("vnfs", "mount", NAME)
    site.error("vnfs", "livesync", NAME, status=1, contains=f"no nodes use VNFS '{NAME}'")
