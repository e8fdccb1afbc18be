"""Hardware facts for HELLO: interfaces and MACs, CPUs, memory, SMBIOS identity.

Read from /sys and /proc on a real node (the roots are parameters, so tests use a fake
tree), or generated for a simulated node. Anything unreadable is simply unknown: a node
with odd firmware must still boot.
"""

import os
import random
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from perceus.stage1.protocol import MAX_HWADDR, MAX_INTERFACES, MAX_SERIAL, Interface

__all__ = ["Facts", "gather_facts", "random_mac", "simulated_facts"]

_IFNAME_RE = re.compile(r"(?!\.\.?\Z)[!-.0-9;-~]{1,15}")
_HWADDR_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){0,31}")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ARPHRD_ETHER = 1


@dataclass(frozen=True)
class Facts:
    """Who the node is (``nodeid``, the MAC it talks with) and what it is made of."""

    nodeid: str
    interfaces: tuple[Interface, ...] = ()
    cpus: int = 0
    memory: int = 0
    smbios_uuid: str = ""
    serial: str = ""
    asset_tag: str = ""

    def hello_fields(self) -> dict:
        """Keyword arguments for ``NodeConnection.make_hello`` besides nodeid and state."""
        return {
            "interfaces": self.interfaces,
            "cpus": self.cpus,
            "memory": self.memory,
            "smbios_uuid": self.smbios_uuid,
            "serial": self.serial,
            "asset_tag": self.asset_tag,
        }


def _read(path: Path, limit: int = 4096) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace").strip()
    except OSError:
        return None


def _text_field(value: str | None, limit: int = MAX_SERIAL) -> str:
    """A SMBIOS string made safe for HELLO: no control characters, at most ``limit`` UTF-8 bytes."""
    if not value:
        return ""
    value = _CONTROL_RE.sub(" ", value).strip()
    raw = value.encode()[:limit]
    return raw.decode("utf-8", "ignore").strip()


@dataclass(frozen=True)
class _NetDev:
    name: str
    hwaddr: str
    type: int


def _net_devices(sys_root: Path) -> list[_NetDev]:
    """Interfaces with a hardware address, sorted by name, loopback left out."""
    devices = []
    net = sys_root / "class" / "net"
    try:
        names = sorted(os.listdir(net))
    except OSError:
        return []
    for name in names:
        if name == "lo" or not _IFNAME_RE.fullmatch(name):
            continue
        address = (_read(net / name / "address") or "").lower()
        if not _HWADDR_RE.fullmatch(address) or len(address) > 3 * MAX_HWADDR:
            continue
        if not address.strip("0:"):
            continue  # all zero: a tunnel or a dummy, nothing to identify the node by
        kind = _read(net / name / "type") or ""
        devices.append(_NetDev(name, address, int(kind) if kind.isdigit() else 0))
    return devices


def _cpu_count(sys_root: Path) -> int:
    """CPUs online, from /sys/devices/system/cpu/online (``0-3,6``)."""
    text = _read(sys_root / "devices" / "system" / "cpu" / "online")
    if not text:
        return 0
    total = 0
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            total += int(hi or lo) - int(lo) + 1
    except ValueError:
        return 0
    return total


def _memory(proc_root: Path) -> int:
    """MemTotal from /proc/meminfo, in bytes."""
    text = _read(proc_root / "meminfo", 1 << 16) or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * (1024 if parts[2:3] == ["kB"] else 1)
    return 0


def _smbios_uuid(dmi: Path) -> str:
    text = _read(dmi / "product_uuid")
    if not text:
        return ""
    try:
        value = uuid.UUID(text)
    except ValueError:
        return ""
    return "" if value.int == 0 else str(value)


def gather_facts(
    nodeid_iface: str | None = None,
    *,
    sys_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
) -> Facts:
    """The facts of this machine; the NodeID is ``nodeid_iface``'s MAC, else the first Ethernet one.

    Raises LookupError when there is no interface with a MAC to use as the NodeID.
    """
    devices = _net_devices(sys_root)
    chosen = None
    if nodeid_iface is not None:
        chosen = next((d for d in devices if d.name == nodeid_iface), None)
        if chosen is None:
            raise LookupError(f"interface {nodeid_iface} has no usable hardware address")
    else:
        chosen = next((d for d in devices if d.type == _ARPHRD_ETHER and len(d.hwaddr) == 17), None)
    if chosen is None or len(chosen.hwaddr) != 17:
        raise LookupError("no Ethernet interface with a MAC address to identify this node")
    dmi = sys_root / "class" / "dmi" / "id"
    return Facts(
        nodeid=chosen.hwaddr.upper(),
        interfaces=tuple(Interface(d.name, d.hwaddr) for d in devices[:MAX_INTERFACES]),
        cpus=_cpu_count(sys_root),
        memory=_memory(proc_root),
        smbios_uuid=_smbios_uuid(dmi),
        serial=_text_field(_read(dmi / "product_serial")),
        asset_tag=_text_field(_read(dmi / "chassis_asset_tag")),
    )


def random_mac(rng: random.Random | None = None) -> str:
    """A random unicast, locally administered MAC (first octet x2, x6, xA or xE), uppercase."""
    octets = bytearray(rng.randbytes(6) if rng else os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02X}" for b in octets)


def simulated_facts(mac: str | None = None, rng: random.Random | None = None) -> Facts:
    """Plausible facts for a simulated node: one interface eth0 with ``mac`` (random if None)."""
    mac = (mac or random_mac(rng)).upper()
    digits = mac.replace(":", "")
    node_uuid = uuid.UUID(bytes=bytes.fromhex(digits * 2 + digits[:8]), version=4)
    return Facts(
        nodeid=mac,
        interfaces=(Interface("eth0", mac.lower()),),
        cpus=4,
        memory=8 << 30,
        smbios_uuid=str(node_uuid),
        serial=f"SIM{digits}",
        asset_tag="",
    )
