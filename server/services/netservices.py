"""Network services: configuring dnsmasq, the TFTP tree, NFS exports and the hosts file, and
running perceusd and dnsmasq together (``perceus configure`` and ``perceus service``).

Each configuration is regenerated from perceus.conf and the node database, so running it
again picks up new nodes. The daemons start all or nothing: if one cannot start, those
started by the same call are stopped again.
"""

import dataclasses
import ipaddress
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from perceus.server.db import Node
from perceus.server.errors import InvalidRequest, PerceusError, Warn
from perceus.server.instance import Instance
from perceus.server.netservices import daemons, dhcprange, dnsmasq, hosts, master, nfs, pxelinux, tftp
from perceus.server.selection import node_order

# ------------------------------------------------------------------------------ dnsmasq


@dataclass(frozen=True)
class DnsmasqPlan:
    """The dnsmasq configuration as it would be written, and the nodes it names."""

    path: Path
    config: dnsmasq.DnsmasqConfig
    nodes: list[Node]
    text: str


@dataclass(frozen=True)
class DnsmasqWritten:
    plan: DnsmasqPlan
    addresses: int  # node addresses in the hosts file dnsmasq reads
    tftp_ready: bool  # the TFTP root has pxelinux: nodes can boot from it
    running: int | None  # the running dnsmasq's pid: it reads the new file only when restarted


def _sorted_nodes(instance: Instance) -> list[Node]:
    return sorted(instance.db.nodes(), key=node_order)


def _dnsmasq_user(paths: Sequence[Path], warn: Warn) -> str | None:
    """None (dnsmasq drops root for its own user), or root if that user could not reach
    ``paths``: a config that works, with a warning saying why and how to change it."""
    for path in paths:
        blocked = dnsmasq.unreachable_by_others(path)
        if blocked is not None:
            warn(
                f"dnsmasq keeps running as root: as its own user it could not enter "
                f"{blocked} to read {path}; open that up, or choose with --user",
                None,
            )
            return "root"
    return None


def plan_dnsmasq(
    instance: Instance, choices: dnsmasq.DnsmasqChoices, dhcp_range: str | None, warn: Warn
) -> DnsmasqPlan:
    """Check the choices and build the configuration text; nothing is written.

    ``dhcp_range`` is "START,END", or None for the top of the master device's subnet. With no
    user chosen, dnsmasq keeps root if its own user could not read the files it serves.
    """
    dnsmasq.check_choices(choices)
    settings = instance.settings
    if dhcp_range is None:
        found = master.require_interface(settings)
        chosen = dhcprange.default_range(found, settings.perceus.where("master network device"))
    else:
        found = master.interface(settings)
        chosen = dhcprange.parse_range(dhcp_range, found)
    nodes = _sorted_nodes(instance)
    tftp_root, hostsfile = instance.paths.tftp_dir.absolute(), master.hosts_file(settings).absolute()
    user = choices.user if choices.user is not None else _dnsmasq_user((tftp_root, hostsfile), warn)
    log_file = choices.log_file.absolute() if choices.log_file else None
    config = dnsmasq.DnsmasqConfig(
        device=master.device(settings),
        dhcp_range=chosen,
        netmask=str(found.netmask) if found is not None else None,
        tftp_root=tftp_root,
        leasefile=master.leases_file(settings).absolute(),
        pidfile=master.dnsmasq_pidfile().absolute(),
        hostsfile=hostsfile,
        choices=dataclasses.replace(choices, user=user, log_file=log_file),
    )
    return DnsmasqPlan(instance.paths.dnsmasq_conf, config, nodes, dnsmasq.render(config, nodes))


def write_dnsmasq(instance: Instance, plan: DnsmasqPlan) -> DnsmasqWritten:
    """Install the planned file (once ``dnsmasq --test`` accepts it) and the hosts file it reads."""
    dnsmasq.write(plan.path, plan.text)
    addresses = hosts.write(plan.config.hostsfile, plan.nodes)
    return DnsmasqWritten(
        plan=plan,
        addresses=addresses,
        tftp_ready=instance.paths.tftp_dir.joinpath(dnsmasq.PXELINUX).exists(),
        running=dnsmasq_daemon(instance).pid(),
    )


def configure_dnsmasq(
    instance: Instance, choices: dnsmasq.DnsmasqChoices, dhcp_range: str | None, warn: Warn
) -> DnsmasqWritten:
    """dnsmasq.conf for DHCP, TFTP and DNS, and its hosts file: the plan, then written."""
    return write_dnsmasq(instance, plan_dnsmasq(instance, choices, dhcp_range, warn))


# ------------------------------------------------------------------------------ tftp


@dataclass(frozen=True)
class TftpWritten:
    tree: tftp.TftpTree
    files: list[str]  # relative to the TFTP root
    refreshed: int  # per-node 'perceus' boot files rewritten for the new default


def configure_tftp(
    instance: Instance, kernel: Path | None, initramfs: Path | None, master_address: str | None, extra: str
) -> TftpWritten:
    """Fill the TFTP root: boot loaders, stage one (default: $STATEDIR/stage1) and pxelinux's
    default entry booting it with ``masterip=`` (default: the master device's address)."""
    extra = pxelinux.check_append(extra)
    if master_address is not None:
        try:
            ipaddress.IPv4Address(master_address)
        except ValueError:
            raise InvalidRequest(f"--master takes an IPv4 address, not {master_address!r}") from None
    settings = instance.settings
    address = master.node_address(settings, master_address)
    port = int(settings.perceus.get("perceusd port"))
    tree = tftp.TftpTree(
        root=instance.paths.tftp_dir,
        kernel=kernel or instance.paths.stage1_kernel,
        initramfs=initramfs or instance.paths.stage1_initramfs,
        master=pxelinux.master_argument(address, port),
        extra=extra,
    )
    files = tftp.install(tree)
    return TftpWritten(tree, files, pxelinux.refresh_nodes(tree.root))


# ------------------------------------------------------------------------------ nfs


@dataclass(frozen=True)
class NfsExport:
    path: Path  # the exports file written
    export: nfs.Export


def export_vnfs(instance: Instance, warn: Warn) -> NfsExport:
    """Write the exports file: the VNFS directory, read-only, to the master device's subnet."""
    conf = instance.settings.perceus
    method = conf.get("vnfs transfer method")
    if method != "nfs":
        warn(f"vnfs transfer method is {method!r}, not nfs", conf.where("vnfs transfer method"))
    prefix = conf.get("vnfs transfer prefix")
    directory = (Path(prefix) if prefix else instance.paths.statedir) / "vnfs"
    found = master.require_interface(instance.settings)
    export = nfs.Export(directory.absolute(), found.network)
    path = master.exports_file()
    nfs.write(path, export)
    return NfsExport(path, export)


def reload_exports(path: Path) -> bool:
    """``exportfs -ra``; False if nfs-kernel-server's tools are not installed.

    PerceusError (naming the exports file) if exportfs refuses.
    """
    result = nfs.reload_exports()
    if result.installed and result.status != 0:
        raise PerceusError(
            f"exportfs -ra failed: {result.output or f'exit status {result.status}'}", str(path)
        )
    return result.installed


# ------------------------------------------------------------------------------ hosts


@dataclass(frozen=True)
class HostsWritten:
    path: Path
    addresses: int
    dnsmasq: int | None  # the pid of the running dnsmasq told (SIGHUP) to re-read it
    signal_error: str | None  # why that dnsmasq could not be told


def merge_etc_hosts(instance: Instance, path: Path) -> int:
    """Merge the node addresses into a hosts file others edit too; how many there are."""
    return hosts.merge_file(path, _sorted_nodes(instance))


def write_hosts(instance: Instance) -> HostsWritten:
    """perceus's own hosts file (dnsmasq's ``addn-hosts``); a running dnsmasq re-reads it."""
    nodes = _sorted_nodes(instance)
    path = master.hosts_file(instance.settings)
    addresses = hosts.write(path, nodes)
    pid = dnsmasq_daemon(instance).pid()
    if pid is None:
        return HostsWritten(path, addresses, None, None)
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        return HostsWritten(path, addresses, pid, exc.strerror or str(exc))
    return HostsWritten(path, addresses, pid, None)


# ------------------------------------------------------------------------------ the daemons


class Controlled(Protocol):
    """What starting and stopping needs of a daemon (``netservices.daemons.Daemon``)."""

    name: str

    def pid(self) -> int | None: ...

    def start(self) -> int: ...

    def stop(self) -> int | None: ...


class Change(Enum):
    """What happened to one daemon, in the words ``perceus service`` prints."""

    STARTED = "started"
    ALREADY_RUNNING = "already running"
    STOPPED = "stopped"
    NOT_RUNNING = "was not running"


@dataclass(frozen=True)
class DaemonEvent:
    name: str
    change: Change
    pid: int | None  # None only for NOT_RUNNING


def dnsmasq_daemon(instance: Instance) -> daemons.Daemon:
    return daemons.dnsmasq_daemon(instance.paths.dnsmasq_conf.absolute(), master.dnsmasq_pidfile().absolute())


def master_daemons(instance: Instance) -> list[daemons.Daemon]:
    """perceusd, then dnsmasq: the order they start in (they stop in reverse)."""
    return [daemons.perceusd_daemon(), dnsmasq_daemon(instance)]


def start_all(started_in_order: Sequence[Controlled], warn: Warn) -> Iterator[DaemonEvent]:
    """Start each daemon that is not running, in order, reporting each as it happens.

    All or nothing: if one cannot start, the ones this call started are stopped again
    (a failure to stop is a warning) and the first failure is raised.
    """
    started: list[Controlled] = []
    try:
        for each in started_in_order:
            pid = each.pid()
            if pid is not None:
                yield DaemonEvent(each.name, Change.ALREADY_RUNNING, pid)
                continue
            pid = each.start()
            started.append(each)
            yield DaemonEvent(each.name, Change.STARTED, pid)
    except PerceusError as exc:
        for each in reversed(started):
            try:
                each.stop()
            except PerceusError as again:
                warn(str(again), None)
        raise exc from None


def stop_all(started_in_order: Sequence[Controlled]) -> Iterator[DaemonEvent]:
    """Stop each daemon, last started first; every one is tried, then the first failure raised."""
    failures = []
    for each in reversed(started_in_order):
        try:
            pid = each.stop()
        except PerceusError as exc:
            failures.append(exc)
            continue
        yield DaemonEvent(each.name, Change.STOPPED if pid is not None else Change.NOT_RUNNING, pid)
    if failures:
        raise failures[0]


def start(instance: Instance, warn: Warn) -> Iterator[DaemonEvent]:
    """Start perceusd, then dnsmasq, once the master is set up and dnsmasq accepts its file."""
    instance.settings  # noqa: B018 - an uninitialised master is an error before anything starts
    conf = instance.paths.dnsmasq_conf
    if not conf.exists():
        raise PerceusError("no dnsmasq configuration: run 'perceus configure dnsmasq' first", str(conf))
    dnsmasq.check_file(conf)
    yield from start_all(master_daemons(instance), warn)


def stop(instance: Instance) -> Iterator[DaemonEvent]:
    """Stop dnsmasq, then perceusd (it lets running sessions finish first)."""
    yield from stop_all(master_daemons(instance))


def status(instance: Instance) -> list[tuple[str, int | None]]:
    """Each daemon's name and pid, None if it is not running."""
    return [(each.name, each.pid()) for each in master_daemons(instance)]
