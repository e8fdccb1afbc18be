"""``perceus service``: perceusd and dnsmasq as processes, and a PXE client's view of them.

The integration tests build two throwaway network namespaces joined by a veth pair: the
master's (10.252.N.1/24, perceusd and dnsmasq run there) and a node's, where busybox
udhcpc takes a lease and busybox tftp fetches pxelinux.0, as a PXE ROM would. Nothing
leaves those namespaces; both are removed, with every process in them, even on failure.
"""

import subprocess
import time
from pathlib import Path

import pytest

from tests.support.instance import BIN, Instance, Result
from tests.support.netns import VethPair, veth_pair

NODE_MAC = "52:54:00:fe:00:01"
TIMEOUT = 60


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=check)


def perceus_in(inst: Instance, ns: str, *args: str) -> Result:
    """The perceus command run inside a namespace, with the instance's environment."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, str(BIN / "perceus"), *args],
        capture_output=True,
        text=True,
        env=inst.env,
        timeout=TIMEOUT * 2,
        stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ok_in(inst: Instance, ns: str, *args: str) -> Result:
    result = perceus_in(inst, ns, *args)
    assert result.status == 0, f"perceus {' '.join(args)}: {result.err}"
    assert "Traceback" not in result.err
    return result


def set_conf(inst: Instance, key: str, value: str) -> None:
    conf = inst.sysconfdir / "perceus.conf"
    conf.write_text(conf.read_text() + f"{key} = {value}\n")


def udhcpc(made: VethPair, workdir: Path, ipxe: bool = False) -> dict[str, str]:
    """One DHCP lease in the node's namespace, as the variables busybox gives its script.

    The script also puts the address on the interface, so TFTP can follow. With ``ipxe``
    the request carries iPXE's user class (option 77, "iPXE").
    """
    sh("ip", "-n", made.client_ns, "addr", "flush", "dev", made.client_if)
    log = workdir / "udhcpc.env"
    log.unlink(missing_ok=True)
    script = workdir / "udhcpc.sh"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = bound ]; then\n'
        f'  env > "{log}"\n'
        '  ip addr add "$ip/$mask" dev "$interface"\n'
        "fi\n"
    )
    script.chmod(0o755)
    args = [
        "busybox",
        "udhcpc",
        "-i",
        made.client_if,
        "-n",
        "-q",
        "-f",
        "-t",
        "5",
        "-T",
        "2",
        "-s",
        str(script),
    ]
    if ipxe:
        args += ["-x", "0x4d:" + b"iPXE".hex()]
    proc = subprocess.run(
        ["ip", "netns", "exec", made.client_ns, *args], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0 and log.exists(), f"no lease: {proc.stdout}{proc.stderr}"
    return dict(line.split("=", 1) for line in log.read_text().splitlines() if "=" in line)


def tftp_get(made: VethPair, name: str, target: Path) -> bytes:
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            made.client_ns,
            "busybox",
            "tftp",
            "-g",
            "-r",
            name,
            "-l",
            str(target),
            made.server_address,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, f"tftp {name}: {proc.stderr}"
    return target.read_bytes()


def status_lines(result: Result) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in result.lines)


@pytest.mark.netns
def test_pxe_client_gets_a_lease_and_pxelinux_from_the_started_services(
    net: Instance, tmp_path: Path, stage1: tuple[Path, Path]
) -> None:
    kernel, initramfs = stage1
    log = tmp_path / "dnsmasq.log"
    with veth_pair("neta", 252, NODE_MAC) as made:
        set_conf(net, "master network device", made.server_if)
        try:
            ok_in(
                net,
                made.server_ns,
                "configure",
                "tftp",
                "--kernel",
                str(kernel),
                "--initramfs",
                str(initramfs),
            )
            # pytest's temporary directories are closed to others: configure keeps dnsmasq root
            dns_args = ("configure", "dnsmasq", "--log-dhcp", "--log-file", str(log))
            out = ok_in(net, made.server_ns, *dns_args).out
            assert f"DHCP range {made.prefix}.192-{made.prefix}.254" in out
            started = ok_in(net, made.server_ns, "service", "start").out
            assert "perceusd: started (pid" in started and "dnsmasq: started (pid" in started
            running = status_lines(ok_in(net, made.server_ns, "service", "status"))
            assert running["perceusd"].startswith("running (pid") and running["dnsmasq"].startswith(
                "running (pid"
            )
            dnsmasq_pid = int((tmp_path / "run" / "dnsmasq.pid").read_text())
            assert running["dnsmasq"] == f"running (pid {dnsmasq_pid})"

            # An unknown node's PXE ROM: a dynamic address, and iPXE to chainload.
            lease = udhcpc(made, tmp_path)
            host = int(lease["ip"].rsplit(".", 1)[1])
            assert lease["ip"].startswith(made.prefix + ".") and 192 <= host <= 254, lease
            assert lease["siaddr"] == made.server_address and lease["boot_file"] == "undionly.kpxe", lease
            got = tftp_get(made, "pxelinux.0", tmp_path / "got-pxelinux.0")
            assert got == Path("/usr/lib/PXELINUX/pxelinux.0").read_bytes()
            default = tftp_get(made, "pxelinux.cfg/default", tmp_path / "got-default").decode()
            assert f"masterip={made.server_address} " in default
            assert tftp_get(made, "perceus/stage1.img", tmp_path / "got-stage1") == initramfs.read_bytes()

            # Known now, with a static address in the hosts file (guide 3.1.4); iPXE asks again.
            net.ok("node", "add", NODE_MAC)
            net.ok("node", "set", "ipaddr", f"{made.prefix}.50", "n0000")
            ok_in(net, made.server_ns, *dns_args)
            restarted = ok_in(net, made.server_ns, "service", "restart").out
            assert "dnsmasq: stopped" in restarted and "dnsmasq: started" in restarted
            lease = udhcpc(made, tmp_path, ipxe=True)
            assert lease["ip"] == f"{made.prefix}.50" and lease.get("hostname") == "n0000", lease
            assert lease["boot_file"] == "pxelinux.0", lease
            nslookup = ["busybox", "nslookup", "-type=a", "n0000", made.server_address]
            answer = sh("ip", "netns", "exec", made.client_ns, *nslookup)
            assert f"Address: {made.prefix}.50" in answer.stdout, answer.stdout

            stopped = ok_in(net, made.server_ns, "service", "stop").out
            assert "dnsmasq: stopped (pid" in stopped and "perceusd: stopped (pid" in stopped
            after = perceus_in(net, made.server_ns, "service", "status")
            assert after.status == 3 and status_lines(after) == {"perceusd": "stopped", "dnsmasq": "stopped"}
            assert sh("ip", "netns", "pids", made.server_ns).stdout.split() == []
            assert not (tmp_path / "run" / "dnsmasq.pid").exists()
            assert not (tmp_path / "run" / "perceusd.pid").exists()
        finally:
            perceus_in(net, made.server_ns, "service", "stop")


@pytest.mark.netns
def test_start_is_all_or_nothing(net: Instance, tmp_path: Path) -> None:
    """dnsmasq cannot start (its device is missing): the perceusd just started is stopped again."""
    with veth_pair("netb", 252, NODE_MAC) as made:
        set_conf(net, "master network device", made.server_if)
        try:
            ok_in(net, made.server_ns, "configure", "dnsmasq", "--user", "root")
            sh("ip", "-n", made.server_ns, "link", "del", made.server_if)  # gone after configuring
            result = perceus_in(net, made.server_ns, "service", "start")
            assert result.status == 1, result.err
            errors = [line for line in result.err.splitlines() if line.startswith("perceus: error: ")]
            assert len(errors) == 1 and "dnsmasq did not start" in errors[0], result.err
            assert "perceusd: started" in result.out
            down = perceus_in(net, made.server_ns, "service", "status")
            assert down.status == 3 and status_lines(down) == {"perceusd": "stopped", "dnsmasq": "stopped"}
            assert sh("ip", "netns", "pids", made.server_ns).stdout.split() == []
        finally:
            perceus_in(net, made.server_ns, "service", "stop")


def test_status_when_nothing_runs_and_start_without_a_configuration(net: Instance, tmp_path: Path) -> None:
    result = net.run("service", "status")
    assert result.status == 3 and result.lines == ["perceusd: stopped", "dnsmasq: stopped"]
    net.error("service", "start", status=1, contains="run 'perceus configure dnsmasq' first")
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").iterdir())
    assert net.ok("service", "stop").lines == ["dnsmasq: was not running", "perceusd: was not running"]


def test_a_stale_pidfile_never_gets_another_process_killed(net: Instance, tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        for name in ("perceusd.pid", "dnsmasq.pid"):
            (run / name).write_text(f"{bystander.pid}\n")
        result = net.run("service", "status")
        assert result.status == 3 and result.lines == ["perceusd: stopped", "dnsmasq: stopped"]
        assert net.ok("service", "stop").lines == ["dnsmasq: was not running", "perceusd: was not running"]
        time.sleep(0.2)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(timeout=TIMEOUT)
