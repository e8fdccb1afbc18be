"""Hybridization: the hybridize file, the image plan (symlinks + fstab) and staging of the content."""

import os
import shutil
import stat
from pathlib import Path

import pytest

from perceus.common import atomicfile
from perceus.imagefmt.tree import resolve_in_root
from perceus.server.errors import PerceusError
from perceus.server.hybridize import (
    ensure_mount_point,
    fstab_line,
    fstab_with_mount,
    matches,
    parse_hybridize,
    plan,
    stage,
)

STATEDIR = "/var/lib/perceus"
VNFS = "debian-12-1.stateless.x86_64"


def test_parse_entries_comments_and_globs() -> None:
    text = """
    # Hybridization file
    /usr/share/doc
    /usr/lib/*/locale

    /usr//include/./
    /usr/share/doc
    """
    assert parse_hybridize(text, "hybridize") == ["/usr/share/doc", "/usr/lib/*/locale", "/usr/include"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("usr/share", "absolute paths"),
        ("./usr/share", "absolute paths"),
        ("/usr/../var/lib/perceus", "'..'"),
        ("/", "whole root"),
        ("//", "whole root"),
        ("/var/lib/perceus", "holds the state directory"),
        ("/var/lib/perceus/", "holds the state directory"),
        ("/var/lib", "holds the state directory"),
        ("/var", "holds the state directory"),
        ("/var/*", "holds the state directory"),
        ("/v?r", "holds the state directory"),
        ("/var/lib/perceus/vnfs", "inside the state directory"),
        ("/etc", "/etc/fstab must stay local"),
        ("/etc/fstab", "/etc/fstab must stay local"),
        ("/e*", "/etc/fstab must stay local"),
        ("/usr/share\tx", "not a path"),
    ],
)
def test_parse_refuses_with_source_and_line(entry: str, message: str) -> None:
    with pytest.raises(PerceusError, match=message) as info:
        parse_hybridize(f"# comment\n/usr/share/doc\n{entry}\n", "/etc/perceus/vnfs/x/hybridize")
    assert info.value.where == "/etc/perceus/vnfs/x/hybridize:3"


def test_parse_protects_the_masters_own_statedir() -> None:
    text = "/srv/perceus\n"
    assert parse_hybridize(text, "h") == ["/srv/perceus"]
    with pytest.raises(PerceusError, match="holds the state directory /srv/perceus"):
        parse_hybridize(text, "h", statedirs=["/srv/perceus/"])
    with pytest.raises(PerceusError, match="holds the state directory"):
        parse_hybridize("/srv\n", "h", statedirs=["/srv/perceus"])
    assert parse_hybridize("/srv/other\n", "h", statedirs=["/srv/perceus"]) == ["/srv/other"]


def test_parse_bounds_the_file() -> None:
    with pytest.raises(PerceusError, match="larger than"):
        parse_hybridize("/usr/share\n" * 200_000, "h")


def make_tree(root: Path) -> Path:
    """A small VNFS tree with merged-/usr symlinks, dotfiles, hard links and odd symlinks; a file
    owned by 1234:2345, whose owner staging must keep, makes the tests of this tree ``root``."""
    for directory in (
        "etc",
        "var/lib",
        "usr/share/doc/pkg",
        "usr/share/man/man1",
        "usr/lib/x86_64-linux-gnu/locale/C.utf8",
        "usr/lib/i386-linux-gnu/locale",
        "usr/lib/nolocale",
        "usr/include/sys",
    ):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "etc/fstab").write_text("proc /proc proc defaults 0 0\n")
    (root / "usr/share/doc/pkg/README").write_text("readme\n")
    (root / "usr/share/doc/pkg/README").chmod(0o600)
    os.chown(root / "usr/share/doc/pkg/README", 1234, 2345)
    os.link(root / "usr/share/doc/pkg/README", root / "usr/share/doc/pkg/README.hardlink")
    (root / "usr/share/doc/pkg/.hidden").write_text("dot\n")
    (root / "usr/share/doc/pkg/changelog").symlink_to("../../../lib/changelog.real")  # leaves the subtree
    (root / "usr/share/doc/pkg/inside").symlink_to("README")  # stays inside
    (root / "usr/share/doc/pkg/absolute").symlink_to("/etc/hostname")
    (root / "usr/share/man/man1/ls.1").write_text("man\n")
    (root / "usr/lib/x86_64-linux-gnu/locale/C.utf8/LC_CTYPE").write_text("ctype\n")
    (root / "usr/include/sys/types.h").write_text("/* types */\n")
    (root / "usr/share/info").symlink_to("/usr/share/doc")  # a matched symlink stays local
    (root / "usr/.dotdir").mkdir()
    os.mkfifo(root / "usr/share/doc/pkg/fifo")
    os.utime(root / "usr/share/doc/pkg", (1_000_000, 1_000_000))
    return root


@pytest.mark.root
def test_matches_resolves_inside_the_tree_only(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "rootfs")
    found = matches(root, ["/lib/*/locale", "/usr/share/*", "/usr/share/doc/pkg", "/usr/nothing", "/usr/*"])
    # /usr/* covers everything below /usr, so the narrower matches fold into it; no dot dirs
    assert found == ["usr/include", "usr/lib", "usr/share"]
    assert matches(root, ["/lib/*/locale"]) == [
        "usr/lib/i386-linux-gnu/locale",
        "usr/lib/x86_64-linux-gnu/locale",
    ]
    assert matches(root, ["/usr/share/*"]) == ["usr/share/doc", "usr/share/man"]  # info is a symlink
    assert matches(root, ["/usr/.*"]) == ["usr/.dotdir"]


@pytest.mark.root
def test_symlinks_never_leave_the_root(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "rootfs")
    (root / "escape").symlink_to("/usr")  # absolute: means the VNFS's /usr
    (root / "up").symlink_to("../../../../..")  # '..' stops at the VNFS root
    (root / "loop").symlink_to("loop")
    assert resolve_in_root(root, "escape/share") == "usr/share"
    assert resolve_in_root(root, "up/usr/share/doc") == "usr/share/doc"
    assert resolve_in_root(root, "loop/x") is None
    assert resolve_in_root(root, "etc/fstab/x") is None
    assert matches(root, ["/escape/share/doc", "/up/usr/include"]) == ["usr/include", "usr/share/doc"]


@pytest.mark.root
def test_plan_symlinks_and_fstab(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "rootfs")
    symlink_over, replace_files = plan(
        root, ["/usr/share/doc", "/lib/*/locale"], STATEDIR, vnfs_name=VNFS, master="10.0.0.1"
    )
    base = f"/var/lib/perceus/vnfs/{VNFS}/hybrid"
    assert symlink_over == {
        "usr/lib/i386-linux-gnu/locale": f"{base}/usr/lib/i386-linux-gnu/locale",
        "usr/lib/x86_64-linux-gnu/locale": f"{base}/usr/lib/x86_64-linux-gnu/locale",
        "usr/share/doc": f"{base}/usr/share/doc",
    }
    assert replace_files == {
        "etc/fstab": b"proc /proc proc defaults 0 0\n"
        b"10.0.0.1:/var/lib/perceus/vnfs /var/lib/perceus/vnfs nfs ro,nolock,soft 0 0\n"
    }


@pytest.mark.root
def test_plan_with_a_separate_mount_point_and_no_fstab(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "rootfs")
    (root / "etc/fstab").unlink()
    symlink_over, replace_files = plan(
        root, ["/usr/include"], "/srv/perceus state", "/mnt/perceus", vnfs_name="v", master="fd00::1"
    )
    assert symlink_over == {"usr/include": "/mnt/perceus/vnfs/v/hybrid/usr/include"}
    assert replace_files == {
        "etc/fstab": b"[fd00::1]:/srv/perceus\\040state/vnfs /mnt/perceus/vnfs nfs ro,nolock,soft 0 0\n"
    }


@pytest.mark.root
def test_plan_without_matches_changes_nothing(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "rootfs")
    assert plan(root, ["/opt/*"], STATEDIR, vnfs_name=VNFS, master="10.0.0.1") == ({}, {})


@pytest.mark.root
def test_plan_keeps_an_existing_mount_of_the_statedir(tmp_path: Path) -> None:
    """The guide lets sites mount the state directory another way by editing the VNFS fstab."""
    root = make_tree(tmp_path / "rootfs")
    cifs = "//master/perceus /var/lib/perceus/ cifs ro 0 0\n"
    (root / "etc/fstab").write_text(cifs)
    symlink_over, replace_files = plan(root, ["/usr/include"], STATEDIR, vnfs_name=VNFS, master="10.0.0.1")
    assert list(symlink_over) == ["usr/include"]
    assert replace_files == {}


def test_fstab_line_is_never_duplicated() -> None:
    line = fstab_line("10.0.0.1", STATEDIR, STATEDIR)
    once = fstab_with_mount("proc /proc proc defaults 0 0", "10.0.0.1", STATEDIR, STATEDIR)
    assert once == f"proc /proc proc defaults 0 0\n{line}\n"
    assert fstab_with_mount(once, "10.0.0.1", STATEDIR, STATEDIR) == once
    commented = f"# {line}\n"
    assert fstab_with_mount(commented, "10.0.0.1", STATEDIR, STATEDIR) == f"{commented}{line}\n"


@pytest.mark.root
def test_plan_refuses_paths_reaching_the_mount_through_symlinks(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "rootfs")
    (root / "state").symlink_to("var")  # /state/lib resolves to var/lib, which holds the mount point
    with pytest.raises(PerceusError, match="reaches /var/lib/perceus"):
        plan(root, ["/state/lib"], STATEDIR, vnfs_name=VNFS, master="10.0.0.1")
    (root / "conf").symlink_to("etc")
    with pytest.raises(PerceusError, match="reaches /etc/fstab"):
        plan(root, ["/conf/*"], STATEDIR, vnfs_name=VNFS, master="10.0.0.1")


@pytest.mark.root
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vnfs_name": "../x", "master": "10.0.0.1"}, "not a VNFS name"),
        ({"vnfs_name": "", "master": "10.0.0.1"}, "not a VNFS name"),
        ({"vnfs_name": "v", "master": "10.0.0.1 x"}, "not a master address"),
        ({"vnfs_name": "v", "master": ""}, "not a master address"),
    ],
)
def test_plan_refuses_bad_parameters(tmp_path: Path, kwargs: dict, message: str) -> None:
    root = make_tree(tmp_path / "rootfs")
    with pytest.raises(PerceusError, match=message):
        plan(root, ["/usr/include"], STATEDIR, **kwargs)


@pytest.mark.root
def test_ensure_mount_point(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "rootfs")
    ensure_mount_point(root, STATEDIR)
    assert (root / "var/lib/perceus").is_dir()
    assert stat.S_IMODE((root / "var/lib/perceus").stat().st_mode) == 0o755
    ensure_mount_point(root, STATEDIR)  # idempotent
    ensure_mount_point(root, "/lib/perceus-mnt")  # through the in-tree lib -> usr/lib symlink
    assert (root / "usr/lib/perceus-mnt").is_dir()
    (root / "srv").write_text("a file")
    with pytest.raises(PerceusError, match="not a directory"):
        ensure_mount_point(root, "/srv/perceus")
    (root / "dangling").symlink_to("/nowhere")
    with pytest.raises(PerceusError, match="dangling"):
        ensure_mount_point(root, "/dangling/perceus")


def walk(top: Path) -> dict[str, tuple]:
    """Everything under ``top`` with type, mode, owner, mtime and link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            target = os.readlink(path) if path.is_symlink() else None
            out[str(path.relative_to(top))] = (
                stat.S_IFMT(info.st_mode),
                stat.S_IMODE(info.st_mode),
                info.st_uid,
                info.st_gid,
                target,
            )
    return out


@pytest.mark.root
def test_stage_hard_links_and_replaces_atomically(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "rootfs")
    hybrid = tmp_path / "state/vnfs" / VNFS / "hybrid"
    symlink_over, _ = plan(root, ["/usr/share/doc", "/lib/*/locale"], STATEDIR, vnfs_name=VNFS, master="m")
    stage(root, symlink_over, hybrid)
    readme = hybrid / "usr/share/doc/pkg/README"
    assert readme.read_text() == "readme\n"
    assert readme.stat().st_ino == (root / "usr/share/doc/pkg/README").stat().st_ino  # hard-linked
    assert (hybrid / "usr/lib/x86_64-linux-gnu/locale/C.utf8/LC_CTYPE").read_text() == "ctype\n"
    assert (hybrid / "usr/lib/i386-linux-gnu/locale").is_dir()
    assert not (hybrid / "usr/lib/nolocale").exists()
    assert not (hybrid / "usr/share/man").exists()
    assert os.readlink(hybrid / "usr/share/doc/pkg/changelog") == "/usr/lib/changelog.real"
    assert os.readlink(hybrid / "usr/share/doc/pkg/inside") == "README"
    assert os.readlink(hybrid / "usr/share/doc/pkg/absolute") == "/etc/hostname"
    assert stat.S_ISFIFO((hybrid / "usr/share/doc/pkg/fifo").lstat().st_mode)
    # directories carry the tree's attributes, times included
    assert (hybrid / "usr/share/doc/pkg").stat().st_mtime == 1_000_000
    assert stat.S_IMODE(hybrid.stat().st_mode) == 0o755

    # a second build replaces the whole directory: old content goes, the new arrives
    (root / "usr/include/new.h").write_text("new\n")
    symlink_over, _ = plan(root, ["/usr/include"], STATEDIR, vnfs_name=VNFS, master="m")
    stage(root, symlink_over, hybrid)
    assert sorted(p.name for p in hybrid.iterdir()) == ["usr"]
    assert sorted(p.name for p in (hybrid / "usr").iterdir()) == ["include"]
    assert (hybrid / "usr/include/new.h").read_text() == "new\n"
    assert sorted(p.name for p in hybrid.parent.iterdir()) == ["hybrid"]  # nothing left beside it

    stage(root, {}, hybrid)  # nothing hybridized any more: an empty directory
    assert list(hybrid.iterdir()) == []


@pytest.mark.root
def test_stage_copies_across_filesystems(tmp_path: Path) -> None:
    """With the tree on another filesystem (/dev/shm is tmpfs) files are copied, metadata kept."""
    work = Path("/dev/shm")
    if os.stat(work).st_dev == os.stat(tmp_path).st_dev:
        raise AssertionError("this test needs /dev/shm on another filesystem than the test's temp dir")
    tree = work / f"perceus-hybridize-{os.getpid()}"
    try:
        root = make_tree(tree)
        hybrid = tmp_path / "hybrid"
        symlink_over, _ = plan(root, ["/usr/share/doc"], STATEDIR, vnfs_name=VNFS, master="m")
        stage(root, symlink_over, hybrid)
        source = walk(root / "usr/share/doc")
        copied = walk(hybrid / "usr/share/doc")
        source["pkg/changelog"] = source["pkg/changelog"][:4] + ("/usr/lib/changelog.real",)
        assert copied == source
        readme, twin = hybrid / "usr/share/doc/pkg/README", hybrid / "usr/share/doc/pkg/README.hardlink"
        assert readme.stat().st_ino != (root / "usr/share/doc/pkg/README").stat().st_ino
        assert readme.stat().st_ino == twin.stat().st_ino  # hard links stay together in the copy
        assert (readme.stat().st_uid, readme.stat().st_gid) == (1234, 2345)
        assert (hybrid / "usr/share/doc/pkg").stat().st_mtime == 1_000_000
    finally:
        shutil.rmtree(tree, ignore_errors=True)


@pytest.mark.root
@pytest.mark.parametrize("rel", ["/usr/share", "../etc", "usr/../etc", "", "lib/x86_64-linux-gnu/locale"])
def test_stage_refuses_paths_outside_or_through_symlinks(tmp_path: Path, rel: str) -> None:
    root = make_tree(tmp_path / "rootfs")
    hybrid = tmp_path / "hybrid"
    hybrid.mkdir()
    (hybrid / "old").write_text("kept")
    with pytest.raises(PerceusError):
        stage(root, {rel: "/x"}, hybrid)
    assert (hybrid / "old").read_text() == "kept"  # the old content survives a failed build
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hybrid", "rootfs"]


@pytest.mark.root
def test_stage_without_rename_exchange(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where renameat2 RENAME_EXCHANGE is missing, two renames replace the directory."""
    root = make_tree(tmp_path / "rootfs")
    hybrid = tmp_path / "hybrid"
    stage(root, {"usr/include": "/x"}, hybrid)
    assert atomicfile.exchange(tmp_path / "rootfs", hybrid) is True  # supported here: swap and back
    assert atomicfile.exchange(tmp_path / "rootfs", hybrid) is True
    assert (hybrid / "usr/include/sys/types.h").exists()

    monkeypatch.setattr(atomicfile, "exchange", lambda a, b: False)
    stage(root, {"usr/share/man": "/x"}, hybrid)
    assert sorted(p.name for p in (hybrid / "usr").iterdir()) == ["share"]
    assert (hybrid / "usr/share/man/man1/ls.1").read_text() == "man\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hybrid", "rootfs"]
