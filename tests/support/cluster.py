"""A Perceus master inside a lab, and the real things its QEMU nodes boot.

* :func:`build_stage1` runs ``perceus stage1 build`` against Debian's unpacked kernel;
* :func:`runtime_capsule` turns that initramfs into a busybox VNFS: the same frozen Python
  with the node program installed as ``provisiond``, the kernel in ``/boot``, and an
  ``/init`` that loads the NIC driver, gets a lease and checks in ``ready``, printing
  :data:`RUNTIME_MARKER` on the console when the master has accepted it;
* :class:`Master` is an initialised perceus instance whose commands (and perceusd and
  dnsmasq, via ``perceus service``) run inside the lab's namespace, with the master
  device being the lab's bridge.
"""

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import zstandard

from perceus.stage1.simulate import unpack_archive

from tests.support.lab import Lab

ROOT = Path(__file__).resolve().parents[2]
KERNEL_ROOT = ROOT / ".cache" / "debian-kernel" / "root"
BIN = Path(sys.executable).parent
VNFS = "e2e"
RUNTIME_MARKER = "PERCEUS-RUNTIME-READY"
STEP = 120.0

RUNTIME_INIT = f"""#!/bin/sh
# The runtime OS of the end-to-end VNFS: drivers, a lease, then provisiond says ready.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONHOME=/usr PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONUTF8=1 HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -s /etc/hostname ] && hostname -F /etc/hostname
echo "perceus-runtime: $(uname -r) up as $(hostname)"
python3 -c 'import asyncio
from perceus.stage1 import netup
netup.load_drivers()
leases = asyncio.run(netup.bring_up())
print("perceus-runtime: lease", " ".join(x.iface + "=" + x.address for x in leases))'
if provisiond --once ready; then
    echo "{RUNTIME_MARKER} $(hostname)"
else
    echo "PERCEUS-RUNTIME-FAILED"
fi
provisiond --foreground &
exec setsid cttyhack /bin/sh
"""

PROVISIOND = """#!/bin/sh
exec /usr/bin/python3 -m perceus.stage1 --mode provisiond "$@"
"""


def perceus(*args: str, env: dict | None = None, timeout: float = STEP) -> str:
    """Run ``perceus`` here (not in a namespace); its stdout, or AssertionError with stderr."""
    proc = subprocess.run(
        [str(BIN / "perceus"), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"perceus {' '.join(args)}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def kernel_version() -> str:
    return next((KERNEL_ROOT / "lib" / "modules").iterdir()).name


def build_stage1(out: Path, *extra: str) -> tuple[Path, str]:
    """``perceus stage1 build`` for Debian's kernel; returns (initramfs, the build's report)."""
    args = ("stage1", "build", "-o", str(out), "--kernel-root", str(KERNEL_ROOT), *extra)
    report = perceus(*args, timeout=600)
    return out, report


def runtime_capsule(stage1: Path, work: Path) -> Path:
    """The end-to-end VNFS, built from the stage-one initramfs's own files."""
    root = work / "runtime-root"
    with zstandard.ZstdDecompressor().stream_reader(stage1.open("rb")) as raw:
        unpack_archive(raw, root)
    (root / "init").write_text(RUNTIME_INIT)
    (root / "init").chmod(0o755)
    (root / "etc" / "perceus" / "masterip").unlink(missing_ok=True)
    (root / "usr" / "sbin" / "provisiond").write_text(PROVISIOND)
    (root / "usr" / "sbin" / "provisiond").chmod(0o755)
    (root / "etc" / "os-release").write_text('ID=e2e\nVERSION_ID="1"\nPRETTY_NAME="perceus e2e runtime"\n')
    (root / "boot").mkdir(exist_ok=True)
    version = kernel_version()
    kernel = KERNEL_ROOT / "boot" / f"vmlinuz-{version}"
    (root / "boot" / kernel.name).write_bytes(kernel.read_bytes())
    capsule = work / f"{VNFS}-1-1.stateless.x86_64.vnfs"
    perceus("capsule", "pack", str(root), str(capsule), "--name", VNFS, "--version", "1", "--force")
    return capsule


class Master:
    """An initialised perceus instance with the lab's bridge as its master device."""

    def __init__(self, lab: Lab, work: Path) -> None:
        self.lab = lab
        base = work / "master"
        self.env = dict(
            os.environ,
            PERCEUS_SYSCONFDIR=str(base / "etc"),
            PERCEUS_STATEDIR=str(base / "var"),
            PERCEUS_RUNDIR=str(base / "run"),
            PERCEUS_EXPORTS_FILE=str(base / "exports"),
            HOME=str(base / "home"),
        )
        (base / "home").mkdir(parents=True, exist_ok=True)
        self.statedir = base / "var"
        self.sysconfdir = base / "etc"
        self.perceus("-y", "init", "--master-device", lab.bridge)

    def perceus(self, *args: str, timeout: float = STEP) -> str:
        """A perceus command inside the lab's namespace; its stdout."""
        proc = self.lab.run([str(BIN / "perceus"), *args], check=False, timeout=timeout, env=self.env)
        status = proc.returncode
        assert status == 0, f"perceus {' '.join(args)}: {status}\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    def use_vnfs(self, capsule: Path) -> None:
        """Import the capsule, give it a serial console, and make it new nodes' VNFS."""
        self.perceus("vnfs", "import", str(capsule), "--name", VNFS)
        self.perceus("-y", "vnfs", "configure", VNFS, "--console", "ttyS0,115200")
        self.perceus("module", "activate", "hostname")  # the node's /etc/hostname rides in its overlay
        self.set_default_vnfs()

    def set_default_vnfs(self, name: str = VNFS) -> None:
        """defaults.conf ``Vnfs Name``: the VNFS nodes get when perceusd adds them."""
        conf = self.sysconfdir / "defaults.conf"
        conf.write_text(re.sub(r"(?m)^Vnfs Name\s*=.*$", f"Vnfs Name = {name}", conf.read_text()))

    def serve(self, kernel: Path, initramfs: Path) -> None:
        """TFTP tree, dnsmasq configuration, then perceusd and dnsmasq via ``perceus service``."""
        self.perceus("configure", "tftp", "--kernel", str(kernel), "--initramfs", str(initramfs))
        self.perceus("configure", "dnsmasq", "--ipv6-ra")  # the lab's bridge has an IPv6 prefix
        self.perceus("service", "start")

    def stop(self) -> None:
        self.lab.run([str(BIN / "perceus"), "service", "stop"], check=False, env=self.env)

    def nodes(self) -> dict[str, tuple[str, str]]:
        """Node name -> (MAC, last state) straight from the database."""
        with sqlite3.connect(self.statedir / "database" / "perceus.db") as db:
            rows = db.execute("SELECT hostname, nodeid, status FROM nodes").fetchall()
        return {name: (mac, status) for name, mac, status in rows}

    def wait_ready(self, count: int, timeout: float) -> dict[str, tuple[str, str]]:
        """Wait (bounded) until ``count`` nodes are ready in the database; returns them all."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.nodes()
            if sum(1 for _, status in nodes.values() if status == "ready") >= count:
                return nodes
            if time.monotonic() > deadline:
                raise AssertionError(f"not {count} nodes ready in {timeout} s: {nodes}")
            time.sleep(1.0)
