"""The master's network services for booting nodes: dnsmasq (DHCP, TFTP, DNS), the TFTP
tree pxelinux boots from, NFS exports for hybridized VNFS parts, the hosts file, and
starting and stopping perceusd and dnsmasq as plain processes.

One small module per job; the ``perceus configure`` and ``perceus service`` commands
only parse options and report.
"""
