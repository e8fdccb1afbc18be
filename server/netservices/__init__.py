"""The master's network services for booting nodes: dnsmasq (DHCP, TFTP, DNS), the TFTP
tree pxelinux boots from, NFS exports for hybridized VNFS parts, the hosts file, and
starting and stopping perceusd and dnsmasq as plain processes.

One small module per job; the service layer (``services/netservices.py``) composes them
into what ``perceus configure`` and ``perceus service`` do.
"""
