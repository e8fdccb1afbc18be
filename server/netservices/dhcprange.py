"""The DHCP range dnsmasq hands out, chosen as the original Perceus did.

By default: the top quarter of the master device's subnet, or its top 256 addresses if
that is less, without the broadcast address (a /24 gets .192-.254, a /16 x.y.255.0-.254).
The lower addresses stay free for static ones (the master itself, switches, nodes pinned
in the hosts file), which the guide asks to keep apart from the dynamic range. The
master's own address is never inside it.
"""

import ipaddress
from dataclasses import dataclass

from perceus.server.errors import InvalidRequest, PerceusError

MAX_ADDRESSES = 256


@dataclass(frozen=True)
class DhcpRange:
    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address

    @property
    def size(self) -> int:
        return int(self.end) - int(self.start) + 1

    def __contains__(self, address: ipaddress.IPv4Address) -> bool:
        return self.start <= address <= self.end


def default_range(master: ipaddress.IPv4Interface, source: str = "") -> DhcpRange:
    """The top quarter of ``master``'s subnet (at most its top 256 addresses) below the broadcast.

    A /30 has one address in its top quarter; if that is the master's, the subnet's other
    host address is used. A /31 or /32 has no room for a range: the user must give one.
    Those errors point at ``source``, where the master device is configured (perceus.conf:N).
    """
    network = master.network
    if network.prefixlen > 30:
        raise PerceusError(
            f"the master's subnet {network} is too small for a DHCP range: give --range START,END", source
        )
    broadcast = int(network.broadcast_address)
    end = broadcast - 1
    top = min(network.num_addresses // 4, MAX_ADDRESSES)  # the top quarter, or the top 256
    start = broadcast + 1 - top
    start = min(start, end)
    own = int(master.ip)
    if start <= own <= end:
        below, above = (start, own - 1), (own + 1, end)
        start, end = max(below, above, key=lambda r: r[1] - r[0])
        if start > end:  # the range was the master's address alone (a /30)
            start = end = own - 1
        if start <= int(network.network_address):
            raise PerceusError(
                f"no address of the master's subnet {network} is free for DHCP: give --range START,END",
                source,
            )
    return DhcpRange(ipaddress.IPv4Address(start), ipaddress.IPv4Address(end))


def parse_range(text: str, master: ipaddress.IPv4Interface | None) -> DhcpRange:
    """``START,END`` as the user gave it; both must lie in the master's subnet, if it has one."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2:
        raise InvalidRequest(f"--range takes START,END, not {text!r}")
    try:
        start, end = (ipaddress.IPv4Address(part) for part in parts)
    except ValueError as exc:
        raise InvalidRequest(f"--range: {exc}") from None
    if start > end:
        raise InvalidRequest(f"--range {text}: START is above END")
    chosen = DhcpRange(start, end)
    if master is not None:
        network = master.network
        for address in (start, end):
            if address not in network or address in (network.network_address, network.broadcast_address):
                raise InvalidRequest(f"--range {text}: {address} is not a host address of {network}")
        if master.ip in chosen:
            raise InvalidRequest(f"--range {text}: holds the master's own address {master.ip}")
    return chosen
