"""The stage-one builder's parts: ELF dependencies, kernel modules, the frozen program, the tree.

Real inputs only: Debian's python3.11 and libc on this machine, Debian's kernel modules
unpacked under .cache/debian-kernel (the Makefile's ``kernel`` target).
"""

import io
import stat
import zipfile
from pathlib import Path

import pytest

from perceus.buildroot import elfdeps, kmods, pyfreeze
from perceus.buildroot.tree import InitramfsTree
from perceus.common import newc
from perceus.server.cli import run

ROOT = Path(__file__).resolve().parents[1]
KERNEL_ROOT = ROOT / ".cache" / "debian-kernel" / "root"
VERSION = next((KERNEL_ROOT / "lib" / "modules").iterdir()).name


# -- ELF -------------------------------------------------------------------------------


def test_python_needs_its_loader_and_libc_read_from_elf_headers():
    interp, needed, _ = elfdeps.elf_info(Path("/usr/bin/python3.11"))
    assert interp == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in needed and "libm.so.6" in needed
    closure = [p.name for p in elfdeps.needed_closure([Path("/usr/bin/python3.11")])]
    assert closure[0] == "ld-linux-x86-64.so.2"
    assert {"libc.so.6", "libm.so.6", "libz.so.1", "libexpat.so.1"} <= set(closure)


def test_a_library_nowhere_to_be_found_is_an_error():
    with pytest.raises(elfdeps.ElfDepsError, match="libm.so.6 not found"):
        elfdeps.needed_closure([Path("/usr/bin/python3.11")], search=())


def test_a_file_that_is_not_elf_is_an_error(tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(elfdeps.ElfDepsError, match="not a readable ELF"):
        elfdeps.elf_info(script)


# -- kernel modules ----------------------------------------------------------------------


def test_modinfo_gives_dependencies_and_aliases():
    tree = kmods.KernelModules(KERNEL_ROOT, VERSION)
    rel = tree.paths()["virtio_net"]
    info = kmods.read_modinfo(tree.moddir / rel, rel)
    assert "net_failover" in info.depends
    assert any(alias.startswith("virtio:d00000001v") for alias in info.aliases)


def test_closure_puts_dependencies_first_and_the_index_matches():
    tree = kmods.KernelModules(KERNEL_ROOT, VERSION)
    order = [m.name for m in tree.closure(["virtio_net"])]
    assert order.index("failover") < order.index("net_failover") < order.index("virtio_net")
    infos = tree.closure(["virtio_net"])
    dep = kmods.modules_dep(infos)
    line = next(x for x in dep.splitlines() if x.startswith(tree.paths()["virtio_net"] + ":"))
    assert tree.paths()["net_failover"] in line and tree.paths()["failover"] in line
    assert "alias virtio:d00000001v* virtio_net" in kmods.modules_alias(infos)


def test_select_takes_names_dashes_and_path_globs():
    tree = kmods.KernelModules(KERNEL_ROOT, VERSION)
    assert tree.select(("virtio-net",)) == ["virtio_net"]
    assert "e1000e" in tree.select(("drivers/net/ethernet/intel/*",))
    assert tree.select(("no_such_module",)) == []


def test_missing_kernel_tree_is_an_error(tmp_path):
    with pytest.raises(kmods.ModulesError, match="no kernel modules"):
        kmods.KernelModules(tmp_path, "1.2.3").paths()


# -- the frozen program -----------------------------------------------------------------


@pytest.fixture(scope="module")
def frozen() -> pyfreeze.Frozen:
    return pyfreeze.freeze()


def test_frozen_zip_holds_stage_one_and_no_excluded_modules(frozen):
    names = set(zipfile.ZipFile(io.BytesIO(frozen.zip_bytes)).namelist())
    for module in ("perceus/stage1/main.pyc", "perceus/stage1/__main__.pyc", "construct/core.pyc"):
        assert module in names
    assert "pyroute2/dhcp/client.pyc" in names
    assert "perceus/stage1/simulate.pyc" not in names  # main reaches it, a booting node never runs it
    assert "perceus/common/newc.pyc" in names  # stage one's DESTDIR archive: the shared newc writer
    assert not any(n.startswith(("tkinter/", "unittest/case", "sqlite3/", "pyroute2/ndb/")) for n in names)
    assert "perceus/__init__.pyc" not in names  # perceus stays a namespace package
    assert not frozen.missing


def test_shared_objects_and_their_package_stay_on_disk(frozen):
    assert "_asyncio" in frozen.extensions and "perceus.native.syscalls" in frozen.extensions
    assert "_cffi_backend" in frozen.extensions
    assert "perceus/native/sysio.pyc" in frozen.disk_files
    names = zipfile.ZipFile(io.BytesIO(frozen.zip_bytes)).namelist()
    assert not any(n.startswith("perceus/native/") for n in names)


def test_stubs_replace_what_a_node_never_uses(frozen):
    zf = zipfile.ZipFile(io.BytesIO(frozen.zip_bytes))
    assert zf.getinfo("pyroute2/__init__.pyc").file_size < 1000
    assert "pdb.pyc" in zf.namelist() and zf.getinfo("pdb.pyc").file_size < 2000


# -- the tree ---------------------------------------------------------------------------


def test_mirror_recreates_the_hosts_symlink_chain():
    tree = InitramfsTree()
    tree.host_layout()
    key = tree.mirror("/lib64/ld-linux-x86-64.so.2", "python")
    assert key == "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    link = tree.entries["usr/lib64/ld-linux-x86-64.so.2"]
    assert stat.S_ISLNK(link.mode) and link.data.decode().endswith("x86_64-linux-gnu/ld-linux-x86-64.so.2")
    assert stat.S_ISLNK(tree.entries["lib64"].mode)


def test_archive_has_parents_first_devices_and_part_sizes():
    tree = InitramfsTree()
    tree.add_file("etc/perceus/masterip", b"10.0.0.1\n", part="base")
    tree.add_device("dev/console", stat.S_IFCHR, 5, 1)
    entries = newc.read_entries(tree.cpio())
    names = [e.name.decode() for e in entries]
    assert names.index("etc") < names.index("etc/perceus") < names.index("etc/perceus/masterip")
    console = next(e for e in entries if e.name == b"dev/console")
    assert stat.S_ISCHR(console.mode) and (console.rdevmajor, console.rdevminor) == (5, 1)
    assert tree.part_sizes()["base"] == len(b"10.0.0.1\n")


def test_paths_escaping_the_root_are_refused():
    with pytest.raises(ValueError, match="bad path"):
        InitramfsTree().add_file("../etc/passwd", b"")


# -- the command's mistakes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--kernel-version", "9.9.9"], 1, "kernel 9.9.9 not found"),
        (["--extra-modules", "no_such_driver"], 1, "no such kernel module"),
        (["--extra-modules", "bad;name"], 2, "not a module name"),
        (["--master", "[::1"], 2, "--master"),
        (["--site-key", "/nonexistent/site.key"], 1, "cannot read the site key"),
    ],
)
def test_bad_build_options_are_one_line_and_write_nothing(tmp_path, capsys, args, status, message):
    out = tmp_path / "stage1.img"
    code = run(["stage1", "build", "-o", str(out), "--kernel-root", str(KERNEL_ROOT), *args])
    err = capsys.readouterr().err
    assert code == status
    assert err.startswith("perceus: error: ") and message in err and err.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


# -- the admin's path: default locations, then the TFTP tree from them ---------------------


@pytest.mark.slow
def test_default_build_lands_where_configure_tftp_looks(perceus):
    """``stage1 build`` with no -o: initramfs and its kernel in $STATEDIR/stage1, which
    ``configure tftp`` then serves with no arguments; master and site key baked in."""
    key = perceus.root / "site.key"
    key.write_bytes(b"k" * 32)
    result = perceus.ok(
        "stage1", "build", "--kernel-root", str(KERNEL_ROOT), "--master", "10.9.8.7", "--site-key", str(key)
    )
    assert "within" in result.out
    stage1 = perceus.statedir / "stage1"
    kernel = KERNEL_ROOT / "boot" / f"vmlinuz-{VERSION}"
    assert (stage1 / "vmlinuz").read_bytes() == kernel.read_bytes()
    entries = {e.name.decode(): e for e in newc.read_entries(_unzstd(stage1 / "initramfs.img"))}
    assert entries["etc/perceus/masterip"].data == b"10.9.8.7:987\n"
    assert (
        entries["etc/perceus/site.key"].data == b"k" * 32
        and entries["etc/perceus/site.key"].mode & 0o777 == 0o600
    )
    assert f"usr/lib/modules/{VERSION}/modules.alias" in entries and "init" in entries
    perceus.env["PERCEUS_RUNDIR"] = str(perceus.root / "run")
    perceus.ok("configure", "tftp", "--master", "10.9.8.7")
    tftp = perceus.statedir / "tftp" / "perceus"
    assert (tftp / "stage1.img").read_bytes() == (stage1 / "initramfs.img").read_bytes()
    assert (tftp / "vmlinuz").read_bytes() == kernel.read_bytes()


def _unzstd(path: Path) -> bytes:
    import zstandard

    with zstandard.ZstdDecompressor().stream_reader(path.open("rb")) as reader:
        return reader.read()
