"""Groups: the node operations on whole groups (``perceus group``), and group-level values."""

from collections.abc import Sequence
from dataclasses import dataclass

from perceus.server.db import Group, Node
from perceus.server.db.model import GROUP_FIELDS, GROUP_LEVEL_FIELDS
from perceus.server.errors import InvalidRequest, Warn
from perceus.server.fields import check_value
from perceus.server.instance import Instance
from perceus.server.selection import node_order, select_groups
from perceus.server.services.nodes import warn_unknown_vnfs


@dataclass(frozen=True)
class GroupSelection:
    """The groups some arguments name, sorted by name, and their nodes in listing order."""

    groups: list[Group]
    members: list[Node]

    def members_of(self, group: str) -> list[Node]:
        return [n for n in self.members if n.group == group]


def select(instance: Instance, patterns: Sequence[str], warn: Warn) -> GroupSelection:
    """The groups the patterns name (every group when there are none) and their nodes."""
    groups = select_groups(instance.db.groups(), patterns, warn)
    names = {g.name for g in groups}
    return GroupSelection(
        groups, sorted((n for n in instance.db.nodes() if n.group in names), key=node_order)
    )


def set_field(instance: Instance, field: str, value: str, patterns: Sequence[str], warn: Warn) -> int:
    """Set ``field`` on every node of the groups, in one transaction; how many nodes.

    ``desc`` and ``vnfs`` are kept as the group's own too, so nodes that join later inherit
    them; ``group`` moves whole groups, their own values with them.
    """
    if field not in GROUP_FIELDS:
        raise InvalidRequest(f"no group field {field!r}: one of {', '.join(GROUP_FIELDS)}")
    stored = check_value(field, value)
    if field == "vnfs":
        warn_unknown_vnfs(instance, value, warn)
    db = instance.db
    with db.transaction():
        chosen = select(instance, patterns, warn)
        for group in chosen.groups:
            if field in GROUP_LEVEL_FIELDS:
                db.set_group_value(group.name, field, value)
            elif field == "group":
                db.rename_group(group.name, value)
        return db.set_field((n.nodeid for n in chosen.members), field, stored)
