"""The Linux kernel boots an image from pack_tree, with a build_archive overlay behind it.

Debian's kernel (``make kernel`` unpacks it into .cache) under QEMU's software emulation
gets as its initrd a root tree packed in many small chunks (some streamed through zstd's
multi-threaded path), then a per-node overlay frame. Its /init (busybox) prints what it
finds: file contents, a hard-link pair's inode numbers, a symlink, a device node, the
overlay's file. Proves the kernel takes the concatenated, separately compressed
archives, the 4 MiB zstd window, and the hard-link convention.
"""

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from perceus.imagefmt import image

pytestmark = [pytest.mark.qemu, pytest.mark.root]  # root: the tree's /dev/console and /dev/null

KERNEL = Path(__file__).resolve().parents[1] / ".cache" / "debian-kernel" / "root" / "boot" / "vmlinuz"
BUSYBOX = Path("/bin/busybox")

INIT = """#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
big=$($B sha256sum /data/big.bin | $B cut -c1-64)
ia=$($B stat -c %i /data/a); ib=$($B stat -c %i /data/sub/b)
[ "$ia" = "$ib" ] && same=yes || same=no
echo "PERCEUS-BOOT big=$big a=$($B cat /data/a) hardlink=$same sym=$($B readlink /data/c) \
null=$($B stat -c %t:%T /dev/null) fifo=$($B stat -c %F /data/fifo | $B tr ' ' _) \
mode=$($B stat -c %a /data/secret) host=$($B cat /etc/hostname)"
$B poweroff -f
"""


def test_kernel_boots_packed_image_with_overlay(tmp_path: Path, monkeypatch):
    assert KERNEL.exists(), f"{KERNEL} is missing: run `make kernel`"
    root = tmp_path / "root"
    for d in ("bin", "dev", "proc", "etc", "data/sub"):
        (root / d).mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(BUSYBOX.read_bytes())
    os.chmod(root / "bin" / "busybox", 0o755)
    (root / "init").write_text(INIT)
    os.chmod(root / "init", 0o755)
    os.mknod(root / "dev" / "console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
    os.mknod(root / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    big = hashlib.sha256(b"seed").digest() * 40_000 + bytes(range(256)) * 2000  # > 1 MiB: streamed
    (root / "data" / "big.bin").write_bytes(big)
    for i in range(200):  # many small files: many chunks
        (root / "data" / f"f{i:03d}").write_bytes(f"file {i}\n".encode() * (i + 1))
    (root / "data" / "a").write_bytes(b"hello")
    os.link(root / "data" / "a", root / "data" / "sub" / "b")
    (root / "data" / "c").symlink_to("a")
    os.mkfifo(root / "data" / "fifo")
    (root / "data" / "secret").write_bytes(b"s")
    os.chmod(root / "data" / "secret", 0o600)
    (root / "etc" / "hostname").write_bytes(b"image\n")

    monkeypatch.setattr(image.pack, "STREAM_OVER", 0)  # chunks over 4 * chunk_size go the streaming way
    initrd = tmp_path / "initrd"
    with open(initrd, "wb") as f:
        result = image.pack_tree(root, f, chunk_size=16 << 10, threads=2)
        f.write(image.build_archive({"etc/hostname": (b"n0001\n", 0o644)}))
    assert len(result.chunks) > 10
    assert any(c.usize > 4 * (16 << 10) for c in result.chunks)

    proc = subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512", "-nographic", "-no-reboot",
         "-kernel", str(KERNEL), "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1 quiet"],
        capture_output=True, text=True, errors="replace", timeout=240,
    )  # fmt: skip
    line = next((ln for ln in proc.stdout.splitlines() if "PERCEUS-BOOT" in ln), None)
    assert line is not None, proc.stdout[-3000:]
    got = dict(kv.split("=", 1) for kv in line.split("PERCEUS-BOOT", 1)[1].split())
    assert got == {
        "big": hashlib.sha256(big).hexdigest(),
        "a": "hello",
        "hardlink": "yes",
        "sym": "a",
        "null": "1:3",
        "fifo": "fifo",
        "mode": "600",
        "host": "n0001",
    }
