"""The node database as the services and perceusd use it: every backend implements this.

The operations are exactly those the callers make (the ``node``/``group`` services, node
registration, and perceusd's check-in writer thread); a backend is one connection used from
one thread. Node values are :class:`~perceus.server.db.model.Node` records; ``desc`` and
``vnfs`` read back as effective values (the node's own, else its group's).

Failures: every operation raises :class:`~perceus.server.errors.PerceusError` (naming the
database's :attr:`Database.location`), never a backend's own exception type;
:class:`DatabaseBusy` when another writer held the lock past the backend's wait, which a
caller may retry.
"""

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from perceus.server.db.model import Group, Node
from perceus.server.errors import PerceusError

__all__ = ["Database", "DatabaseBusy"]


class DatabaseBusy(PerceusError):
    """Another writer held the database past the backend's wait: nothing changed, try again."""


@runtime_checkable
class Database(Protocol):
    """One open connection to the node database."""

    @property
    def location(self) -> str:
        """Where the data lives, for messages: a file path, or a server and database name."""
        ...

    @property
    def schema_version(self) -> int:
        """The schema the database is at; opening it migrated it to the newest this code knows."""
        ...

    def close(self) -> None:
        """Release the connection; the object is unusable afterwards."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """One atomic change: committed when the block ends, rolled back if it raises.

        The write lock is taken when the block starts, before anything is read, and held to
        the commit: what the block reads no other writer changes before it commits. That is
        what makes name allocation atomic across processes: reading :meth:`hostnames` and
        :meth:`insert_node` inside one transaction cannot interleave with another's. Raises
        :class:`DatabaseBusy` if the lock is not had within the backend's wait, PerceusError if
        the commit fails (then nothing of the block is kept). Not reentrant.
        """
        ...

    # -- reading: allowed inside or outside a transaction ------------------------------------

    def nodes(self) -> list[Node]:
        """Every node, in no particular order (callers sort: ``selection.node_order``)."""
        ...

    def node(self, nodeid: str) -> Node | None:
        """The node with this MAC (canonical uppercase), or None."""
        ...

    def hostnames(self) -> list[str]:
        """Every node's hostname (names may repeat: ``node set hostname`` allows it)."""
        ...

    def groups(self) -> list[Group]:
        """The groups that have nodes, sorted by name, with their group-level desc and vnfs."""
        ...

    # -- writing: only inside ``with db.transaction():`` ---------------------------------------

    def insert_node(self, node: Node) -> None:
        """Add a node. The caller checked its MAC is new (PerceusError if it was not)."""
        ...

    def set_field(self, nodeids: Iterable[str], field: str, value: object) -> int:
        """Set one field (``model.SETTABLE_FIELDS``, ``DAEMON_FIELDS``, ``lastcontact``) on the
        nodes and stamp them updated; how many nodes there were. Groups left empty are dropped."""
        ...

    def set_group_value(self, group: str, field: str, value: str) -> None:
        """Record a group-level ``desc`` or ``vnfs`` (``model.GROUP_LEVEL_FIELDS``; ValueError for
        another field), which the group's nodes without their own inherit."""
        ...

    def rename_group(self, old: str, new: str) -> None:
        """Carry OLD's group-level values to NEW where NEW has none (before its nodes move there)."""
        ...

    def delete_nodes(self, nodeids: Iterable[str]) -> int:
        """Delete the nodes; how many existed. Groups left empty are dropped."""
        ...

    def replace_node(self, old: str, new: str) -> None:
        """NEW's MAC takes over OLD's whole record (name, group, values); NEW's own record and
        OLD's MAC are gone."""
        ...

    def record_checkin(self, nodeid: str, status: str, ipaddr: str, when: int) -> None:
        """A node checked in: its status, address and last contact (seconds since the epoch);
        ``updated`` is left alone (it dates administrative changes)."""
        ...
