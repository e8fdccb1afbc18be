"""Adding nodes: defaults from defaults.conf, a name allocated inside the caller's transaction.

Both ``perceus node add``/``import`` and perceusd (a node booting with an unknown
MAC) come through here, so a node is created the same way whoever creates it.
"""

import time
from collections.abc import Iterable
from dataclasses import dataclass

from perceus.server.config import Settings
from perceus.server.db import Database, Node
from perceus.server.errors import PerceusError
from perceus.server.naming import NameTemplate


@dataclass(frozen=True)
class NewNode:
    """A node to add: its MAC and, when the source names it, its hostname."""

    mac: str
    hostname: str | None = None
    where: str = ""


def add_nodes(db: Database, settings: Settings, entries: Iterable[NewNode]) -> list[Node]:
    """Add every entry in one transaction: all of them, or none if any is refused."""
    template = NameTemplate.from_defaults(settings.defaults)
    defaults = settings.defaults
    added: list[Node] = []
    with db.transaction():
        hostnames = set(db.hostnames())
        names = template.allocator(hostnames)
        for entry in entries:
            existing = db.node(entry.mac)
            if existing is not None:
                raise PerceusError(
                    f"NodeID '{entry.mac}' already exists as node '{existing.hostname}'", entry.where
                )
            if entry.hostname is not None and entry.hostname in hostnames:
                raise PerceusError(f"node name '{entry.hostname}' is already taken", entry.where)
            if entry.hostname is not None:
                names.reserve(entry.hostname)
            hostname = entry.hostname or names.take()
            now = int(time.time())
            node = Node(
                nodeid=entry.mac,
                hostname=hostname,
                group=defaults.get("Group Name"),
                vnfs=defaults.get("Vnfs Name"),
                enabled=defaults.get_int("Enabled") or 0,
                debug=defaults.get_int("Debug") or 0,
                desc="",
                status="",
                ipaddr="",
                lastcontact=None,
                created=now,
                updated=now,
            )
            db.insert_node(node)
            hostnames.add(hostname)
            added.append(node)
    return added
