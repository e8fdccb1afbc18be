"""Real nodes, provisioned: QEMU machines boot stage one and end in their VNFS, ``ready``.

The master is a perceus instance in a lab namespace (perceusd and dnsmasq started by
``perceus service start`` on the lab's bridge, the TFTP tree from ``perceus configure
tftp``); stage one is what ``perceus stage1 build`` made from Debian's kernel; the VNFS is
a busybox runtime built from that same initramfs, whose ``provisiond`` checks in ``ready``.
Each test asserts what the database says and what the node's serial console shows.
"""

import re
import shutil
from pathlib import Path

import pytest

from tests.support import cluster
from tests.support.lab import Lab

BOOT_TIMEOUT = 300.0  # a PXE boot to ready takes ~40 s under emulation; three at once ~90 s
MACS = ("52:54:00:5e:00:01", "52:54:00:5e:00:02", "52:54:00:5e:00:03")


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> tuple[Path, str]:
    """The stage-one initramfs (built once for these tests) and the build's report."""
    return cluster.build_stage1(tmp_path_factory.mktemp("stage1") / "initramfs.img")


@pytest.fixture(scope="module")
def capsule(stage1, tmp_path_factory) -> Path:
    return cluster.runtime_capsule(stage1[0], tmp_path_factory.mktemp("capsule"))


def _kernel() -> Path:
    return cluster.KERNEL_ROOT / "boot" / f"vmlinuz-{cluster.kernel_version()}"


def _master(lab: Lab, tmp_path: Path, stage1: Path, capsule: Path) -> cluster.Master:
    master = cluster.Master(lab, tmp_path)
    master.use_vnfs(capsule)
    master.serve(_kernel(), stage1)
    return master


@pytest.mark.slow
def test_stage1_build_reports_each_part_within_budget(stage1):
    path, report = stage1
    for part in ("busybox", "python3.11", "stdlib", "extension modules", "kernel modules", "total"):
        assert part in report, report
    assert "within" in report and "OVER" not in report, report
    assert path.stat().st_size <= 8 * 1024 * 1024


@pytest.mark.qemu
@pytest.mark.netns
def test_pxe_node_is_added_provisioned_and_ready(tmp_path, stage1, capsule):
    with Lab(tmp_path / "lab") as lab:
        master = _master(lab, tmp_path, stage1[0], capsule)
        node = lab.qemu("node", mac=MACS[0], boot="pxe")
        node.wait_for(r"PXELINUX", timeout=BOOT_TIMEOUT)  # iPXE ROM -> pxelinux.0 from dnsmasq
        node.wait_for(r"perceus: stage one starting", timeout=BOOT_TIMEOUT)
        booted = node.wait_for(r"perceus: booting e2e as (n\d+)", timeout=BOOT_TIMEOUT)
        assert booted.group(1) == "n0000"
        ready = node.wait_for(rf"{cluster.RUNTIME_MARKER} (\S+)", timeout=BOOT_TIMEOUT)
        assert ready.group(1) == "n0000"  # the runtime OS took the name from its overlay
        nodes = master.wait_ready(1, timeout=30)
        assert nodes == {"n0000": (MACS[0].upper(), "ready")}
        status = master.perceus("node", "status", "n0000")
        assert "ready" in status and "n0000" in status
        master.stop()


@pytest.mark.qemu
@pytest.mark.netns
def test_uki_boots_under_ovmf_without_pxe_to_ready(tmp_path, stage1, capsule):
    esp = tmp_path / "esp"
    (esp / "EFI" / "BOOT").mkdir(parents=True)
    with Lab(tmp_path / "lab") as lab:
        master = _master(lab, tmp_path, stage1[0], capsule)
        shutil.rmtree(master.statedir / "tftp")  # nothing to PXE-boot: the firmware must use the UKI
        uki = esp / "EFI" / "BOOT" / "BOOTX64.EFI"
        cluster.perceus(
            "stage1", "flash", "--uki", str(uki), "--kernel", str(_kernel()), "--initramfs", str(stage1[0]),
            "--master", lab.address,
        )  # fmt: skip
        node = lab.qemu("uefi", mac=MACS[1], boot="uefi", fat=esp)
        node.wait_for(r"perceus: stage one starting", timeout=BOOT_TIMEOUT)
        node.wait_for(rf"masters {re.escape(lab.address)}:987", timeout=BOOT_TIMEOUT)  # baked into the UKI
        node.wait_for(rf"{cluster.RUNTIME_MARKER} n0000", timeout=BOOT_TIMEOUT)
        assert master.wait_ready(1, timeout=30) == {"n0000": (MACS[1].upper(), "ready")}
        assert "PXELINUX" not in node.console()
        master.stop()


@pytest.mark.qemu
@pytest.mark.netns
def test_three_nodes_boot_at_once_with_distinct_names(tmp_path, stage1, capsule):
    with Lab(tmp_path / "lab") as lab:
        master = _master(lab, tmp_path, stage1[0], capsule)
        nodes = [lab.qemu(f"node{i}", mac=mac, boot="pxe") for i, mac in enumerate(MACS)]
        ready = [node.wait_for(rf"{cluster.RUNTIME_MARKER} (\S+)", timeout=BOOT_TIMEOUT) for node in nodes]
        names = {match.group(1) for match in ready}
        assert names == {"n0000", "n0001", "n0002"}
        in_db = master.wait_ready(3, timeout=30)
        assert sorted(in_db) == ["n0000", "n0001", "n0002"]
        assert {mac for mac, _ in in_db.values()} == {mac.upper() for mac in MACS}
        assert all(state == "ready" for _, state in in_db.values())
        master.stop()


def _dhcp_only(lab: Lab, work: Path) -> None:
    """dnsmasq handing out leases and nothing else: stage one gets an address, no master."""
    low, high = lab.dhcp_range
    conf = work / "dnsmasq.conf"
    conf.write_text(
        f"interface={lab.bridge}\nbind-interfaces\nport=0\nuser=root\ndhcp-range={low},{high},1h\n"
        f"dhcp-leasefile={work}/leases\npid-file={work}/dnsmasq.pid\n"
    )
    lab.popen(["dnsmasq", "--keep-in-foreground", "-C", str(conf)])


@pytest.mark.qemu
@pytest.mark.netns
def test_no_master_five_rounds_then_countdown_and_enter_gives_a_shell(tmp_path, stage1):
    with Lab(tmp_path / "lab") as lab:
        _dhcp_only(lab, tmp_path)
        append = f"console=ttyS0,115200 masterip={lab.address}:9"  # nothing listens on port 9
        node = lab.qemu(
            "lost", mac=MACS[0], boot="kernel", kernel=_kernel(), initrd=stage1[0], append=append,
            console_input=True,
        )  # fmt: skip
        node.wait_for(r"perceus: round 1 of 5 failed", timeout=BOOT_TIMEOUT)
        node.wait_for(r"perceus: error: no master answered in 5 rounds", timeout=BOOT_TIMEOUT)
        countdown = node.wait_for(r"rebooting in 10 s; press ENTER for a shell", timeout=60)
        node.type("\n")
        node.wait_for(r"perceus: starting a shell", timeout=60, start=countdown.end())
        node.type("echo SHELL-$((6*7))\n")
        node.wait_for(r"SHELL-42", timeout=60)
        node.type("exit\n")  # leaving the shell reboots: QEMU (-no-reboot) exits
        assert node.wait_exit(timeout=60) == 0


@pytest.mark.qemu
@pytest.mark.netns
def test_debug_3_opens_a_shell_at_once_and_noload_keeps_a_driver_out(tmp_path, stage1):
    with Lab(tmp_path / "lab") as lab:
        append = f"console=ttyS0,115200 masterip={lab.address} perceus.debug=3 perceus.noload=virtio_net"
        node = lab.qemu(
            "debug", mac=MACS[1], boot="kernel", kernel=_kernel(), initrd=stage1[0], append=append,
            console_input=True,
        )  # fmt: skip
        loaded = node.wait_for(r"perceus: loaded drivers: (.*)", timeout=BOOT_TIMEOUT)
        assert "virtio_pci" in loaded.group(1).split() and "virtio_net" not in loaded.group(1).split()
        node.wait_for(r"perceus: no interface has a link", timeout=BOOT_TIMEOUT)
        failed = node.wait_for(r"perceus: error: no Ethernet interface with a MAC", timeout=BOOT_TIMEOUT)
        node.wait_for(r"perceus: starting a shell", timeout=60, start=failed.end())
        assert "press ENTER" not in node.console()[failed.end() :]
        node.type("exit\n")
        assert node.wait_exit(timeout=60) == 0
