"""Capsules: pack a tree, read it back member by member, verify, unpack, and the CLI around it."""

import json
import os
import pty
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from perceus import capsule
from perceus.capsule.meta import elf_arch, kernel_version, tree_arch

from tests.support.capsule_trees import BUSYBOX, listing, make_tree
from tests.support.instance import BIN, Instance

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ROOT / ".cache/debian-kernel/root/boot/vmlinuz"


@pytest.fixture
def tree(tmp_path: Path, needs_root: None) -> Path:
    """The busybox tree, its /dev/console included: the round trips keep device nodes."""
    return make_tree(tmp_path / "tree", filler=8)


@pytest.fixture
def packed(tmp_path: Path, tree: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    manifest = capsule.pack(tree, out, capsule.Meta("node", "1.0", kernel_args="quiet"), chunk_size=64 << 10)
    return capsule.output_path(out, manifest)


# -- the API ----------------------------------------------------------------------------------


def test_pack_names_the_file_by_the_guide(packed: Path) -> None:
    assert packed.name == "node-1.0-1.stateless.x86_64.vnfs"
    with capsule.open(packed) as c:
        m = c.manifest
        assert (m.kind, m.name, m.version, m.revision, m.state, m.arch, m.os) == (
            "vnfs",
            "node",
            "1.0",
            "1",
            "stateless",
            "x86_64",
            "debian-12",
        )
        assert m.tool.startswith("perceus ")
        assert m.kernel_version is None and m.kernel_args == "quiet"
        assert [x.name for x in m.members] == ["config", "hybridize", "livesync.skip", "rootfs"]
        assert capsule.capsule_filename(m) == packed.name


def test_round_trip_through_unpack(tmp_path: Path, tree: Path, packed: Path) -> None:
    manifest = capsule.unpack(packed, tmp_path / "un")
    assert listing(tmp_path / "un" / "rootfs") == listing(tree)
    assert sorted(p.name for p in (tmp_path / "un").iterdir()) == [
        "config",
        "hybridize",
        "livesync.skip",
        "rootfs",
    ]
    config = capsule.read_config((tmp_path / "un" / "config").read_text())
    assert config["KERNEL_ARGS"] == "quiet" and config["ARCH"] == "x86_64"
    assert manifest.rootfs is not None and manifest.rootfs.entries == len(listing(tree)) + 1  # + "."
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_members_read_and_copied_with_their_hash(tmp_path: Path, packed: Path) -> None:
    with capsule.open(packed) as c:
        config = c.read_member("config")
        assert b"KERNEL_ARGS" in config
        with open(tmp_path / "rootfs.img", "wb") as f:
            assert c.copy_member("rootfs", f) == c.rootfs.size
        assert len(c.rootfs_chunks) >= 3, "a small chunk size makes several chunks"
        assert c.rootfs_base % 4096 == 0
        frames = list(c.iter_rootfs_frames())
        assert b"".join(frames) == (tmp_path / "rootfs.img").read_bytes()
        with pytest.raises(capsule.CapsuleError, match="no member 'kernel'"):
            c.read_member("kernel")
        with pytest.raises(capsule.CapsuleError, match="more than the limit"):
            c.read_member("rootfs", limit=1000)


def test_verify_returns_the_manifest(packed: Path) -> None:
    assert capsule.verify(packed).fullname == "node-1.0-1.stateless.x86_64"
    assert capsule.is_capsule(packed)
    assert not capsule.legacy.is_legacy(packed)


def test_kernel_from_option_and_from_the_tree(tmp_path: Path, tree: Path) -> None:
    version = kernel_version(KERNEL)
    assert version and version.split(".")[0].isdigit() and version in KERNEL.resolve().name
    m = capsule.pack(tree, tmp_path / "a.vnfs", capsule.Meta("n", "1"), kernel=KERNEL)
    assert m.kernel_version == version and m.member("kernel").offset % 4096 == 0
    with capsule.open(tmp_path / "a.vnfs") as c:
        assert c.read_member("kernel") == KERNEL.read_bytes()
    # The tree's newest /boot/vmlinuz*, found through a symlink as the node would see it.
    (tree / "boot").mkdir()
    shutil.copy(KERNEL, tree / "boot" / "vmlinuz-old")
    os.utime(tree / "boot" / "vmlinuz-old", (1, 1))
    (tree / "boot" / "vmlinuz-9.9.9-test").write_bytes(b"not a bzImage")
    (tree / "boot" / "vmlinuz").symlink_to("vmlinuz-9.9.9-test")
    picked = []
    m = capsule.pack(tree, tmp_path / "b.vnfs", capsule.Meta("n", "1"), on_kernel=picked.append)
    assert m.kernel_version == "9.9.9-test" and picked
    m = capsule.pack(tree, tmp_path / "c.vnfs", capsule.Meta("n", "1"), kernel=False)
    assert m.kernel_version is None and not m.has("kernel")


def test_nodescripts_and_files(tmp_path: Path, tree: Path) -> None:
    scripts = tmp_path / "scripts"
    (scripts / "init").mkdir(parents=True)
    (scripts / "ready").mkdir()
    (scripts / "init" / "10-hello.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(scripts / "init" / "10-hello.sh", 0o755)
    (scripts / "ready" / "50-ping.sh").write_text("echo ready\n")
    m = capsule.pack(
        tree,
        tmp_path / "x.vnfs",
        capsule.Meta("n", "1", state="stateful"),
        nodescripts=scripts,
        files={"hybridize": "/usr/share/doc\n", "livesync.skip": b"/etc\n"},
    )
    assert m.state == "stateful"
    capsule.unpack(tmp_path / "x.vnfs", tmp_path / "un")
    hello = tmp_path / "un" / "nodescripts" / "init" / "10-hello.sh"
    assert hello.read_text().startswith("#!/bin/sh") and stat.S_IMODE(hello.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "un/nodescripts/ready/50-ping.sh").stat().st_mode) == 0o644
    assert (tmp_path / "un" / "hybridize").read_text() == "/usr/share/doc\n"
    assert (tmp_path / "un" / "livesync.skip").read_text() == "/etc\n"


def test_module_capsule(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts" / "init"
    scripts.mkdir(parents=True)
    (scripts / "masterauth").write_text("#!/bin/sh\n")
    meta = capsule.Meta("masterauth", "1.0", kind="module", state=None)
    m = capsule.pack(None, tmp_path, meta, nodescripts=tmp_path / "scripts", files={"config": "x = 1\n"})
    path = tmp_path / "masterauth-1.0-1.noarch.pmod"
    assert capsule.output_path(tmp_path, m) == path and path.is_file()
    assert capsule.verify(path).kind == "module"
    assert capsule.parse_capsule_filename(path.name)["kind"] == "module"


def test_file_name_convention() -> None:
    assert capsule.parse_capsule_filename("caos-nsa-node-1.0-1.stateless.x86_64.vnfs") == {
        "name": "caos-nsa-node",
        "version": "1.0",
        "revision": "1",
        "state": "stateless",
        "arch": "x86_64",
        "kind": "vnfs",
    }
    assert capsule.parse_capsule_filename("gentoo-2007.0-1.statefull.x86_64.vnfs")["state"] == "stateful"
    assert (
        capsule.parse_capsule_filename("/root/rhel-node-4.5-1.stateless.x86_64.vnfs")["name"] == "rhel-node"
    )
    for bad in (
        "backup.vnfs",
        "a-1-1.stateless.vax.vnfs",
        "a-1-1.sideways.x86_64.vnfs",
        "a-1.stateless.x86_64.vnfs",
    ):
        assert capsule.parse_capsule_filename(bad) is None, bad
    meta = capsule.Meta("caos-nsa-node", "1.0", "1", "stateless", "x86_64")
    assert capsule.capsule_filename(meta) == "caos-nsa-node-1.0-1.stateless.x86_64.vnfs"


def test_arch_from_elf(tmp_path: Path, tree: Path) -> None:
    assert elf_arch(BUSYBOX) == "x86_64"
    assert tree_arch(tree, None) == "x86_64"
    with pytest.raises(
        capsule.MetaError, match="architecture mismatch: --arch aarch64 but the tree's /sbin/init"
    ):
        tree_arch(tree, "aarch64")
    script_only = tmp_path / "scripts-only"
    (script_only / "sbin").mkdir(parents=True)
    (script_only / "sbin" / "init").write_text("#!/bin/sh\n")
    with pytest.raises(capsule.MetaError, match="cannot tell the tree's architecture"):
        tree_arch(script_only, None)
    assert tree_arch(script_only, "aarch64") == "aarch64"
    # An absolute symlink resolves inside the tree, never on the master.
    escape = tmp_path / "escape"
    (escape / "sbin").mkdir(parents=True)
    (escape / "sbin" / "init").symlink_to("/bin/busybox")  # the tree has no /bin/busybox
    with pytest.raises(capsule.MetaError, match="cannot tell"):
        tree_arch(escape, None)


def test_reproducible_with_source_date_epoch(tmp_path: Path, tree: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = capsule.pack(tree, tmp_path / "a.vnfs", capsule.Meta("n", "1"))
    b = capsule.pack(tree, tmp_path / "b.vnfs", capsule.Meta("n", "1"))
    assert a == b and a.created == "2023-11-14T22:13:20Z"
    assert (tmp_path / "a.vnfs").read_bytes() == (tmp_path / "b.vnfs").read_bytes()


def test_pack_refusals_leave_nothing(tmp_path: Path, tree: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(capsule.MetaError, match="name 'bad/name' is not allowed"):
        capsule.pack(tree, out, capsule.Meta("bad/name", "1"))
    with pytest.raises(capsule.MetaError, match="version '1-2' is not allowed"):
        capsule.pack(tree, out, capsule.Meta("n", "1-2"))
    with pytest.raises(capsule.CapsuleError, match="inside the tree it packs"):
        capsule.pack(tree, tree / "etc", capsule.Meta("n", "1"))
    capsule.pack(tree, out / "x.vnfs", capsule.Meta("n", "1"))
    with pytest.raises(capsule.CapsuleError, match="already exists"):
        capsule.pack(tree, out / "x.vnfs", capsule.Meta("n", "1"))
    (tmp_path / "link-config").symlink_to("/etc/shadow")
    with pytest.raises(capsule.CapsuleError, match="cannot read member config"):
        capsule.pack(tree, out / "y.vnfs", capsule.Meta("n", "1"), files={"config": tmp_path / "link-config"})

    # A failure halfway (here: while the image is written) leaves no part file behind.
    from perceus.capsule import writer

    def explode(*args, **kwargs):
        args[1].write(b"half an image")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.image, "pack_tree", explode)
    with pytest.raises(OSError, match="No space"):
        capsule.pack(tree, out / "z.vnfs", capsule.Meta("n", "1"))
    assert sorted(p.name for p in out.iterdir()) == ["x.vnfs"]


def test_unpack_refuses_a_full_target(tmp_path: Path, packed: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("mine")
    with pytest.raises(capsule.CapsuleError, match="not an empty directory"):
        capsule.unpack(packed, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep"]
    (tmp_path / "empty").mkdir()
    capsule.unpack(packed, tmp_path / "empty")
    assert (tmp_path / "empty" / "rootfs" / "bin" / "busybox").is_file()


# -- the command ------------------------------------------------------------------------------


def test_cli_pack_inspect_verify_unpack(bare: Instance, tmp_path: Path, tree: Path) -> None:
    out = tmp_path / "caps"
    out.mkdir()
    result = bare.ok(
        "capsule",
        "pack",
        str(tree),
        str(out),
        "--name",
        "caos-nsa-node",
        "--version",
        "1.0",
        "--kernel",
        str(KERNEL),
        "--kernel-args",
        "console=ttyS0 quiet",
        "--chunk-size",
        "64K",
        "--level",
        "1",
        "--threads",
        "2",
    )
    path = out / "caos-nsa-node-1.0-1.stateless.x86_64.vnfs"
    assert str(path) in result.out and path.is_file()
    assert result.err == ""  # no progress bar when stdout is not a terminal

    shown = bare.ok("capsule", "inspect", str(path)).out
    for text in (
        "caos-nsa-node-1.0-1.stateless.x86_64",
        "x86_64",
        "console=ttyS0 quiet",
        "debian-12",
        "rootfs",
        "kernel",
        "chunks",
        kernel_version(KERNEL),
    ):
        assert text in shown, text
    data = json.loads(bare.ok("capsule", "inspect", "--json", str(path)).out)
    assert data["format_version"] == 1 and data["name"] == "caos-nsa-node"
    assert {m["name"] for m in data["members"]} == {
        "config",
        "hybridize",
        "livesync.skip",
        "kernel",
        "rootfs",
    }

    assert "is intact" in bare.ok("capsule", "verify", str(path)).out
    assert bare.ok("-q", "capsule", "verify", str(path)).out == ""
    bare.ok("capsule", "unpack", str(path), str(tmp_path / "un"))
    assert (tmp_path / "un" / "kernel").read_bytes() == KERNEL.read_bytes()
    assert (tmp_path / "un" / "rootfs" / "dev" / "console").is_char_device()


def test_cli_progress_bar_only_on_a_terminal(bare: Instance, tmp_path: Path, tree: Path) -> None:
    primary, secondary = pty.openpty()
    out = tmp_path / "t-1-1.stateless.x86_64.vnfs"
    command = [str(BIN / "perceus"), "capsule", "pack", "--no-kernel", str(tree), str(out)]
    proc = subprocess.Popen(command, stdout=secondary, stderr=subprocess.PIPE, env=bare.env)
    os.close(secondary)
    shown = b""
    while True:
        try:
            piece = os.read(primary, 65536)
        except OSError:  # EIO: the command is gone and the terminal drained
            break
        if not piece:
            break
        shown += piece
    os.close(primary)
    assert proc.wait(timeout=60) == 0 and proc.stderr.read() == b""
    text = shown.decode(errors="replace")
    assert "Packing" in text and "#" in text and "100%" in text, text
    assert "written to" in text


def test_cli_metadata_from_the_output_name(bare: Instance, tmp_path: Path, tree: Path) -> None:
    """As the guide's chroot2stateless.sh example: the metadata comes from OUT's name."""
    out = tmp_path / "caos-nsa-node-0.9g-1.stateless.x86_64.vnfs"
    config = tmp_path / "config"
    config.write_text('KERNEL_ARGS="console=ttyS0 rw"\n')
    bare.ok("capsule", "pack", str(tree), str(out), "--config", str(config))
    m = capsule.verify(out)
    assert m.kernel_args == "console=ttyS0 rw"
    with capsule.open(out) as c:
        assert c.read_member("config") == config.read_bytes()
    assert (m.name, m.version, m.revision, m.state, m.arch) == (
        "caos-nsa-node",
        "0.9g",
        "1",
        "stateless",
        "x86_64",
    )


CLI_ERRORS = [
    # (extra arguments after ROOTDIR, output name, status, text in the error line)
    ((), "x.vnfs", 2, "--name is required unless OUT is named name-version-revision.state.arch.vnfs"),
    (("--name", "n"), "x.vnfs", 2, "--version is required"),
    (
        ("--name", "n", "--version", "1", "--arch", "aarch64"),
        "x.vnfs",
        2,
        "architecture mismatch: --arch aarch64 but the tree's /sbin/init is x86_64 (capsule pack)",
    ),
    (("--arch", "ppc64le"), "n-1-1.stateless.x86_64.vnfs", 2, "--arch ppc64le contradicts OUT's name"),
    (("--name", "n", "--version", "1", "--arch", "vax"), "x.vnfs", 2, "unknown architecture 'vax'"),
    (("--name", "n", "--version", "1", "--state", "floating"), "x.vnfs", 2, "Invalid value for '--state'"),
    (("--name", "n", "--version", "1", "--chunk-size", "12Q"), "x.vnfs", 2, "not a size"),
    (("--name", "n", "--version", "1", "--level", "99"), "x.vnfs", 2, "--level"),
    (
        ("--name", "n", "--version", "1", "--kernel", "/etc/hostname"),
        "x.vnfs",
        2,
        "cannot tell the kernel's version",
    ),
    (("--name", "n", "--version", "1", "--kernel", str(KERNEL), "--no-kernel"), "x.vnfs", 2, "not both"),
    (("--name", "../n", "--version", "1"), "x.vnfs", 2, "name '../n' is not allowed"),
    (("--name", "n", "--version", "1"), "no/such/dir/x.vnfs", 1, "no such directory"),
]


@pytest.mark.parametrize(("args", "name", "status", "text"), CLI_ERRORS)
def test_cli_pack_errors(bare: Instance, tmp_path: Path, tree: Path, args, name, status, text) -> None:
    out = tmp_path / "caps"
    out.mkdir()
    bare.error("capsule", "pack", str(tree), str(out / name), *args, status=status, contains=text)
    assert list(out.iterdir()) == []


def test_cli_reading_errors(bare: Instance, tmp_path: Path, packed: Path) -> None:
    bare.error(
        "capsule", "inspect", "/etc/hostname", status=1, contains="not a capsule: wrong magic (/etc/hostname)"
    )
    bare.error("capsule", "verify", str(tmp_path / "none.vnfs"), status=1, contains="No such file")
    bare.error(
        "capsule", "unpack", str(packed), str(packed.parent), status=1, contains="not an empty directory"
    )
    bare.error("capsule", "inspect", str(tmp_path), status=2, contains="is a directory")
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "f.vnfs")
    bare.error(
        "capsule", "inspect", str(tmp_path / "fifo" / "f.vnfs"), status=1, contains="not a regular file"
    )
