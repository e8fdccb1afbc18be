"""The dnsmasq configuration: DHCP and TFTP for booting nodes, DNS for their names.

Every node in the database gets a ``dhcp-host=MAC,NAME`` line, so a node's DHCP lease
carries its name, and a name the hosts file (``addn-hosts``) gives an address pins that
address: the guide's way to give nodes static addresses. Legacy PXE ROMs are handed
iPXE (``undionly.kpxe``), which asks again, is recognised by its user class and gets
pxelinux; ``--no-ipxe`` hands pxelinux to every client directly.

The file is checked with ``dnsmasq --test`` before it replaces the old one, so a file
dnsmasq would refuse is never installed.
"""

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from perceus.server.db import Node
from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.netservices.dhcprange import DhcpRange
from perceus.server.netservices.files import install_text

LEASE_TIME = re.compile(r"^(infinite|\d{1,9}[smhdw]?)$")
DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*$")
USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
IPXE_LOADER = "undionly.kpxe"
PXELINUX = "pxelinux.0"
TEST_TIMEOUT = 30


@dataclass(frozen=True)
class DnsmasqChoices:
    """What the administrator chooses (``perceus configure dnsmasq``'s options)."""

    lease_time: str = "12h"
    dns: bool = True
    domain: str | None = None
    ipxe: bool = True
    log_dhcp: bool = False
    log_file: Path | None = None
    user: str | None = None  # None: dnsmasq's own (unprivileged) user
    ipv6_ra: bool = False


@dataclass(frozen=True)
class DnsmasqConfig:
    """What ``perceus configure dnsmasq`` writes: the master's facts and the choices; paths are
    absolute."""

    device: str
    dhcp_range: DhcpRange
    netmask: str | None
    tftp_root: Path
    leasefile: Path
    pidfile: Path
    hostsfile: Path
    choices: DnsmasqChoices = DnsmasqChoices()


def check_choices(choices: DnsmasqChoices) -> None:
    """Usage errors for values dnsmasq would refuse, before anything is computed."""
    lease_time, domain, user = choices.lease_time, choices.domain, choices.user
    if not LEASE_TIME.match(lease_time):
        raise InvalidRequest(
            f"--lease-time takes seconds with an optional s/m/h/d/w, or infinite, not {lease_time!r}"
        )
    if lease_time.rstrip("smhdw").isdigit() and _seconds(lease_time) < 120:
        raise InvalidRequest(f"--lease-time {lease_time}: dnsmasq's minimum is 2m")
    if domain is not None and not DOMAIN.match(domain):
        raise InvalidRequest(f"--domain takes a DNS domain such as cluster.local, not {domain!r}")
    if user is not None and not USER.match(user):
        raise InvalidRequest(f"--user takes a user name, not {user!r}")


def _seconds(lease_time: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if lease_time[-1] in units:
        return int(lease_time[:-1]) * units[lease_time[-1]]
    return int(lease_time)


def render(config: DnsmasqConfig, nodes: Iterable[Node]) -> str:
    """The configuration text; nodes in the order given (the listing order)."""
    chosen = config.choices
    lines = [
        "# Written by 'perceus configure dnsmasq' from perceus.conf and the node database.",
        "# Run that command again after adding nodes; edits here are lost when it runs.",
        "",
        "# Serve only the device facing the nodes.",
        f"interface={config.device}",
        "bind-interfaces",
    ]
    if config.device != "lo":
        lines.append("except-interface=lo")
    lines += ["", f"pid-file={config.pidfile}"]
    if chosen.user:
        lines.append(f"user={chosen.user}")
    if chosen.log_file:
        lines.append(f"log-facility={chosen.log_file}")
    lines.append("")
    if chosen.dns:
        lines += ["# DNS for the nodes: their names from the hosts file and their DHCP leases."]
    else:
        lines += ["# DNS is off (--no-dns): DHCP and TFTP only.", "port=0"]
    if chosen.domain:  # also the DHCP domain-name option
        lines.append(f"domain={chosen.domain}")
        if chosen.dns:
            lines += ["expand-hosts", f"local=/{chosen.domain}/"]
    lines += [f"addn-hosts={config.hostsfile}", ""]
    netmask = f",{config.netmask}" if config.netmask else ""
    lines += [
        "# DHCP: the dynamic range, and each known node by its MAC address.",
        f"dhcp-range={config.dhcp_range.start},{config.dhcp_range.end}{netmask},{chosen.lease_time}",
        f"dhcp-leasefile={config.leasefile}",
    ]
    if chosen.log_dhcp:
        lines.append("log-dhcp")
    lines += [f"dhcp-host={node.nodeid},{node.hostname}" for node in nodes]
    lines += [
        "",
        "# PXE: pxelinux and stage one from the TFTP root.",
        "enable-tftp",
        f"tftp-root={config.tftp_root}",
    ]
    if chosen.ipxe:
        lines += [
            "# Legacy PXE ROMs chainload iPXE; iPXE (user class 'iPXE') then gets pxelinux.",
            "dhcp-userclass=set:ipxe,iPXE",
            f"dhcp-boot=tag:!ipxe,{IPXE_LOADER}",
            f"dhcp-boot=tag:ipxe,{PXELINUX}",
            "# iPXE's no-pxedhcp setting: no 3 s wait for a ProxyDHCP offer that never comes.",
            "dhcp-option=tag:ipxe,175,b0:01:01",
        ]
    if chosen.ipv6_ra:
        lines += [
            "",
            "# IPv6 router advertisements (--ipv6-ra): iPXE waits ~13 s for one before it boots.",
            "enable-ra",
            f"dhcp-range=::,constructor:{config.device},ra-only",
        ]
    else:
        lines.append(f"dhcp-boot={PXELINUX}")
    return "\n".join(lines) + "\n"


def dnsmasq_binary() -> str:
    """dnsmasq's path; /usr/sbin is looked in too, as it is off a non-root PATH."""
    found = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if found is None:
        raise PerceusError("dnsmasq is not installed (Debian: apt-get install dnsmasq-base)", "dnsmasq")
    return found


def check_file(path: Path) -> None:
    """``dnsmasq --test``: PerceusError with dnsmasq's own complaint if it refuses the file."""
    try:
        proc = subprocess.run(
            [dnsmasq_binary(), "--test", "-C", str(path)],
            capture_output=True,
            text=True,
            timeout=TEST_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PerceusError(f"cannot run dnsmasq --test: {exc}", str(path)) from None
    if proc.returncode != 0:
        complaint = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise PerceusError(f"dnsmasq refuses the configuration: {complaint}", str(path))


def write(path: Path, text: str) -> None:
    """Check ``text`` with dnsmasq, then put it in place atomically."""
    with tempfile.TemporaryDirectory(prefix="perceus-dnsmasq.") as scratch:
        candidate = Path(scratch) / path.name
        candidate.write_text(text)
        check_file(candidate)
    install_text(path, text)


def unreachable_by_others(path: Path) -> Path | None:
    """The first directory on the way to ``path`` others may not enter, if any.

    dnsmasq drops root for its own user after start-up and then reads the TFTP root and
    the hosts file as that user.
    """
    current = Path("/")
    for part in path.resolve().parts[1:]:
        current = current / part
        try:
            mode = os.stat(current).st_mode
        except OSError:
            return None
        if os.path.isdir(current) and not mode & 0o001:
            return current
    return None
