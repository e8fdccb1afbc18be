"""What every network service needs to know about the master: its node-facing device,
that device's address and subnet, and where files the services share live."""

import ipaddress
import os
from pathlib import Path

from perceus.server import control, netinfo
from perceus.server.config import Settings
from perceus.server.errors import PerceusError


def device(settings: Settings) -> str:
    return settings.perceus.get("master network device")


def interface(settings: Settings) -> ipaddress.IPv4Interface | None:
    """The master device's address with its netmask, or None if it has no IPv4 address."""
    name = device(settings)
    address, netmask = netinfo.ipv4_address(name), netinfo.ipv4_netmask(name)
    if address is None or netmask is None:
        return None
    return ipaddress.IPv4Interface(f"{address}/{netmask}")


def require_interface(settings: Settings) -> ipaddress.IPv4Interface:
    """Like :func:`interface`, but a device without an address is an error naming the key."""
    found = interface(settings)
    if found is None:
        raise PerceusError(
            f"master network device {device(settings)!r} has no IPv4 address",
            settings.perceus.where("master network device"),
        )
    return found


def node_address(settings: Settings, override: str | None = None) -> str:
    """The address nodes reach perceusd at: ``override``, the master device's address,
    else the first ``vnfs transfer master``.

    The device's address comes before ``vnfs transfer master`` because perceusd listens
    there; the transfer master may be a separate NFS server.
    """
    if override:
        return override
    found = interface(settings)
    if found is not None:
        return str(found.ip)
    masters = settings.perceus.get_list("vnfs transfer master")
    if masters:
        return masters[0]
    raise PerceusError(
        f"master network device {device(settings)!r} has no IPv4 address and "
        "'vnfs transfer master' is not set: give --master ADDRESS",
        settings.perceus.where("master network device"),
    )


def rundir() -> Path:
    """$PERCEUS_RUNDIR (default /run/perceus): perceusd's and dnsmasq's pidfiles."""
    return control.rundir()


def hosts_file(settings: Settings) -> Path:
    """The node names and addresses dnsmasq reads (``addn-hosts``)."""
    return settings.paths.sysconfdir / "hosts"


def leases_file(settings: Settings) -> Path:
    return settings.paths.statedir / "dnsmasq.leases"


def dnsmasq_pidfile() -> Path:
    return rundir() / "dnsmasq.pid"


def exports_file() -> Path:
    """/etc/exports.d/perceus.exports, or $PERCEUS_EXPORTS_FILE (tests)."""
    return Path(os.environ.get("PERCEUS_EXPORTS_FILE") or "/etc/exports.d/perceus.exports")
