"""What the node database holds, independent of the backend that stores it."""

from dataclasses import asdict, dataclass

# Fields an administrator may set with ``node set`` (the original's legal names).
SETTABLE_FIELDS = ("debug", "desc", "enabled", "group", "hostname", "vnfs")
# Fields perceusd writes as nodes check in; setting them by hand is allowed with a warning.
DAEMON_FIELDS = ("ipaddr", "status")
# Fields ``group set`` applies to every node of the group (and, for desc/vnfs, to the group).
GROUP_FIELDS = ("debug", "desc", "enabled", "group", "vnfs")
GROUP_LEVEL_FIELDS = ("desc", "vnfs")


@dataclass(frozen=True)
class Node:
    """One node. desc and vnfs are effective values: the node's own, else its group's."""

    nodeid: str
    hostname: str
    group: str
    vnfs: str
    enabled: int
    debug: int
    desc: str
    status: str
    ipaddr: str
    lastcontact: int | None
    created: int
    updated: int

    def as_dict(self) -> dict:
        return asdict(self)

    def show_items(self) -> list[tuple[str, object]]:
        """``nodeid`` first, then the other fields alphabetically, as ``node show`` prints them."""
        data = self.as_dict()
        data.pop("nodeid")
        return [("nodeid", self.nodeid)] + sorted(data.items())


@dataclass(frozen=True)
class Group:
    """A group exists while nodes are in it; desc and vnfs are its group-level values."""

    name: str
    desc: str
    vnfs: str
    nodes: int

    def as_dict(self) -> dict:
        return asdict(self)
