"""``perceus configure``: write the configuration of the master's network services.

``dnsmasq`` (DHCP, TFTP, DNS), ``tftp`` (the tree nodes PXE-boot from), ``nfs`` (exports
for hybridized VNFS parts) and ``hosts`` (node names and addresses). Each regenerates its
files from perceus.conf and the node database, so running it again picks up new nodes.
"""

from pathlib import Path

import click

from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusGroup
from perceus.server.cli.options import warner
from perceus.server.netservices.dnsmasq import DnsmasqChoices
from perceus.server.services import netservices


@click.group(cls=PerceusGroup)
def configure() -> None:
    """Write the configuration of the network services nodes boot from."""


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
    choices = DnsmasqChoices(
        lease_time=lease_time,
        dns=not no_dns,
        domain=domain,
        ipxe=not no_ipxe,
        log_dhcp=log_dhcp,
        log_file=log_file,
        user=user,
        ipv6_ra=ipv6_ra,
    )
    warn = warner(app)
    written = netservices.configure_dnsmasq(app.instance, choices, dhcp_range, warn)
    plan = written.plan
    chosen = plan.config.dhcp_range
    app.info(f"Wrote {plan.path}: {len(plan.nodes)} nodes, DHCP range {chosen.start}-{chosen.end}")
    app.info(f"Wrote {plan.config.hostsfile}: {written.addresses} node addresses")
    if not written.tftp_ready:
        warn("the TFTP root is empty: run 'perceus configure tftp'", str(app.paths.tftp_dir))
    if written.running is not None:
        app.info("dnsmasq is running: 'perceus service restart' makes it use the new configuration")


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
    written = netservices.configure_tftp(app.instance, kernel, initramfs, master_address, extra)
    tree = written.tree
    app.info(f"Wrote {len(written.files)} files to {tree.root}; nodes boot stage one with {tree.master}")
    if written.refreshed:
        app.info(f"Rewrote {written.refreshed} per-node 'perceus' boot files")


@configure.command("nfs")
@pass_app
def configure_nfs(app: App) -> None:
    """Export the VNFS directory to the nodes by NFS.

    Read-only, to the master device's subnet, for hybridized VNFS parts
    (vnfs transfer method = nfs)."""
    written = netservices.export_vnfs(app.instance, warner(app))
    app.info(f"Wrote {written.path}: {written.export.directory} to {written.export.network}, read-only")
    if netservices.reload_exports(written.path):
        app.info("exportfs -ra: the NFS server exports it now")
    else:
        app.info("exportfs is not installed: install nfs-kernel-server, then run 'exportfs -ra'")


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
    if etc_hosts is not None:
        count = netservices.merge_etc_hosts(app.instance, etc_hosts)  # the one that can fail: first
        app.info(f"Merged {count} node addresses into {etc_hosts}")
    written = netservices.write_hosts(app.instance)
    app.info(f"Wrote {written.path}: {written.addresses} node addresses")
    pid = written.dnsmasq
    if written.signal_error is not None:
        app.warn(f"perceus: warning: cannot signal dnsmasq (pid {pid}) to re-read it: {written.signal_error}")
    elif pid is not None:
        app.info(f"dnsmasq (pid {pid}) re-read its hosts files")
