"""``perceus configure dnsmasq|tftp|nfs|hosts`` and ``node set boot``: the files they write,
dnsmasq accepting its configuration, and bad input changing nothing."""

import filecmp
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from perceus.server.netservices import dnsmasq as dnsmasq_conf
from perceus.server.netservices import tftp

from tests.support.instance import Instance

MAC1, MAC2 = "52:54:00:AA:00:01", "52:54:00:AA:00:02"


def files(*roots: Path) -> dict[str, bytes]:
    """Every file under the roots (not the database), to prove a failure changed nothing."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "database" not in path.parts:
                found[str(path)] = path.read_bytes()
    return found


def fail(inst: Instance, *args: str, status: int, contains: str) -> str:
    """A command that must fail with one error line and leave every file as it was."""
    roots = (inst.sysconfdir, inst.statedir, Path(inst.env["PERCEUS_RUNDIR"]))
    before = files(*roots)
    err = inst.error(*args, status=status, contains=contains).err
    assert files(*roots) == before
    return err


def conf_lines(inst: Instance) -> list[str]:
    return (inst.sysconfdir / "dnsmasq.conf").read_text().splitlines()


def dnsmasq_test(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [dnsmasq_conf.dnsmasq_binary(), "--test", "-C", str(path)], capture_output=True, text=True, timeout=30
    )


def set_conf(inst: Instance, key: str, value: str) -> None:
    conf = inst.sysconfdir / "perceus.conf"
    conf.write_text(conf.read_text() + f"{key} = {value}\n")


# ------------------------------------------------------------------------------ dnsmasq


def test_dnsmasq_conf_has_every_part_and_dnsmasq_accepts_it(net: Instance, tmp_path: Path) -> None:
    net.ok("node", "add", MAC1)
    net.ok("node", "add", MAC2, "login1")
    out = net.ok("configure", "dnsmasq").out
    assert "2 nodes, DHCP range 127.255.255.0-127.255.255.254" in out
    lines = conf_lines(net)
    assert "interface=lo" in lines and "bind-interfaces" in lines
    assert "except-interface=lo" not in lines  # the device is lo itself
    assert "port=0" not in lines  # DNS stays on: the guide's name service for the nodes
    assert "dhcp-range=127.255.255.0,127.255.255.254,255.0.0.0,12h" in lines
    assert f"dhcp-host={MAC1},n0000" in lines and f"dhcp-host={MAC2},login1" in lines
    assert "enable-tftp" in lines
    assert f"tftp-root={net.statedir / 'tftp'}" in lines
    assert "dhcp-userclass=set:ipxe,iPXE" in lines
    assert "dhcp-boot=tag:!ipxe,undionly.kpxe" in lines
    assert "dhcp-boot=tag:ipxe,pxelinux.0" in lines
    assert f"dhcp-leasefile={net.statedir / 'dnsmasq.leases'}" in lines
    assert f"pid-file={tmp_path / 'run' / 'dnsmasq.pid'}" in lines
    assert f"addn-hosts={net.sysconfdir / 'hosts'}" in lines
    assert "log-dhcp" not in lines
    assert (net.sysconfdir / "hosts").exists()  # the file addn-hosts names is always there
    result = dnsmasq_test(net.sysconfdir / "dnsmasq.conf")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((net.sysconfdir / "dnsmasq.conf").stat().st_mode) == 0o644
    assert not [p for p in net.sysconfdir.iterdir() if p.name.endswith(".tmp")]


def test_dnsmasq_options(net: Instance, tmp_path: Path) -> None:
    log = tmp_path / "dnsmasq.log"
    net.ok(
        "configure",
        "dnsmasq",
        "--no-dns",
        "--no-ipxe",
        "--log-dhcp",
        "--log-file",
        str(log),
        "--lease-time",
        "1h",
        "--range",
        "127.0.0.10,127.0.0.20",
        "--domain",
        "cluster.test",
        "--user",
        "root",
    )
    lines = conf_lines(net)
    assert "port=0" in lines and "log-dhcp" in lines and f"log-facility={log}" in lines
    assert "dhcp-range=127.0.0.10,127.0.0.20,255.0.0.0,1h" in lines
    assert "dhcp-boot=pxelinux.0" in lines and not [line for line in lines if "ipxe" in line.lower()]
    assert "domain=cluster.test" in lines and "user=root" in lines
    assert dnsmasq_test(net.sysconfdir / "dnsmasq.conf").returncode == 0


def test_ipv6_ra_advertises_the_devices_prefix_only_when_asked(net: Instance) -> None:
    net.ok("configure", "dnsmasq")
    assert "enable-ra" not in conf_lines(net)
    net.ok("configure", "dnsmasq", "--ipv6-ra")
    lines = conf_lines(net)
    assert "enable-ra" in lines and "dhcp-range=::,constructor:lo,ra-only" in lines
    assert dnsmasq_test(net.sysconfdir / "dnsmasq.conf").returncode == 0


def test_domain_with_dns_expands_node_names(net: Instance) -> None:
    net.ok("configure", "dnsmasq", "--domain", "cluster.test")
    lines = conf_lines(net)
    assert ["domain=cluster.test", "expand-hosts", "local=/cluster.test/"] == [
        line for line in lines if "cluster.test" in line or line == "expand-hosts"
    ]
    assert dnsmasq_test(net.sysconfdir / "dnsmasq.conf").returncode == 0


def test_rerunning_picks_up_new_nodes(net: Instance) -> None:
    net.ok("node", "add", MAC1)
    net.ok("configure", "dnsmasq")
    assert [line for line in conf_lines(net) if line.startswith("dhcp-host=")] == [f"dhcp-host={MAC1},n0000"]
    net.ok("node", "add", MAC2)
    net.ok("-y", "node", "delete", "n0000")
    net.ok("configure", "dnsmasq")
    assert [line for line in conf_lines(net) if line.startswith("dhcp-host=")] == [f"dhcp-host={MAC2},n0001"]


def test_dnsmasq_keeps_root_only_when_its_user_could_not_read_the_tftp_root(net: Instance) -> None:
    err = net.ok("configure", "dnsmasq").err
    blocked = dnsmasq_conf.unreachable_by_others(net.statedir / "tftp") or dnsmasq_conf.unreachable_by_others(
        net.sysconfdir / "hosts"
    )
    assert ("dnsmasq keeps running as root" in err) == (blocked is not None)
    assert ("user=root" in conf_lines(net)) == (blocked is not None)
    assert "the TFTP root is empty: run 'perceus configure tftp'" in err
    err = net.ok("configure", "dnsmasq", "--user", "dnsmasq").err
    assert "keeps running as root" not in err and "user=dnsmasq" in conf_lines(net)


def test_unreachable_by_others() -> None:
    # Not in pytest's temporary directories: they are closed to others themselves.
    with tempfile.TemporaryDirectory(prefix="perceus-test-", dir="/tmp") as scratch:
        base = Path(scratch)
        base.chmod(0o755)
        closed, open_ = base / "closed", base / "open"
        for directory in (closed, open_):
            (directory / "inner").mkdir(parents=True)
        closed.chmod(0o700)
        open_.chmod(0o755)
        above = dnsmasq_conf.unreachable_by_others(base)
        assert above is None, above
        assert dnsmasq_conf.unreachable_by_others(closed / "inner" / "file") == closed
        assert dnsmasq_conf.unreachable_by_others(open_ / "inner" / "file") is None


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (("--range", "127.0.0.10"), 2, "--range takes START,END"),
        (("--range", "127.0.0.20,127.0.0.10"), 2, "START is above END"),
        (("--range", "10.0.0.1,10.0.0.9"), 2, "not a host address of 127.0.0.0/8"),
        (("--range", "127.0.0.1,127.0.0.9"), 2, "the master's own address"),
        (("--lease-time", "soon"), 2, "--lease-time takes"),
        (("--lease-time", "60"), 2, "minimum is 2m"),
        (("--domain", "bad domain"), 2, "--domain takes"),
        (("--user", "Robert'); DROP"), 2, "--user takes"),
    ],
)
def test_dnsmasq_bad_options_change_nothing(net: Instance, args: tuple, status: int, words: str) -> None:
    fail(net, "configure", "dnsmasq", *args, status=status, contains=words)
    assert not (net.sysconfdir / "dnsmasq.conf").exists()


def test_device_without_an_address_is_one_line_and_changes_nothing(net: Instance) -> None:
    net.ok("configure", "dnsmasq")
    set_conf(net, "master network device", "ptnone0")
    err = fail(
        net, "configure", "dnsmasq", status=1, contains="master network device 'ptnone0' has no IPv4 address"
    )
    assert "perceus.conf:" in err  # where: the line that names the device
    fail(net, "configure", "nfs", status=1, contains="'ptnone0' has no IPv4 address")


def test_uninitialised_master_is_refused(bare: Instance) -> None:
    bare.error("configure", "dnsmasq", status=1, contains="perceus is not initialised")
    assert not (bare.sysconfdir / "dnsmasq.conf").exists()


# ------------------------------------------------------------------------------ tftp


def test_tftp_tree(net: Instance, stage1: tuple[Path, Path]) -> None:
    kernel, initramfs = stage1
    out = net.ok("configure", "tftp", "--kernel", str(kernel), "--initramfs", str(initramfs)).out
    assert "masterip=127.0.0.1" in out
    root = net.statedir / "tftp"
    for name, source, _ in tftp.BOOT_FILES:
        assert filecmp.cmp(root / name, source, shallow=False), name
    assert filecmp.cmp(root / "perceus" / "vmlinuz", kernel, shallow=False)
    assert filecmp.cmp(root / "perceus" / "stage1.img", initramfs, shallow=False)
    assert {p.name for p in root.iterdir()} == {
        "pxelinux.0",
        "ldlinux.c32",
        "menu.c32",
        "libutil.c32",
        "libcom32.c32",
        "undionly.kpxe",
        "perceus",
        "pxelinux.cfg",
    }
    for path in root.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), path
        assert not path.name.endswith(".tmp")
    default = (root / "pxelinux.cfg" / "default").read_text()
    assert "DEFAULT perceus" in default
    assert "  KERNEL perceus/vmlinuz" in default
    assert (
        "  APPEND initrd=perceus/stage1.img masterip=127.0.0.1 console=tty0 console=ttyS0,115200\n" in default
    )
    assert "quiet" not in default
    assert "LABEL local\n" in default and "  LOCALBOOT 0\n" in default


def test_tftp_default_paths_master_port_and_append(net: Instance, stage1: tuple[Path, Path]) -> None:
    (net.statedir / "stage1").mkdir()
    for source, name in zip(stage1, ("vmlinuz", "initramfs.img"), strict=True):
        (net.statedir / "stage1" / name).write_bytes(source.read_bytes())
    set_conf(net, "perceusd port", "9870")
    net.ok("configure", "tftp", "--master", "10.9.8.7", "--append", "perceus.debug=3  perceus.iface=eth0")
    root = net.statedir / "tftp"
    assert filecmp.cmp(root / "perceus" / "stage1.img", stage1[1], shallow=False)
    default = (root / "pxelinux.cfg" / "default").read_text()
    assert (
        "masterip=10.9.8.7:9870 console=tty0 console=ttyS0,115200 perceus.debug=3 perceus.iface=eth0"
        in default
    )


def test_tftp_missing_stage_one_says_to_build_it(net: Instance, stage1: tuple[Path, Path]) -> None:
    kernel, _ = stage1
    fail(net, "configure", "tftp", status=1, contains="run 'perceus stage1 build' first")
    fail(
        net,
        "configure",
        "tftp",
        "--kernel",
        str(kernel),
        "--initramfs",
        str(kernel.parent / "nope.img"),
        status=1,
        contains="no stage-one initramfs: run 'perceus stage1 build' first",
    )
    assert not (net.statedir / "tftp").exists()
    fail(
        net,
        "configure",
        "tftp",
        "--kernel",
        str(kernel),
        "--master",
        "nowhere",
        status=2,
        contains="--master takes",
    )
    fail(net, "configure", "tftp", "--append", "a\x01b", status=2, contains="--append takes")


def test_tftp_master_falls_back_to_transfer_master(net: Instance, stage1: tuple[Path, Path]) -> None:
    set_conf(net, "master network device", "ptnone0")
    kernel, initramfs = stage1
    net.ok("configure", "tftp", "--kernel", str(kernel), "--initramfs", str(initramfs))
    assert "masterip=127.0.0.1 " in (net.statedir / "tftp" / "pxelinux.cfg" / "default").read_text()
    set_conf(net, "vnfs transfer master", "")
    fail(
        net,
        "configure",
        "tftp",
        "--kernel",
        str(kernel),
        "--initramfs",
        str(initramfs),
        status=1,
        contains="give --master ADDRESS",
    )


# ------------------------------------------------------------------------------ node set boot


def test_node_set_boot_writes_per_mac_files(net: Instance, stage1: tuple[Path, Path]) -> None:
    kernel, initramfs = stage1
    net.ok("node", "add", MAC1)
    net.ok("node", "add", MAC2)
    net.ok("configure", "tftp", "--kernel", str(kernel), "--initramfs", str(initramfs))
    cfg = net.statedir / "tftp" / "pxelinux.cfg"
    first, second = cfg / "01-52-54-00-aa-00-01", cfg / "01-52-54-00-aa-00-02"
    assert net.ok("node", "set", "boot", "local", "n000[0-1]").out == "'2' nodes set boot='local'\n"
    for path in (first, second):
        text = path.read_text()
        assert "DEFAULT local" in text and "  LOCALBOOT 0" in text and "KERNEL" not in text
    net.ok("-i", "node", "set", "boot", "perceus", MAC2.lower())
    default = (cfg / "default").read_text()
    label = default[default.index("LABEL perceus") : default.index("LABEL local")].rstrip()
    text = second.read_text()
    assert "DEFAULT perceus" in text and text.rstrip().endswith(label)
    # A new master address reaches the per-node stage-one files too.
    net.ok(
        "configure", "tftp", "--kernel", str(kernel), "--initramfs", str(initramfs), "--master", "10.1.2.3"
    )
    assert "masterip=10.1.2.3 " in second.read_text()
    assert "LOCALBOOT 0" in first.read_text()
    net.ok("node", "set", "boot", "default", "n0000", "n0001")
    assert sorted(p.name for p in cfg.iterdir()) == ["default"]
    net.ok("node", "set", "boot", "default", "n0000")  # nothing to remove: fine


def test_boot_files_follow_node_replace_and_go_with_node_delete(
    net: Instance, stage1: tuple[Path, Path]
) -> None:
    kernel, initramfs = stage1
    net.ok("node", "add", MAC1)
    net.ok("configure", "tftp", "--kernel", str(kernel), "--initramfs", str(initramfs))
    cfg = net.statedir / "tftp" / "pxelinux.cfg"
    net.ok("node", "set", "boot", "local", "n0000")
    net.ok("node", "add", MAC2)  # the spare: n0001
    net.ok("-y", "node", "replace", "n0000", "n0001")  # n0000 is now MAC2's hardware
    assert sorted(p.name for p in cfg.iterdir()) == ["01-52-54-00-aa-00-02", "default"]
    assert "LOCALBOOT 0" in (cfg / "01-52-54-00-aa-00-02").read_text()
    net.ok("-y", "node", "delete", "n0000")
    assert sorted(p.name for p in cfg.iterdir()) == ["default"]


def test_node_set_boot_bad_input(net: Instance, stage1: tuple[Path, Path]) -> None:
    net.ok("node", "add", MAC1)
    fail(net, "node", "set", "boot", "perceus", "n0000", status=1, contains="run 'perceus configure tftp'")
    fail(net, "node", "set", "boot", "local", "n0000", status=1, contains="run 'perceus configure tftp'")
    kernel, initramfs = stage1
    net.ok("configure", "tftp", "--kernel", str(kernel), "--initramfs", str(initramfs))
    fail(
        net, "node", "set", "boot", "disk", "n0000", status=2, contains="boot takes local, perceus or default"
    )
    fail(net, "node", "set", "boot", "local", "nosuch", status=1, contains="no nodes match nosuch")
    fail(net, "node", "set", "boot", "local", status=2, contains="Missing argument 'NODES...'")
    assert "boot" not in net.ok("node", "show", "n0000").out  # a file, not a database field


# ------------------------------------------------------------------------------ nfs


def fake_exportfs(tmp_path: Path, status: int) -> Path:
    """A directory holding an ``exportfs`` that records its arguments."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "exportfs"
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/exportfs.calls\necho "exportfs said no" >&2\nexit {status}\n'
    )
    script.chmod(0o755)
    return bindir


def only_path(inst: Instance, *dirs: Path) -> None:
    """PATH with the venv and ``dirs`` only: whether exportfs exists is the test's choice."""
    inst.env["PATH"] = ":".join([str(Path(inst.env["PATH"].split(":")[0])), *map(str, dirs)])


def test_nfs_exports_without_nfs_server(net: Instance, tmp_path: Path) -> None:
    only_path(net, tmp_path / "empty")
    out = net.ok("configure", "nfs").out
    exports = Path(net.env["PERCEUS_EXPORTS_FILE"])
    assert exports.read_text().splitlines()[1] == (
        f"{net.statedir / 'vnfs'} 127.0.0.0/8(ro,no_root_squash,no_subtree_check)"
    )
    assert "install nfs-kernel-server" in out


def test_nfs_exports_runs_exportfs_and_honours_the_prefix(net: Instance, tmp_path: Path) -> None:
    only_path(net, fake_exportfs(tmp_path, 0))
    set_conf(net, "vnfs transfer prefix", "/srv/perceus")
    out = net.ok("configure", "nfs").out
    assert "exportfs -ra" in out
    assert (tmp_path / "exportfs.calls").read_text() == "-ra\n"
    line = Path(net.env["PERCEUS_EXPORTS_FILE"]).read_text().splitlines()[1]
    assert line.startswith("/srv/perceus/vnfs 127.0.0.0/8(ro,")


def test_nfs_exportfs_failure_is_one_line(net: Instance, tmp_path: Path) -> None:
    only_path(net, fake_exportfs(tmp_path, 1))
    net.error("configure", "nfs", status=1, contains="exportfs -ra failed: exportfs said no")


def test_nfs_warns_about_another_transfer_method(net: Instance, tmp_path: Path) -> None:
    only_path(net, tmp_path / "empty")
    set_conf(net, "vnfs transfer method", "http")
    assert "vnfs transfer method is 'http', not nfs" in net.ok("configure", "nfs").err


# ------------------------------------------------------------------------------ hosts


def test_hosts_file_lists_nodes_with_addresses(net: Instance) -> None:
    net.ok("node", "add", MAC1)
    net.ok("node", "add", MAC2, "login1")
    net.ok("node", "set", "ipaddr", "10.0.0.5", "n0000")
    out = net.ok("configure", "hosts").out
    assert "1 node addresses" in out
    lines = (net.sysconfdir / "hosts").read_text().splitlines()
    assert lines[1:] == ["10.0.0.5\tn0000"]  # login1 has no address: left out
    net.ok("node", "set", "ipaddr", "10.0.0.6", "login1")
    net.ok("configure", "hosts")
    assert (net.sysconfdir / "hosts").read_text().splitlines()[1:] == ["10.0.0.6\tlogin1", "10.0.0.5\tn0000"]


def test_etc_hosts_merge_keeps_other_lines(net: Instance, tmp_path: Path) -> None:
    net.ok("node", "add", MAC1)
    net.ok("node", "set", "ipaddr", "10.0.0.5", "n0000")
    hosts = tmp_path / "hosts"
    original = "127.0.0.1\tlocalhost\r\n# keep me\n10.0.0.1 master"  # no final newline, one CRLF
    hosts.write_bytes(original.encode())
    hosts.chmod(0o640)
    net.ok("configure", "hosts", "--etc-hosts", str(hosts))
    merged = hosts.read_bytes().decode()
    assert merged.startswith(original + "\n# BEGIN perceus nodes")
    assert merged.endswith("10.0.0.5\tn0000\n# END perceus nodes\n")
    assert stat.S_IMODE(hosts.stat().st_mode) == 0o640
    hosts.write_text(merged + "192.168.0.9 printer\n")
    net.ok("node", "set", "ipaddr", "10.0.0.7", "n0000")
    net.ok("configure", "hosts", "--etc-hosts", str(hosts))
    again = hosts.read_bytes().decode()
    assert again == merged.replace("10.0.0.5", "10.0.0.7") + "192.168.0.9 printer\n"
    assert again.count("# BEGIN perceus nodes") == 1


def test_etc_hosts_bad_input_changes_nothing(net: Instance, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n# BEGIN perceus nodes (...)\n10.0.0.5 n0000\n")
    before = hosts.read_bytes()
    fail(net, "configure", "hosts", "--etc-hosts", str(hosts), status=1, contains="marker lines are damaged")
    assert hosts.read_bytes() == before
    fail(net, "configure", "hosts", "--etc-hosts", str(tmp_path / "nope"), status=1, contains="no such file")


def test_unwritable_target_is_one_line(net: Instance, tmp_path: Path) -> None:
    only_path(net, tmp_path / "empty")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    net.env["PERCEUS_EXPORTS_FILE"] = str(blocker / "perceus.exports")
    fail(
        net,
        "configure",
        "nfs",
        status=1,
        contains=f"cannot write it: File exists ({blocker}/perceus.exports)",
    )
