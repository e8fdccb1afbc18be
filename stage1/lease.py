"""What DHCP gives stage one, whichever client got it: pyroute2's (netup) or its own (dhcp_any)."""

from dataclasses import dataclass

__all__ = ["Lease"]


@dataclass(frozen=True)
class Lease:
    """An interface that got an address: where to talk from, and the DHCP server (a master)."""

    iface: str
    address: str
    server: str
