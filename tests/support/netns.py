"""Throwaway network namespaces and an sshd inside one, for integration tests (run as root).

Each namespace is joined to the root namespace by a veth pair carrying a private /29
from 10.251.0.0/16; names and the subnet derive from the test process's pid, so parallel
runs never clash. Everything is torn down on exit, even when the test fails: the
processes inside the namespace (all of them ours), the namespace and the veth pair.
"""

import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SUPERNET = ipaddress.ip_network("10.251.0.0/16")
PREFIX = 29
COMMAND_TIMEOUT = 20


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=check)


@dataclass(frozen=True)
class Namespace:
    """One namespace: ``host_address`` is on our veth end, ``address`` inside the namespace,
    ``spare_address`` also inside it with nothing listening (a node that refuses)."""

    name: str
    host_if: str
    ns_if: str
    host_address: str
    address: str
    spare_address: str

    def exec(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]


def _free_subnet() -> ipaddress.IPv4Network:
    """A /29 of the supernet no address in the root namespace falls in, starting at pid's."""
    used = []
    for line in run("ip", "-o", "-4", "addr", "show").stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    subnets = list(SUPERNET.subnets(new_prefix=PREFIX))
    start = os.getpid() % len(subnets)
    for offset in range(len(subnets)):
        candidate = subnets[(start + offset) % len(subnets)]
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError("no free /29 left in 10.251.0.0/16")


@contextmanager
def namespace(tag: str = "a") -> Iterator[Namespace]:
    """A fresh namespace with a veth pair and three addresses; removed on exit."""
    pid = os.getpid()
    subnet = _free_subnet()
    hosts = list(subnet.hosts())
    ns = Namespace(
        name=f"perceus-test-{pid}-{tag}",
        host_if=f"pt{pid}{tag}h"[:15],
        ns_if=f"pt{pid}{tag}n"[:15],
        host_address=str(hosts[0]),
        address=str(hosts[1]),
        spare_address=str(hosts[2]),
    )
    try:
        run("ip", "netns", "add", ns.name)
        run("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        run("ip", "link", "set", ns.ns_if, "netns", ns.name)
        run("ip", "addr", "add", f"{ns.host_address}/{PREFIX}", "dev", ns.host_if)
        run("ip", "link", "set", ns.host_if, "up")
        run(*ns.exec("ip", "addr", "add", f"{ns.address}/{PREFIX}", "dev", ns.ns_if))
        run(*ns.exec("ip", "addr", "add", f"{ns.spare_address}/{PREFIX}", "dev", ns.ns_if))
        run(*ns.exec("ip", "link", "set", ns.ns_if, "up"))
        run(*ns.exec("ip", "link", "set", "lo", "up"))
        yield ns
    finally:
        pids = run("ip", "netns", "pids", ns.name, check=False).stdout.split()
        for each in pids:  # only processes we started can be in our namespace
            try:
                os.kill(int(each), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run("ip", "netns", "del", ns.name, check=False)
        run("ip", "link", "del", ns.host_if, check=False)  # gone with the namespace, normally


@dataclass
class SshServer:
    """An sshd listening on ``address:port`` inside a namespace, and how to reach it."""

    address: str
    port: int
    key: Path
    log: Path
    ssh_options: list[str] = field(default_factory=list)


def _wait_for_port(address: str, port: int, proc: subprocess.Popen, log: Path, deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection((address, port), timeout=1) as sock:
                sock.settimeout(5)
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not answer on {address}:{port}: {log.read_text()[-2000:]}")
        time.sleep(0.1)


@contextmanager
def sshd(ns: Namespace, workdir: Path, port: int = 2222) -> Iterator[SshServer]:
    """sshd inside ``ns`` accepting a key made for the test, root login only by that key.

    sshd needs its privilege-separation directory /run/sshd; it gets a private tmpfs
    /run in the mount namespace ``ip netns exec`` makes, so the master's /run is untouched.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    hostkey, key = workdir / "ssh_host_ed25519_key", workdir / "id_ed25519"
    for path in (hostkey, key):
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "perceus-test", "-f", str(path))
    authorized = workdir / "authorized_keys"
    authorized.write_text(key.with_suffix(".pub").read_text())
    config = workdir / "sshd_config"
    config.write_text(
        f"ListenAddress {ns.address}\n"
        f"Port {port}\n"
        f"AuthorizedKeysFile {authorized}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "PrintMotd no\n"
        "PidFile none\n"
        "LogLevel INFO\n"
    )
    log = workdir / "sshd.log"
    script = 'mount -t tmpfs -o mode=0755 perceus-test /run && mkdir -m 0755 /run/sshd && exec "$0" "$@"'
    with open(log, "wb") as output:
        proc = subprocess.Popen(
            ns.exec("sh", "-c", script, "/usr/sbin/sshd", "-D", "-e", "-f", str(config), "-h", str(hostkey)),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_port(ns.address, port, proc, log, time.monotonic() + COMMAND_TIMEOUT)
        yield SshServer(
            address=ns.address,
            port=port,
            key=key,
            log=log,
            ssh_options=[
                "-F",
                "/dev/null",
                "-i",
                str(key),
                "-p",
                str(port),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-l",
                "root",
            ],
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass(frozen=True)
class VethPair:
    """Two namespaces joined by a veth pair; the server end has the /24's first address."""

    server_ns: str
    client_ns: str
    server_if: str
    client_if: str
    network: ipaddress.IPv4Network

    @property
    def server_address(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def prefix(self) -> str:
        """The /24's first three octets, e.g. ``10.252.7``."""
        return self.server_address.rsplit(".", 1)[0]


def _kill_all(ns: str) -> None:
    for each in run("ip", "netns", "pids", ns, check=False).stdout.split():
        try:  # only processes the test started can be in its namespaces
            os.kill(int(each), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@contextmanager
def veth_pair(name: str, second_octet: int, client_mac: str | None = None) -> Iterator[VethPair]:
    """Two fresh namespaces (a DHCP server's and a client's) joined by a veth pair on
    ``10.<second_octet>.<pid>.0/24``, both ends up, the client's without an address; on exit
    every process in them is killed and both namespaces (and the pair) are removed."""
    pid = os.getpid()
    pair = VethPair(
        server_ns=f"perceus-{name}-{pid}-s",
        client_ns=f"perceus-{name}-{pid}-c",
        server_if=f"p{name[:4]}{pid}s"[:15],
        client_if=f"p{name[:4]}{pid}c"[:15],
        network=ipaddress.ip_network(f"10.{second_octet}.{pid % 250}.0/24"),
    )
    try:
        run("ip", "netns", "add", pair.server_ns)
        run("ip", "netns", "add", pair.client_ns)
        run("ip", "link", "add", pair.server_if, "netns", pair.server_ns, "type", "veth",
            "peer", "name", pair.client_if, "netns", pair.client_ns)  # fmt: skip
        run("ip", "-n", pair.server_ns, "addr", "add", f"{pair.server_address}/24", "dev", pair.server_if)
        if client_mac:
            run("ip", "-n", pair.client_ns, "link", "set", pair.client_if, "address", client_mac)
        for ns, iface in ((pair.server_ns, pair.server_if), (pair.client_ns, pair.client_if)):
            run("ip", "-n", ns, "link", "set", iface, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in (pair.server_ns, pair.client_ns):
            _kill_all(ns)
            run("ip", "netns", "del", ns, check=False)  # takes the veth pair with it
