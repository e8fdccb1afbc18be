"""A QEMU node boots over the lab's network: the iPXE ROM of its NIC gets a lease and
pxelinux.0 from dnsmasq, pxelinux fetches its config, Debian's kernel and a busybox
initramfs by TFTP, and the initramfs's /init prints a marker with the kernel command line
and powers off. The same initramfs booted directly (``boot="kernel"``) is the fast path
for iterating on an initramfs.

The dnsmasq config is written by hand; three lines in it only save time (measured here,
software emulation, 2 cores): ``enable-ra`` (iPXE waits ~13 s for an IPv6 router
advertisement otherwise), and ``no-ping`` plus iPXE's ``no-pxedhcp`` setting (option
175.176), each of which alone saves nothing: dnsmasq pings an address ~3 s before offering
it, and iPXE waits ~3 s for a ProxyDHCP offer. The whole chain: ~10 s with them, ~25 s
without.
"""

import re
import secrets
import shutil
import time
from pathlib import Path

import pytest

from tests.support.lab import (
    Lab,
    busybox_initramfs,
    read_text,
    wait_for_text,
)

pytestmark = [pytest.mark.qemu, pytest.mark.netns]  # QEMU machines on a bridge in a namespace

ROOT = Path(__file__).resolve().parents[2]
KERNEL = ROOT / ".cache" / "debian-kernel" / "root" / "boot" / "vmlinuz"
PXELINUX = Path("/usr/lib/PXELINUX/pxelinux.0")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
MAC = "52:54:00:12:34:56"
MARKER = "PERCEUS-LAB-INIT"
MARKER_LINE = rf"{MARKER} cmdline=\[(.*)\]"
TIMEOUT = 300

INIT = f"""#!/bin/sh
/bin/busybox mount -t proc proc /proc
echo "{MARKER} cmdline=[$(/bin/busybox cat /proc/cmdline)]"
/bin/busybox poweroff -f
"""


@pytest.fixture(scope="module")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert KERNEL.is_file(), f"{KERNEL} is missing: run 'make kernel'"
    return busybox_initramfs(tmp_path_factory.mktemp("initrd") / "initrd.img", INIT)


def tftp_root(root: Path, initrd: Path, append: str) -> Path:
    (root / "pxelinux.cfg").mkdir(parents=True)
    shutil.copy(PXELINUX, root / "pxelinux.0")
    shutil.copy(LDLINUX, root / "ldlinux.c32")
    shutil.copy(KERNEL, root / "vmlinuz")
    shutil.copy(initrd, root / "initrd.img")
    (root / "pxelinux.cfg" / "default").write_text(
        "SERIAL 0 115200\n"
        "DEFAULT linux\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL linux\n"
        "  KERNEL vmlinuz\n"
        "  INITRD initrd.img\n"
        f"  APPEND {append}\n"
    )
    return root


def start_dnsmasq(lab: Lab, workdir: Path, tftp: Path) -> Path:
    """dnsmasq serving DHCP and TFTP on the lab's bridge; its log file, once it is ready."""
    low, high = lab.dhcp_range
    log = workdir / "dnsmasq.log"
    conf = workdir / "dnsmasq.conf"
    conf.write_text(
        "port=0\n"  # no DNS
        f"interface={lab.bridge}\n"
        "bind-interfaces\n"
        "user=root\n"  # as nobody it could not read the tftp-root in pytest's 0700 tmp dirs
        f"dhcp-range={low},{high},255.255.255.0,1h\n"
        f"dhcp-leasefile={workdir / 'dnsmasq.leases'}\n"
        f"pid-file={workdir / 'dnsmasq.pid'}\n"
        "dhcp-userclass=set:ipxe,iPXE\n"
        "dhcp-boot=pxelinux.0\n"
        "enable-tftp\n"
        f"tftp-root={tftp}\n"
        f"log-facility={log}\n"
        "log-dhcp\n"
        # speed only, see the module docstring
        "no-ping\n"
        "dhcp-option=tag:ipxe,175,b0:01:01\n"  # iPXE's no-pxedhcp = 1
        "enable-ra\n"
        f"dhcp-range=::,constructor:{lab.bridge},ra-only\n"
    )
    proc = lab.popen(["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"], workdir / "dnsmasq.out")
    wait_for_text(log, r"TFTP root is", timeout=20, proc=proc)
    return log


def test_pxe_chain_boots_a_node(lab: Lab, tmp_path: Path, initrd: Path) -> None:
    token = secrets.token_hex(6)
    tftp = tftp_root(tmp_path / "tftp", initrd, f"console=ttyS0,115200 panic=-1 quiet perceus.token={token}")
    log = start_dnsmasq(lab, tmp_path, tftp)

    started = time.monotonic()
    node = lab.qemu("n0", mac=MAC, boot="pxe")
    stages = {
        "iPXE ROM": r"iPXE initialising devices",
        "DHCP lease": r"^net0: [0-9.]+/",
        "pxelinux": r"PXELINUX \d",
        "init": MARKER_LINE,
    }
    times, offset = {}, 0
    for stage, pattern in stages.items():
        match = node.wait_for(pattern, timeout=TIMEOUT, start=offset)
        times[stage], offset = time.monotonic() - started, match.end()
    cmdline = match.group(1)
    assert f"perceus.token={token}" in cmdline and "BOOT_IMAGE=vmlinuz" in cmdline, cmdline
    assert "console=ttyS0,115200" in cmdline, cmdline
    assert node.wait_exit(60) == 0

    dhcp = read_text(log)
    acks = re.findall(rf"DHCPACK\({lab.bridge}\) ([0-9.]+) {MAC}", dhcp)
    assert acks, f"no DHCPACK to {MAC} in {log}:\n{dhcp[-3000:]}"
    address = acks[-1]
    assert address in [str(a) for a in lab.subnet.hosts()]
    for name in ("pxelinux.0", "ldlinux.c32", "pxelinux.cfg/default", "vmlinuz", "initrd.img"):
        assert re.search(
            rf"dnsmasq-tftp\[\d+\]: sent {re.escape(str(tftp / name))} to {address}$", dhcp, re.M
        ), f"no TFTP send of {name} to {address} in {log}:\n{dhcp[-3000:]}"
    print("\nPXE chain: " + ", ".join(f"{stage} at {t:.1f} s" for stage, t in times.items()))


def test_direct_kernel_boot(lab: Lab, initrd: Path) -> None:
    token = secrets.token_hex(6)
    started = time.monotonic()
    node = lab.qemu(
        "k0",
        mac="52:54:00:12:34:57",
        boot="kernel",
        kernel=KERNEL,
        initrd=initrd,
        append=f"console=ttyS0,115200 panic=-1 quiet perceus.token={token}",
    )
    match = node.wait_for(MARKER_LINE, timeout=TIMEOUT)
    elapsed = time.monotonic() - started
    assert f"perceus.token={token}" in match.group(1), match.group(1)
    assert node.wait_exit(60) == 0
    print(f"\ndirect kernel boot: init at {elapsed:.1f} s")
