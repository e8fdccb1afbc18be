"""A failure at any step of a VNFS or node update leaves the old state or the new, never a mix,
and running the command again finishes it (issue 10, section 4).

Each command runs in-process (``perceus.server.cli.run``) with ``os.replace``, ``os.rename``,
``os.unlink`` and the rename exchange failing at their k-th call, for every k until the
command completes without reaching k; in two modes: that call alone fails (the command's own
clean-up runs), or every call from it on fails (like a crash there: no rename or removal after
it happens, so nothing the command would tidy up on its way out gets tidied).
"""

import asyncio
import errno
import gc
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from perceus.common import atomicfile
from perceus.imagefmt import image
from perceus.server import hybridize
from perceus.server import vnfs as vnfs_mod
from perceus.server.cli import run
from perceus.server.db.sqlite import SQLiteDatabase
from perceus.server.errors import PerceusError
from perceus.server.netservices import pxelinux
from perceus.server.perceusd.memo import Memo
from perceus.server.perceusd.offer import open_offer

from tests.support.capsule_trees import rich_tree, snapshot
from tests.support.instance import Instance

NAME = "test-1.0-1.stateless.x86_64"
MODES = {"once": False, "crash": True}
STEPS = ((os, "replace"), (os, "rename"), (os, "unlink"), (atomicfile, "exchange"))


class FailingSteps:
    """Counts the steps and fails the k-th (with ``crash``, every one from the k-th on)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, k: int, crash: bool) -> None:
        self.k, self.crash, self.calls, self.reached = k, crash, 0, False
        for module, name in STEPS:
            monkeypatch.setattr(module, name, self._failing(getattr(module, name)))

    def _failing(self, real: Callable) -> Callable:
        def step(*args, **kwargs):
            self.calls += 1
            if self.calls == self.k or (self.crash and self.calls > self.k):
                self.reached = True
                raise OSError(errno.EIO, "injected failure")
            return real(*args, **kwargs)

        return step


def contents(root: Path) -> dict:
    """The tree as ``snapshot`` sees it, without its hard-link groups: which files the
    hybridized content shares with a working tree depends on whether that tree is still there."""
    return {path: entry for path, entry in snapshot(root).items() if path != "<hardlinks>"}


@dataclass
class Site:
    """An instance on a tmpfs, driven in-process, and a copy of it to go back to before each run."""

    instance: Instance
    monkeypatch: pytest.MonkeyPatch

    @property
    def saved(self) -> Path:
        return self.instance.root.parent / "saved"

    @property
    def scratch(self) -> Path:
        return self.instance.root.parent / "scratch"

    @property
    def vnfs_dir(self) -> Path:
        return self.instance.statedir / "vnfs"

    @property
    def mount_root(self) -> Path:
        return self.instance.root / "mnt"

    def save(self) -> None:
        subprocess.run(["cp", "-a", str(self.instance.root), str(self.saved)], check=True)

    def restore(self) -> None:
        shutil.rmtree(self.instance.root)
        subprocess.run(["cp", "-a", str(self.saved), str(self.instance.root)], check=True)

    def run(self, argv: list[str], steps: tuple[int, bool] | None = None) -> tuple[int, FailingSteps | None]:
        """``perceus ARGV`` in this process, with the steps failing as ``(k, crash)`` says."""
        with self.monkeypatch.context() as patch:
            for key, value in self.instance.env.items():
                if key.startswith("PERCEUS_") or key == "HOME":
                    patch.setenv(key, value)
            failing = FailingSteps(patch, *steps) if steps else None
            return run(argv), failing


@pytest.fixture
def on_tmpfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, needs_root: None
) -> Iterator[Callable[[Instance], Site]]:
    """Moves an instance onto a private tmpfs: each k restores it and removes trees, and the
    disk here takes milliseconds per unlink."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount)], check=True)

    def move(instance: Instance) -> Site:
        root = mount / "instance"
        subprocess.run(["cp", "-a", str(instance.root), str(root)], check=True)
        for link in ("vnfs", "nodescripts"):
            (root / "etc" / link).unlink()
            (root / "etc" / link).symlink_to(root / "var" / link)
        env = {key: value.replace(str(instance.root), str(root)) for key, value in instance.env.items()}
        (mount / "scratch").mkdir()
        return Site(Instance(root, env), monkeypatch)

    try:
        yield move
    finally:
        gc.collect()  # the in-process commands' database handles, if a cycle holds them
        subprocess.run(["umount", str(mount)], check=True)


def crash_at_every_step(
    site: Site,
    argv: list[str],
    state: Callable[[], object],
    finish: Callable[[int, object, object, object], None],
) -> dict[str, int]:
    """Run ``argv`` from the saved state with each step failing in turn; after each failure
    ``finish(status, state after, old, new)`` checks the state and completes the command.
    Returns, per mode, how many values of k were run (the last one completes untouched)."""
    site.restore()
    old = state()
    status, counted = site.run(argv, (0, False))
    assert status == 0 and counted is not None and not counted.reached
    new = state()
    assert new != old
    covered = {}
    for mode, crash in MODES.items():
        k = 1
        while True:
            site.restore()
            status, failing = site.run(argv, (k, crash))
            assert failing is not None
            if not failing.reached:
                assert status == 0 and state() == new
                break
            finish(status, state(), old, new)
            k += 1
        assert k == counted.calls + 1
        covered[mode] = k
    return covered


# -- VNFS ---------------------------------------------------------------------------------------


def vnfs_state(site: Site) -> tuple | None:
    """What readers see of the VNFS: its image (opened and checked against its manifest by
    perceusd's own reader, then unpacked as it is) and the hybridized content the manifest
    names; None while there is no VNFS."""
    v = vnfs_mod.Vnfs(NAME, site.vnfs_dir / NAME)
    if not v.manifest_path.is_file():
        return None
    opened = asyncio.run(open_offer(v, Memo()))
    raw = site.scratch / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    try:
        image.extract(opened.image, opened.chunks, raw)
    finally:
        opened.close()
    hybrid = vnfs_mod.stored_image(v).hybrid
    return contents(raw), contents(hybrid) if hybrid.is_dir() else {}


def assert_settled(site: Site) -> None:
    """The directory holds what its manifest names, the links point there, and nothing else."""
    v = vnfs_mod.Vnfs(NAME, site.vnfs_dir / NAME)
    stored = vnfs_mod.stored_image(v)
    assert os.readlink(v.path / "image") == stored.path.name
    if stored.hybrid.name != "hybrid":
        assert os.readlink(v.path / "hybrid") == stored.hybrid.name
    known = {"manifest.json", "image", "hybrid", "kernel", "config", "hybridize", "livesync.skip", "mounted"}
    assert {p.name for p in v.path.iterdir()} <= known | {stored.path.name, stored.hybrid.name}
    assert not [p.name for p in site.vnfs_dir.iterdir() if p.name.startswith(".")]


def rerun_if_failed(site: Site, argv: list[str]) -> Callable[[int, object, object, object], None]:
    def finish(status: int, after: object, old: object, new: object) -> None:
        assert after in (old, new)
        if status != 0:
            assert site.run(argv)[0] == 0
        assert vnfs_state(site) == new
        assert_settled(site)

    return finish


@pytest.fixture
def capsule_file(perceus: Instance, tmp_path: Path, needs_root: None) -> Path:
    tree = rich_tree(tmp_path / "tree")
    perceus.ok("capsule", "pack", str(tree), str(tmp_path / f"{NAME}.vnfs"), "--no-kernel")
    return tmp_path / f"{NAME}.vnfs"


@pytest.fixture
def site(perceus: Instance, on_tmpfs: Callable[[Instance], Site]) -> Site:
    site = on_tmpfs(perceus)
    conf = site.instance.sysconfdir / "perceus.conf"
    conf.write_text(conf.read_text() + f"vnfs mount directory = {site.mount_root}\n")
    return site


def test_import(site: Site, capsule_file: Path) -> None:
    site.save()
    argv = ["vnfs", "import", str(capsule_file)]
    covered = crash_at_every_step(site, argv, lambda: vnfs_state(site), rerun_if_failed(site, argv))
    assert covered["once"] >= 3


@pytest.mark.slow
def test_rebuild_with_a_new_hybridize_list(site: Site, capsule_file: Path) -> None:
    site.instance.ok("vnfs", "import", str(capsule_file))
    site.instance.ok("vnfs", "rebuild", NAME)  # /usr/share/doc is hybridized
    (site.vnfs_dir / NAME / "hybridize").write_text("/srv\n")  # now /srv instead
    site.save()
    argv = ["vnfs", "rebuild", NAME]
    covered = crash_at_every_step(site, argv, lambda: vnfs_state(site), rerun_if_failed(site, argv))
    assert covered["once"] > 10


@pytest.mark.slow
def test_rebuild_of_a_vnfs_in_the_old_layout(site: Site, capsule_file: Path) -> None:
    """A VNFS written by the previous release: a plain image file, a hybrid directory and a
    manifest naming neither. Readers take it as it is; its first rebuild moves it over."""
    site.instance.ok("vnfs", "import", str(capsule_file))
    site.instance.ok("vnfs", "rebuild", NAME)
    path = site.vnfs_dir / NAME
    manifest = json.loads((path / "manifest.json").read_text())
    rootfs = manifest["members"][0]
    (path / "image").unlink()
    (path / rootfs.pop("file")).rename(path / "image")
    (path / "hybrid").unlink()
    (path / rootfs.pop("hybrid")).rename(path / "hybrid")
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "hybridize").write_text("/srv\n")
    site.save()
    argv = ["vnfs", "rebuild", NAME]
    covered = crash_at_every_step(site, argv, lambda: vnfs_state(site), rerun_if_failed(site, argv))
    assert covered["once"] > 10


@pytest.mark.slow
def test_umount(site: Site, capsule_file: Path) -> None:
    site.instance.ok("vnfs", "import", str(capsule_file))
    site.instance.ok("vnfs", "mount", NAME)
    tree = site.mount_root / NAME
    (tree / "etc/motd").write_text("changed in the working tree\n")
    (tree / "usr/share/doc/pkg/NEWS").write_text("hybridized at umount\n")
    # The NFS mount point the image needs, made now rather than by umount (which would give
    # its directories the time of each run, and the runs compared here differ in time).
    hybridize.ensure_mount_point(tree, f"{site.instance.statedir}/vnfs")
    site.save()

    def state() -> tuple:
        mounted = vnfs_mod.Vnfs(NAME, site.vnfs_dir / NAME).mounted_at
        return vnfs_state(site), contents(mounted) if mounted else None

    argv = ["vnfs", "umount", NAME]

    def finish(status: int, after: tuple, old: tuple, new: tuple) -> None:
        # Besides old and new, one more: the new image committed, the tree not closed yet
        # (what ``vnfs rebuild`` leaves of a mounted VNFS); umount again finishes it.
        assert after in (old, (new[0], old[1]), new)
        if status != 0:
            assert site.run(argv)[0] == 0
        assert state() == new
        assert_settled(site)

    covered = crash_at_every_step(site, argv, state, finish)
    assert covered["once"] > 10


# -- nodes and their pxelinux files ---------------------------------------------------------------

MACS = ("52:54:00:AA:00:01", "52:54:00:AA:00:02", "52:54:00:AA:00:03")
STRANGER = "01-52-54-00-bb-00-09"  # a hand-written file for a machine perceus does not manage


@pytest.fixture
def nodes(net: Instance, stage1: tuple[Path, Path], on_tmpfs: Callable[[Instance], Site]) -> Site:
    kernel, initramfs = stage1
    for mac in MACS:
        net.ok("node", "add", mac)
    net.ok("configure", "tftp", "--kernel", str(kernel), "--initramfs", str(initramfs))
    net.ok("node", "set", "boot", "local", "n0000")
    net.ok("node", "set", "boot", "perceus", "n0001")
    (net.statedir / "tftp/pxelinux.cfg" / STRANGER).write_text("DEFAULT local\n")
    site = on_tmpfs(net)
    site.save()
    return site


def node_state(site: Site) -> tuple:
    """The database's nodes and the per-node files (hidden files aside)."""
    rows = tuple(site.instance.sql("SELECT nodeid, hostname FROM nodes ORDER BY nodeid"))
    cfg = site.instance.statedir / "tftp/pxelinux.cfg"
    return rows, {p.name: p.read_text() for p in sorted(cfg.iterdir()) if not p.name.startswith(".")}


def reconcile(site: Site, argv: list[str]) -> Callable[[int, tuple, tuple, tuple], None]:
    """A failure before the commit changes nothing and the command runs again; after it, the
    command warns and succeeds, each file is its old or its new self, and the next sync (which
    every node delete and replace runs) brings them in line."""
    tftp = site.instance.statedir / "tftp"

    def finish(status: int, after: tuple, old: tuple, new: tuple) -> None:
        rows, files = after
        if status != 0:
            assert after == old
            assert site.run(argv)[0] == 0
        else:
            assert rows == new[0]
            for name, text in files.items():
                assert text in (old[1].get(name), new[1].get(name)), name
            db = SQLiteDatabase(site.instance.database)
            try:
                pxelinux.sync_boot_files(tftp, db.nodes(), lambda line: None)
            finally:
                db.close()
        assert node_state(site) == new
        assert not list((tftp / "pxelinux.cfg").glob(f"{pxelinux.PENDING}*"))

    return finish


def test_node_delete(nodes: Site) -> None:
    argv = ["-y", "node", "delete", "n0000", "n0002"]
    covered = crash_at_every_step(nodes, argv, lambda: node_state(nodes), reconcile(nodes, argv))
    assert covered["once"] >= 2


def test_node_replace(nodes: Site) -> None:
    argv = ["-y", "node", "replace", "n0000", "n0001"]
    covered = crash_at_every_step(nodes, argv, lambda: node_state(nodes), reconcile(nodes, argv))
    assert covered["once"] >= 3


def test_a_reader_reads_the_manifest_again_when_its_image_has_gone(
    site: Site, capsule_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """perceusd and export take no lock: an update may remove the image file a reader has just
    read the name of. The reader then finds the newer manifest; a file still missing after
    that is an error naming it."""
    site.instance.ok("vnfs", "import", str(capsule_file))
    v = vnfs_mod.Vnfs(NAME, site.vnfs_dir / NAME)
    current = vnfs_mod.stored_image(v)
    gone = vnfs_mod.StoredImage(v.path / "image.0000000000000000", {}, [], current.hybrid)
    answers = [gone, current]
    monkeypatch.setattr(vnfs_mod, "stored_image", lambda vnfs: answers.pop(0) if answers else gone)
    opened, stored = vnfs_mod.open_image(v)
    with opened:
        assert stored == current and os.fstat(opened.fileno()).st_size == current.member["size"]
    answers[:] = [gone, gone]
    with pytest.raises(PerceusError, match="cannot open the VNFS image") as caught:
        vnfs_mod.open_image(v)
    assert caught.value.where == str(gone.path)
