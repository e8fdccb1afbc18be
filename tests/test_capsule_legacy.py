"""Original Perceus capsules (a bzip2 tar of config, nodescripts/ and rootfs/): converted on
import, and every hostile tar refused in one line with nothing written outside."""

import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from perceus import capsule

from tests.support.capsule_trees import listing, make_tree
from tests.support.instance import Instance

NAME = "caos-nsa-node-1.0-1.stateless.x86_64"


def legacy_dir(base: Path, *, device: bool = False) -> Path:
    """An original capsule's directory: config, hybridize, nodescripts/<state>/, rootfs/."""
    top = base / NAME
    make_tree(top / "rootfs", device=device)
    (top / "config").write_text('# VNFS config\nKERNEL_ARGS="console=tty0 quiet"\n')
    (top / "hybridize").write_text("/usr/share/doc\n")
    (top / "nodescripts" / "init").mkdir(parents=True)
    (top / "nodescripts" / "init" / "05-hello").write_text("#!/bin/sh\necho hello\n")
    os.chmod(top / "nodescripts" / "init" / "05-hello", 0o755)
    return top


def tar_dir(top: Path, out: Path, *, prefix: bool = True, mode: str = "w:bz2") -> Path:
    with tarfile.open(out, mode) as tar:
        if prefix:
            tar.add(top, arcname=top.name)
        else:
            for child in sorted(top.iterdir()):
                tar.add(child, arcname=child.name)
    return out


def tar_entries(out: Path, *entries: tarfile.TarInfo | tuple) -> Path:
    """A bzip2 tar of crafted entries: TarInfo objects or (name, data) regular files."""
    with tarfile.open(out, "w:bz2", format=tarfile.GNU_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tuple):
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif entry.isreg() and entry.size:
                tar.addfile(entry, io.BytesIO(b"\0" * entry.size))
            else:
                tar.addfile(entry)
    return out


def info(
    name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 0, **extra
) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.linkname, t.size = kind, linkname, size
    t.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in extra.items():
        setattr(t, key, value)
    return t


BUSYBOX_ROOTFS = ("rootfs/bin/busybox", Path("/bin/busybox").read_bytes())


def test_convert_an_original_capsule(tmp_path: Path) -> None:
    top = legacy_dir(tmp_path / "src")
    legacy = tar_dir(top, tmp_path / f"{NAME}.vnfs")
    assert capsule.legacy.is_legacy(legacy) and not capsule.is_capsule(legacy)
    out = tmp_path / "out"
    out.mkdir()
    m = capsule.legacy.convert(legacy, out)
    path = out / f"{NAME}.vnfs"
    assert capsule.output_path(out, m) == path
    assert (m.name, m.version, m.revision, m.state, m.arch) == (
        "caos-nsa-node",
        "1.0",
        "1",
        "stateless",
        "x86_64",
    )
    assert m.kernel_args == "console=tty0 quiet"
    assert capsule.verify(path) == m
    capsule.unpack(path, tmp_path / "un")
    assert listing(tmp_path / "un" / "rootfs") == listing(top / "rootfs")
    assert (tmp_path / "un" / "config").read_text() == (top / "config").read_text()
    assert (tmp_path / "un" / "hybridize").read_text() == "/usr/share/doc\n"
    assert (tmp_path / "un" / "livesync.skip").is_file()  # the default, since the original had none
    assert os.access(tmp_path / "un" / "nodescripts" / "init" / "05-hello", os.X_OK)
    assert sorted(p.name for p in out.iterdir()) == [path.name]  # the work directory is gone


@pytest.mark.root  # the tree and the unpacked capsule hold a device node
def test_convert_without_a_top_directory_and_with_devices(tmp_path: Path) -> None:
    top = legacy_dir(tmp_path / "src", device=True)
    legacy = tar_dir(top, tmp_path / "old.vnfs", prefix=False, mode="w:gz")
    meta = capsule.Meta("old", "2.0", kernel_args="ro")
    with pytest.raises(capsule.CapsuleError, match="device node"):
        capsule.legacy.convert(legacy, tmp_path / "a.vnfs", meta=meta)
    m = capsule.legacy.convert(legacy, tmp_path / "a.vnfs", meta=meta, allow_devices=True)
    assert m.kernel_args == "ro" and m.name == "old"
    capsule.unpack(tmp_path / "a.vnfs", tmp_path / "un")
    assert (tmp_path / "un" / "rootfs" / "dev" / "console").is_char_device()


def test_convert_reads_the_config_strictly_and_says_where(tmp_path: Path) -> None:
    """The legacy config is read as perceusd reads it: a line it cannot read names old.vnfs:config:N."""
    top = legacy_dir(tmp_path / "src")
    (top / "config").write_text('# VNFS config\nKERNEL_ARGS = "console=tty0 quiet"  # spaced\n')
    m = capsule.legacy.convert(tar_dir(top, tmp_path / f"{NAME}.vnfs"), tmp_path / "a.vnfs")
    assert m.kernel_args == "console=tty0 quiet"
    (top / "config").write_text('# VNFS config\nKERNEL_ARGS="$EXTRA quiet"\n')
    (tmp_path / "bad").mkdir()
    legacy = tar_dir(top, tmp_path / "bad" / f"{NAME}.vnfs")
    with pytest.raises(capsule.CapsuleError) as exc:
        capsule.legacy.convert(legacy, tmp_path / "b.vnfs")
    assert str(exc.value) == f"shell expansion ($) is not supported in values ({legacy}:config:2)"
    assert not (tmp_path / "b.vnfs").exists()


def test_convert_needs_metadata(tmp_path: Path) -> None:
    legacy = tar_dir(legacy_dir(tmp_path / "src"), tmp_path / "backup.vnfs")
    with pytest.raises(capsule.MetaError, match="cannot tell name, version"):
        capsule.legacy.convert(legacy, tmp_path / "x.vnfs")
    wrong = tmp_path / "caos-nsa-node-1.0-1.stateless.aarch64.vnfs"
    shutil.copy(legacy, wrong)
    with pytest.raises(capsule.MetaError, match="architecture mismatch: --arch aarch64"):
        capsule.legacy.convert(wrong, tmp_path / "x.vnfs")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src", "backup.vnfs", wrong.name])


def _bomb(tmp_path: Path) -> Path:
    return tar_entries(
        tmp_path / f"{NAME}.vnfs", info("rootfs/", tarfile.DIRTYPE), info("rootfs/big", size=3 << 20)
    )


HOSTILE = {
    "absolute path": (lambda o: [info("/rootfs/x")], "entry '/rootfs/x' is an absolute path"),
    "absolute outside": (lambda o: [(str(o / "escaped"), b"x")], "is an absolute path"),
    "dot-dot": (lambda o: [info("rootfs/../../escaped")], "contains '..'"),
    "dot-dot at the top": (lambda o: [info("../escaped")], "contains '..'"),
    "symlink escaping": (
        lambda o: [info("rootfs/", tarfile.DIRTYPE), info("rootfs/up", tarfile.SYMTYPE, "../../../..")],
        "symlink 'rootfs/up' -> '../../../..' points outside the tree",
    ),
    "write through a symlink": (
        lambda o: [
            info("rootfs/", tarfile.DIRTYPE),
            info("rootfs/lib", tarfile.SYMTYPE, str(o)),
            info("rootfs/lib/escaped", size=1),
        ],
        "entry 'rootfs/lib/escaped' passes through the symlink 'rootfs/lib'",
    ),
    "symlink replaced by a file": (
        lambda o: [
            info("rootfs/", tarfile.DIRTYPE),
            info("rootfs/x", tarfile.SYMTYPE, str(o / "escaped")),
            info("rootfs/x", size=1),
        ],
        "entry 'rootfs/x' appears twice",
    ),
    "hard link outside": (
        lambda o: [info("rootfs/", tarfile.DIRTYPE), info("rootfs/pw", tarfile.LNKTYPE, "/etc/passwd")],
        "hard link 'rootfs/pw' target '/etc/passwd' is an absolute path",
    ),
    "hard link up": (
        lambda o: [info("rootfs/", tarfile.DIRTYPE), info("rootfs/pw", tarfile.LNKTYPE, "../etc/passwd")],
        "contains '..'",
    ),
    "hard link to a symlink": (
        lambda o: [
            info("rootfs/", tarfile.DIRTYPE),
            info("rootfs/s", tarfile.SYMTYPE, str(o)),
            info("rootfs/h", tarfile.LNKTYPE, "rootfs/s"),
        ],
        "hard link 'rootfs/h' does not point to an earlier regular file",
    ),
    "device node": (
        lambda o: [info("rootfs/", tarfile.DIRTYPE), info("rootfs/sda", tarfile.BLKTYPE, devmajor=8)],
        "entry 'rootfs/sda' is a device node (not allowed)",
    ),
    "file under a file": (
        lambda o: [info("rootfs", size=1), info("rootfs/x", size=1)],
        "under the non-directory",
    ),
    "no rootfs": (lambda o: [("config", b'KERNEL_ARGS="x"\n')], "legacy capsule has no rootfs/ directory"),
    "nodescripts a symlink to the master's files": (
        lambda o: [
            info("nodescripts", tarfile.SYMTYPE, "/etc"),
            info("rootfs/", tarfile.DIRTYPE),
            BUSYBOX_ROOTFS,
        ],
        "nodescripts is a symlink",
    ),
    "config a symlink to the master's files": (
        lambda o: [
            info("config", tarfile.SYMTYPE, "/etc/shadow"),
            info("rootfs/", tarfile.DIRTYPE),
            BUSYBOX_ROOTFS,
        ],
        "cannot read member config",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_legacy_capsules(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    make_entries, reason = HOSTILE[case]
    legacy = tar_entries(tmp_path / f"{NAME}.vnfs", *make_entries(outside))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(capsule.CapsuleError) as exc:
        capsule.legacy.convert(legacy, out)
    text = str(exc.value)
    assert "\n" not in text and reason in text
    assert list(outside.iterdir()) == [] and not (tmp_path / "escaped").exists()
    assert list(out.iterdir()) == []  # no capsule, no work directory
    assert (Path("/etc/passwd").stat().st_nlink, Path("/etc/shadow").exists()) == (1, True)


def test_declared_sizes_beyond_the_limit(tmp_path: Path) -> None:
    legacy = _bomb(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        capsule.CapsuleError, match=r"declares more than 1048576 bytes \(decompression bomb\?\)"
    ):
        capsule.legacy.convert(legacy, out, max_total=1 << 20)
    with pytest.raises(capsule.CapsuleError, match="more than 1 entries"):
        capsule.legacy.convert(legacy, out, max_entries=1)  # rootfs/ and big: 2 entries
    assert list(out.iterdir()) == []


def test_stream_beyond_the_limit(tmp_path: Path) -> None:
    """Whatever the entries declare, the decompressed stream itself is capped (here: a 4 MiB pax header)."""
    legacy = tmp_path / f"{NAME}.vnfs"
    with tarfile.open(legacy, "w:bz2", format=tarfile.PAX_FORMAT) as tar:
        t = info("rootfs/", tarfile.DIRTYPE)
        t.pax_headers = {"comment": "x" * (4 << 20)}
        tar.addfile(t)
    assert legacy.stat().st_size < 10_000
    with pytest.raises(
        capsule.CapsuleError, match=r"unpacks to more than 1058816 bytes \(decompression bomb\?\)"
    ):
        capsule.legacy.convert(legacy, tmp_path, max_total=0, max_entries=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == [legacy.name]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "legacy capsule is damaged or truncated"),
        (lambda data: data[:40] + bytes(b ^ 0x55 for b in data[40:80]) + data[80:], "damaged or truncated"),
        (lambda data: b"\x00" * 600, "not a capsule, nor a legacy capsule"),
        (lambda data: b"just some text\n", "not a capsule, nor a legacy capsule"),
    ],
)
def test_damaged_legacy_capsules(tmp_path: Path, damage, reason: str) -> None:
    good = tar_dir(legacy_dir(tmp_path / "src"), tmp_path / "good.tar.bz2")
    legacy = tmp_path / f"{NAME}.vnfs"
    legacy.write_bytes(damage(good.read_bytes()))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(capsule.CapsuleError) as exc:
        capsule.legacy.convert(legacy, out)
    assert reason in str(exc.value) and "\n" not in str(exc.value)
    assert list(out.iterdir()) == []


def test_cli_convert(bare: Instance, tmp_path: Path) -> None:
    legacy = tar_dir(legacy_dir(tmp_path / "src"), tmp_path / f"{NAME}.vnfs")
    out = tmp_path / "out"
    out.mkdir()
    result = bare.ok("capsule", "convert", str(legacy), str(out))
    assert f"{out / NAME}.vnfs" in result.out
    bare.error(
        "capsule", "convert", str(legacy), str(out / f"{NAME}.vnfs"), status=1, contains="already exists"
    )
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "evil").mkdir()
    evil = tar_entries(
        tmp_path / "evil" / f"{NAME}.vnfs",
        info("rootfs/", tarfile.DIRTYPE),
        info("rootfs/l", tarfile.SYMTYPE, str(outside)),
        info("rootfs/l/x", size=1),
    )
    bare.error(
        "capsule",
        "convert",
        str(evil),
        str(out),
        status=1,
        contains=f"passes through the symlink 'rootfs/l' ({evil})",
    )
    assert list(outside.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == [f"{NAME}.vnfs"]
