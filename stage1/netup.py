"""Initramfs networking: load the NIC drivers the hardware needs, bring links up, DHCP.

Drivers: each device's ``modalias`` (under /sys/bus) is matched against the kernel's
``modules.alias``; matching modules and their ``modules.dep`` dependencies are loaded in
dependency order with finit_module(2) (no kmod in the initramfs). Links and DHCP use
pyroute2, imported only here, only in initramfs mode; IP-over-InfiniBand links, where
pyroute2's Ethernet-only client cannot work, get stage one's own (``dhcp_any``).
"""

import asyncio
import fnmatch
import logging
import os
import time
from pathlib import Path

from perceus.stage1 import dhcp_any
from perceus.stage1.lease import Lease

__all__ = [
    "Lease",
    "bring_up",
    "device_modaliases",
    "load_drivers",
    "modules_to_load",
    "parse_aliases",
    "parse_deps",
]

log = logging.getLogger("perceus.stage1")

CARRIER_WAIT = 5.0  # seconds to wait for a cable to show carrier
DHCP_TIMEOUT = 20.0
DRIVER_PASSES = 4


def _modname(path_or_name: str) -> str:
    name = os.path.basename(path_or_name)
    for ext in (".ko.zst", ".ko.xz", ".ko.gz", ".ko"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return name.replace("-", "_")


def parse_aliases(text: str) -> list[tuple[str, str]]:
    """``modules.alias`` lines ``alias PATTERN MODULE`` -> [(pattern, module)]."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias":
            out.append((parts[1], parts[2].replace("-", "_")))
    return out


def parse_deps(text: str) -> dict[str, tuple[str, list[str]]]:
    """``modules.dep`` lines ``path: dep dep`` -> {module: (path, [dependency modules])}."""
    out = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if sep:
            out[_modname(path)] = (path.strip(), [_modname(d) for d in deps.split()])
    return out


def device_modaliases(sys_root: Path = Path("/sys")) -> list[str]:
    """Every device's modalias under /sys/bus/*/devices."""
    found = []
    for path in sorted((sys_root / "bus").glob("*/devices/*/modalias")):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            found.append(text)
    return found


def modules_to_load(
    modaliases: list[str],
    aliases: list[tuple[str, str]],
    deps: dict[str, tuple[str, list[str]]],
    noload: tuple[str, ...] = (),
) -> list[str]:
    """The modules the devices need, each after its dependencies, without those in ``noload``."""
    by_bus: dict[str, list[tuple[str, str]]] = {}
    for pattern, module in aliases:  # only patterns of the device's own bus can match it
        by_bus.setdefault(pattern.partition(":")[0], []).append((pattern, module))
    wanted: list[str] = []
    for alias in modaliases:
        for pattern, module in by_bus.get(alias.partition(":")[0], ()):
            if module not in wanted and fnmatch.fnmatchcase(alias, pattern):
                wanted.append(module)
    order: list[str] = []
    skip = set(noload)

    def visit(module: str, stack: tuple[str, ...]) -> None:
        if module in order or module in skip or module in stack:
            return
        for dep in deps.get(module, ("", []))[1]:
            visit(dep, (*stack, module))
        order.append(module)

    for module in wanted:
        visit(module, ())
    return order


def load_drivers(noload: tuple[str, ...] = (), moddir: Path | None = None) -> list[str]:
    """Load what the hardware present needs; returns the modules loaded. Failures are logged."""
    moddir = moddir or Path("/lib/modules") / os.uname().release
    try:
        aliases = parse_aliases((moddir / "modules.alias").read_text())
        deps = parse_deps((moddir / "modules.dep").read_text())
    except OSError as exc:
        log.warning("no module index in %s (%s): loading no drivers", moddir, exc.strerror)
        return []
    loaded: list[str] = []
    tried: set[str] = set()
    # Loading a bus driver makes new devices appear (virtio_pci -> the virtio NIC), so look
    # again until a pass finds nothing new.
    for _ in range(DRIVER_PASSES):
        todo = [m for m in modules_to_load(device_modaliases(), aliases, deps, noload) if m not in tried]
        if not todo:
            break
        tried.update(todo)
        loaded.extend(_load_modules(todo, moddir, deps))
        time.sleep(0.2)  # probing is asynchronous: give new devices time to show up
    return loaded


def _load_modules(modules: list[str], moddir: Path, deps: dict[str, tuple[str, list[str]]]) -> list[str]:
    from perceus.native import sysio

    loaded = []
    for module in modules:
        path = moddir / deps[module][0] if module in deps else None
        if path is None:
            continue
        flags = sysio.MODULE_INIT_COMPRESSED_FILE if path.suffix in (".xz", ".zst", ".gz") else 0
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                sysio.finit_module(fd, "", flags)
            finally:
                os.close(fd)
            loaded.append(module)
        except FileExistsError:
            pass  # built in or already loaded
        except OSError as exc:
            log.warning("cannot load %s: %s", module, exc)
    return loaded


def _carrier(iface: str) -> bool:
    try:
        return Path(f"/sys/class/net/{iface}/carrier").read_text().strip() == "1"
    except OSError:
        return False


async def _dhcp(iface: str, timeout: float) -> Lease | None:
    from pyroute2.dhcp import fsm, hooks
    from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig
    from pyroute2.dhcp.leases import JSONStdoutLease

    class MemoryLease(JSONStdoutLease):
        def dump(self) -> None:
            pass

    config = ClientConfig(
        interface=iface,
        lease_type=MemoryLease,
        hooks=(hooks.configure_ip, hooks.add_default_gw),
        release=False,
        handle_signals=False,
        vendor_id="perceus",
    )
    async with AsyncDHCPClient(config) as client:
        await client.bootstrap()
        try:
            await client.wait_for_state(fsm.State.BOUND, timeout=timeout)
        except TimeoutError:
            log.warning("%s: no DHCP answer in %g s", iface, timeout)
            return None
        lease = client.lease
        assert lease is not None
        try:
            server = lease.server_id
        except LookupError:
            server = ""
        return Lease(iface, lease.ip, server)


def _link_type(iface: str) -> int:
    try:
        return int(Path(f"/sys/class/net/{iface}/type").read_text())
    except (OSError, ValueError):
        return -1


async def _lease(iface: str, timeout: float) -> Lease | None:
    """pyroute2's client writes Ethernet frames: an InfiniBand link gets ``dhcp_any`` instead."""
    if _link_type(iface) == dhcp_any.ARPHRD_INFINIBAND:
        return await dhcp_any.dhcp(iface, timeout)
    return await _dhcp(iface, timeout)


async def bring_up(ifaces: tuple[str, ...] = (), timeout: float = DHCP_TIMEOUT) -> list[Lease]:
    """Set links up (only ``ifaces`` if given), wait briefly for carrier, DHCP on each with link."""
    from pyroute2.iproute.linux import AsyncIPRoute

    names = []
    async with AsyncIPRoute() as ipr:
        for link in await _links(ipr):
            name = link.get("ifname")
            if not name or name == "lo" or (ifaces and name not in ifaces):
                continue
            await ipr.link("set", index=link["index"], state="up")
            names.append(name)
        lo = await ipr.link_lookup(ifname="lo")
        if lo:
            await ipr.link("set", index=lo[0], state="up")
    deadline = time.monotonic() + CARRIER_WAIT
    while time.monotonic() < deadline and not all(_carrier(n) for n in names):
        await asyncio.sleep(0.2)
    with_link = [n for n in names if _carrier(n)]
    if not with_link:
        log.warning("no interface has a link (tried %s)", ", ".join(names) or "none")
    results = await asyncio.gather(*(_lease(n, timeout) for n in with_link), return_exceptions=True)
    leases = []
    for name, result in zip(with_link, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("%s: DHCP failed: %s", name, result)
        elif result is not None:
            log.info("%s: %s from DHCP server %s", name, result.address, result.server or "?")
            leases.append(result)
    return leases


async def _links(ipr) -> list:
    result = await ipr.link("dump")
    return [msg async for msg in result] if hasattr(result, "__aiter__") else list(result)
