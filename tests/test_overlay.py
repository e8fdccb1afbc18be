"""The per-node overlay and the build_archive features it needs."""

import io
import os
import stat
from pathlib import Path

import pytest
import zstandard

from perceus.common import newc
from perceus.imagefmt import image
from perceus.server import overlay
from perceus.server.errors import PerceusError


def entries(archive: bytes) -> dict[str, newc.Entry]:
    raw = zstandard.ZstdDecompressor().decompress(archive)
    return {e.name.decode(): e for e in newc.iter_entries(io.BytesIO(raw))}


def test_build_archive_directories_symlinks_and_existing_parents() -> None:
    archive = image.build_archive(
        {
            "root/.ssh/authorized_keys": (b"key\n", 0o600),
            "opt/tool": (b"", stat.S_IFDIR | 0o750),
            "etc/link": (b"/etc/target", stat.S_IFLNK | 0o777),
        },
        existing_dirs=["root", "etc"],
    )
    got = entries(archive)
    assert list(got) == ["etc/link", "opt", "opt/tool", "root/.ssh", "root/.ssh/authorized_keys"]
    assert stat.S_ISLNK(got["etc/link"].mode) and got["etc/link"].data == b"/etc/target"
    assert got["opt/tool"].mode == stat.S_IFDIR | 0o750
    assert got["root/.ssh"].mode == stat.S_IFDIR | 0o755
    with pytest.raises(image.ImageError, match="symlink target"):
        image.build_archive({"x": (b"", stat.S_IFLNK | 0o777)})
    with pytest.raises(image.ImageError, match="no data"):
        image.build_archive({"x": (b"data", stat.S_IFDIR | 0o755)})


def test_archive_directories_lists_an_images_directories(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc" / "deep" / "er").mkdir(parents=True)
    (tree / "root").mkdir(mode=0o700)
    (tree / "etc" / "file").write_bytes(os.urandom(100_000))
    out = tmp_path / "image"
    with open(out, "wb") as handle:
        result = image.pack_tree(tree, handle, chunk_size=64 << 10)
    assert len(result.chunks) > 1
    assert overlay.image_directories(out, result.chunks) == {"etc", "etc/deep", "etc/deep/er", "root"}


def test_overlay_build_collects_destdir_and_adds_node_conf(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "etc" / "app").mkdir(parents=True)
    (dest / "etc" / "app" / "conf").write_text("x\n")
    os.chmod(dest / "etc" / "app" / "conf", 0o4750)
    (dest / "etc" / "perceus").mkdir()
    (dest / "etc" / "perceus" / "node.conf").write_text("overridden\n")
    os.mkfifo(dest / "fifo")
    ssh = tmp_path / "ssh"
    ssh.mkdir()
    (ssh / "ssh_host_rsa_key").write_text("private\n")
    (ssh / "ssh_host_rsa_key.pub").write_text("public\n")
    (ssh / "unrelated").write_text("no\n")
    conf = {"NODENAME": "n0001", "VNFS": 'we"ird $name', "MASTERS": "10.0.0.1:987"}
    got = entries(overlay.build(dest, conf, {"etc"}, ssh))
    assert set(got) == {
        "etc/app",
        "etc/app/conf",
        "etc/perceus",
        "etc/perceus/node.conf",
        "etc/ssh",
        "etc/ssh/ssh_host_rsa_key",
        "etc/ssh/ssh_host_rsa_key.pub",
    }
    assert got["etc/app/conf"].mode == stat.S_IFREG | 0o4750
    assert got["etc/ssh/ssh_host_rsa_key"].mode == stat.S_IFREG | 0o600
    text = got["etc/perceus/node.conf"].data.decode()
    assert 'NODENAME="n0001"' in text and 'VNFS="we\\"ird \\$name"' in text and 'NODEID=""' in text
    without_keys = entries(overlay.build(None, conf, {"etc"}))
    assert set(without_keys) == {"etc/perceus", "etc/perceus/node.conf"}


def test_overlay_limits_and_bad_values(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(PerceusError, match="larger than 50 bytes"):
        overlay.collect_destdir(tmp_path, set(), max_bytes=50)
    with pytest.raises(PerceusError, match="newline"):
        overlay.node_conf({"NODENAME": "a\nb"})
