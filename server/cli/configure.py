"""``perceus configure``: write the configuration of the master's network services.

``dnsmasq`` (DHCP, TFTP, DNS), ``tftp`` (the tree nodes PXE-boot from), ``nfs`` (exports
for hybridized VNFS parts) and ``hosts`` (node names and addresses). Each regenerates its
files from perceus.conf and the node database, so running it again picks up new nodes.
"""

import ipaddress
import os
import signal
from pathlib import Path

import click

from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusGroup
from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.netservices import dhcprange, dnsmasq, hosts, master, nfs, pxelinux, services, tftp
from perceus.server.selection import node_order


@click.group(cls=PerceusGroup)
def configure() -> None:
    """Write the configuration of the network services nodes boot from."""


def _reload_hint(app: App, what: str) -> None:
    service = services.dnsmasq_service(app.paths.dnsmasq_conf, master.dnsmasq_pidfile())
    if service.pid() is not None:
        app.info(f"dnsmasq is running: 'perceus service restart' makes it use the new {what}")


def _dnsmasq_user(app: App, paths: tuple[Path, ...], where: str) -> str | None:
    """None (dnsmasq drops root for its own user), or root if that user could not reach
    ``paths``: a config that works, with a warning saying why and how to change it."""
    for path in paths:
        blocked = dnsmasq.unreachable_by_others(path)
        if blocked is not None:
            app.warn(
                f"perceus: warning: dnsmasq keeps running as root: as its own user it could not enter "
                f"{blocked} to read {path}; open that up, or choose with --user ({where})"
            )
            return "root"
    return None


@configure.command("dnsmasq")
@click.option(
    "--range",
    "dhcp_range",
    metavar="START,END",
    help="Dynamic DHCP addresses (default: top quarter of the subnet, at most 256).",
)
@click.option(
    "--lease-time",
    default="12h",
    show_default=True,
    help="DHCP lease time (seconds, or with m/h/d/w; infinite).",
)
@click.option("--no-dns", is_flag=True, help="DHCP and TFTP only: no DNS server (port=0).")
@click.option("--domain", help="DNS domain of the nodes: names also resolve as NAME.DOMAIN.")
@click.option(
    "--no-ipxe", is_flag=True, help="Hand pxelinux.0 to every PXE client instead of chainloading iPXE."
)
@click.option(
    "--ipv6-ra",
    is_flag=True,
    help="Send IPv6 router advertisements for the device's IPv6 prefix: iPXE stops waiting ~13 s for one.",
)
@click.option("--log-dhcp", is_flag=True, help="Log every DHCP exchange in detail.")
@click.option(
    "--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Log to this file instead of syslog."
)
@click.option(
    "--user",
    help="User dnsmasq runs as after start-up (default: dnsmasq's own, nobody; root if that could not "
    "read the TFTP root or the hosts file).",
)
@pass_app
def configure_dnsmasq(
    app: App,
    dhcp_range: str | None,
    lease_time: str,
    no_dns: bool,
    domain: str | None,
    no_ipxe: bool,
    ipv6_ra: bool,
    log_dhcp: bool,
    log_file: Path | None,
    user: str | None,
) -> None:
    """Write dnsmasq.conf: DHCP, TFTP and DNS for the nodes.

    Writes $SYSCONFDIR/dnsmasq.conf (checked with dnsmasq --test) and the hosts file it
    reads; run it again after adding nodes."""
    where = "configure dnsmasq"
    dnsmasq.check_options(lease_time, domain, user, where)
    settings = app.settings
    if dhcp_range is None:
        found = master.require_interface(settings)
        chosen = dhcprange.default_range(found, settings.perceus.where("master network device"))
    else:
        found = master.interface(settings)
        chosen = dhcprange.parse_range(dhcp_range, found, where)
    nodes = sorted(app.db.nodes(), key=node_order)
    tftp_root, hostsfile = app.paths.tftp_dir.absolute(), master.hosts_file(settings).absolute()
    if user is None:
        user = _dnsmasq_user(app, (tftp_root, hostsfile), where)
    config = dnsmasq.DnsmasqConfig(
        device=master.device(settings),
        dhcp_range=chosen,
        netmask=str(found.netmask) if found is not None else None,
        tftp_root=tftp_root,
        leasefile=master.leases_file(settings).absolute(),
        pidfile=master.dnsmasq_pidfile().absolute(),
        hostsfile=hostsfile,
        lease_time=lease_time,
        dns=not no_dns,
        domain=domain,
        ipxe=not no_ipxe,
        log_dhcp=log_dhcp,
        log_file=log_file.absolute() if log_file else None,
        user=user,
        ipv6_ra=ipv6_ra,
    )
    text = dnsmasq.render(config, nodes)
    dnsmasq.write(app.paths.dnsmasq_conf, text)
    count = hosts.write(config.hostsfile, nodes)
    app.info(f"Wrote {app.paths.dnsmasq_conf}: {len(nodes)} nodes, DHCP range {chosen.start}-{chosen.end}")
    app.info(f"Wrote {config.hostsfile}: {count} node addresses")
    if not app.paths.tftp_dir.joinpath("pxelinux.0").exists():
        app.warn(
            f"perceus: warning: the TFTP root is empty: run 'perceus configure tftp' ({app.paths.tftp_dir})"
        )
    _reload_hint(app, "configuration")


@configure.command("tftp")
@click.option(
    "--kernel",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Stage-one kernel (default: $STATEDIR/stage1/vmlinuz).",
)
@click.option(
    "--initramfs",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Stage-one initramfs (default: $STATEDIR/stage1/initramfs.img).",
)
@click.option(
    "--master",
    "master_address",
    metavar="ADDRESS",
    help="Address nodes reach perceusd at (default: the master device's).",
)
@click.option(
    "--append", "extra", default="", metavar="ARGS", help="More kernel arguments, e.g. 'perceus.debug=3'."
)
@pass_app
def configure_tftp(
    app: App, kernel: Path | None, initramfs: Path | None, master_address: str | None, extra: str
) -> None:
    """Fill the TFTP root nodes PXE-boot from.

    pxelinux and its modules, iPXE, the stage-one kernel and initramfs, and
    pxelinux.cfg/default booting them with masterip= set."""
    where = "configure tftp"
    extra = pxelinux.check_append(extra, where)
    if master_address is not None:
        try:
            ipaddress.IPv4Address(master_address)
        except ValueError:
            raise InvalidRequest(f"--master takes an IPv4 address, not {master_address!r}", where) from None
    settings = app.settings
    address = master.node_address(settings, master_address)
    port = int(settings.perceus.get("perceusd port"))
    tree = tftp.TftpTree(
        root=app.paths.tftp_dir,
        kernel=kernel or app.paths.stage1_kernel,
        initramfs=initramfs or app.paths.stage1_initramfs,
        master=pxelinux.master_argument(address, port),
        extra=extra,
    )
    written = tftp.install(tree)
    refreshed = pxelinux.refresh_nodes(tree.root)
    app.info(f"Wrote {len(written)} files to {tree.root}; nodes boot stage one with {tree.master}")
    if refreshed:
        app.info(f"Rewrote {refreshed} per-node 'perceus' boot files")


@configure.command("nfs")
@pass_app
def configure_nfs(app: App) -> None:
    """Export the VNFS directory to the nodes by NFS.

    Read-only, to the master device's subnet, for hybridized VNFS parts
    (vnfs transfer method = nfs)."""
    settings = app.settings
    conf = settings.perceus
    method = conf.get("vnfs transfer method")
    if method != "nfs":
        where = conf.where("vnfs transfer method")
        app.warn(f"perceus: warning: vnfs transfer method is {method!r}, not nfs ({where})")
    prefix = conf.get("vnfs transfer prefix")
    directory = (Path(prefix) if prefix else app.paths.statedir) / "vnfs"
    found = master.require_interface(settings)
    export = nfs.Export(directory.absolute(), found.network)
    path = master.exports_file()
    nfs.write(path, export)
    app.info(f"Wrote {path}: {export.directory} to {export.network}, read-only")
    result = nfs.reload_exports()
    if not result.installed:
        app.info("exportfs is not installed: install nfs-kernel-server, then run 'exportfs -ra'")
    elif result.status != 0:
        raise PerceusError(
            f"exportfs -ra failed: {result.output or f'exit status {result.status}'}", str(path)
        )
    else:
        app.info("exportfs -ra: the NFS server exports it now")


@configure.command("hosts")
@click.option(
    "--etc-hosts",
    "etc_hosts",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also merge the entries into this hosts file, between perceus marker lines.",
)
@pass_app
def configure_hosts(app: App, etc_hosts: Path | None) -> None:
    """Write node names and addresses for DNS.

    $SYSCONFDIR/hosts, which dnsmasq reads: names resolve, and a node listed there gets
    that address by DHCP. Nodes without an address are left out."""
    nodes = sorted(app.db.nodes(), key=node_order)
    path = master.hosts_file(app.settings)
    if etc_hosts is not None:
        count = hosts.merge_file(etc_hosts, nodes)  # the one that can fail: first
        app.info(f"Merged {count} node addresses into {etc_hosts}")
    count = hosts.write(path, nodes)
    app.info(f"Wrote {path}: {count} node addresses")
    service = services.dnsmasq_service(app.paths.dnsmasq_conf, master.dnsmasq_pidfile())
    pid = service.pid()
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            app.warn(f"perceus: warning: cannot signal dnsmasq (pid {pid}) to re-read it: {exc.strerror}")
            return
        app.info(f"dnsmasq (pid {pid}) re-read its hosts files")
