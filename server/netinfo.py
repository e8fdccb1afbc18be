"""The master's own network facts: its interfaces and their IPv4 addresses."""

import fcntl
import os
import socket
import struct

SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B


def interfaces() -> list[str]:
    """Network devices, loopback last (a sensible default is the first one)."""
    try:
        names = sorted(os.listdir("/sys/class/net"))
    except OSError:
        names = [name for _, name in socket.if_nameindex()]
    return sorted(names, key=lambda name: name == "lo")


def _ioctl_ipv4(device: str, request: int) -> str | None:
    if not device or len(device.encode()) > 15:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), request, struct.pack("256s", device.encode()))
        except OSError:
            return None
    return socket.inet_ntoa(answer[20:24])


def ipv4_address(device: str) -> str | None:
    """The device's IPv4 address, or None if it has none (or does not exist)."""
    return _ioctl_ipv4(device, SIOCGIFADDR)


def ipv4_netmask(device: str) -> str | None:
    return _ioctl_ipv4(device, SIOCGIFNETMASK)
