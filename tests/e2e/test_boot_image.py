"""A packed capsule's rootfs member, as it lies in the file, boots as the kernel's initramfs.

A busybox tree whose /init prints a marker, the sha256 of every data file (to prove
every chunk was unpacked) and powers off, is packed with a small chunk size (several
chunks), its ``rootfs`` member copied out byte for byte and given to Debian's kernel
under QEMU (software emulation only: KVM hangs on these machines).
"""

import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from perceus import capsule

pytestmark = [pytest.mark.qemu, pytest.mark.root]  # root: the tree's /dev/console

ROOT = Path(__file__).resolve().parents[2]
KERNEL = ROOT / ".cache" / "debian-kernel" / "root" / "boot" / "vmlinuz"
MARKER = "PERCEUS-IMAGE-BOOTED"
TIMEOUT = 120

INIT = f"""#!/bin/sh
/bin/busybox mount -t proc proc /proc
echo {MARKER}
/bin/busybox sha256sum /data/*
/bin/busybox poweroff -f
"""


def build_tree(root: Path) -> dict[str, str]:
    """The tree; returns the sha256 of each data file, which the guest will print."""
    for d in ("bin", "sbin", "dev", "proc", "data"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "mount", "poweroff", "sha256sum", "echo"):
        (root / "bin" / applet).symlink_to("busybox")
    os.mknod(root / "dev" / "console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
    (root / "init").write_text(INIT)
    os.chmod(root / "init", 0o755)
    sums = {}
    for i in range(12):
        data = os.urandom(60_000)
        (root / "data" / f"f{i:02d}").write_bytes(data)
        sums[f"/data/f{i:02d}"] = hashlib.sha256(data).hexdigest()
    return sums


def test_rootfs_member_boots_as_initramfs(tmp_path: Path) -> None:
    assert KERNEL.is_file(), f"{KERNEL} is missing: run 'make kernel'"
    sums = build_tree(tmp_path / "tree")
    path = tmp_path / "boot-1.0-1.stateless.x86_64.vnfs"
    manifest = capsule.pack(tmp_path / "tree", path, capsule.Meta("boot", "1.0"), chunk_size=128 << 10)
    assert manifest.rootfs is not None and len(manifest.rootfs.chunks) >= 4
    initrd = tmp_path / "rootfs.img"
    with capsule.open(path) as c, open(initrd, "wb") as f:
        c.copy_member("rootfs", f)

    command = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "512",
        "-nographic",
        "-no-reboot",
        "-kernel",
        str(KERNEL),
        "-initrd",
        str(initrd),
        "-append",
        "console=ttyS0 panic=-1 quiet",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        console = out.decode(errors="replace")[-3000:]
        raise AssertionError(f"no power-off within {TIMEOUT} s; console:\n{console}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    console = out.decode(errors="replace")
    assert MARKER in console, console[-3000:]
    for name, digest in sums.items():
        assert f"{digest}  {name}" in console, f"{name} missing or different in the guest:\n{console[-3000:]}"
    print(f"\nbooted {len(manifest.rootfs.chunks)} chunks ({manifest.rootfs.size} bytes) in {elapsed:.1f} s")
