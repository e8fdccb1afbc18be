"""Nodes: add, import, select, set, replace and delete them, and watch them boot.

What ``perceus node`` does, callable in-process. Deleting and replacing come in two steps,
a plan (which nodes) and its apply step, so a caller can ask before anything changes.
"""

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from perceus.server import control, importers
from perceus.server.db import Node
from perceus.server.db.model import DAEMON_FIELDS, SETTABLE_FIELDS
from perceus.server.errors import InvalidRequest, PerceusError, Warn
from perceus.server.fields import check_value
from perceus.server.instance import Instance
from perceus.server.macaddr import require_mac
from perceus.server.netservices import pxelinux
from perceus.server.registry import NewNode, add_nodes
from perceus.server.selection import NodeQuery, select_nodes

# ``node set`` fields that are files rather than database columns.
FILE_FIELDS = ("boot",)
FIELDS = SETTABLE_FIELDS + DAEMON_FIELDS + FILE_FIELDS
DEFAULT_TIMEOUT = 600  # seconds, when perceus.conf sets no ``node timeout``


def select(instance: Instance, query: NodeQuery, warn: Warn) -> list[Node]:
    """The nodes the query names, in listing order (all of them for an empty query)."""
    chosen = select_nodes(instance.db.nodes(), query, warn)
    instance.note(f"{' '.join(query.patterns) or 'all nodes'}: {len(chosen)} nodes")
    return chosen


def warn_unknown_vnfs(instance: Instance, vnfs: str, warn: Warn) -> None:
    """A VNFS may be named before it is imported; say so, as nodes cannot boot it yet."""
    if vnfs and not (instance.paths.vnfs_dir / vnfs).is_dir():
        warn(f"VNFS '{vnfs}' is not imported yet", str(instance.paths.vnfs_dir))


def add(instance: Instance, mac: str, name: str | None, warn: Warn) -> Node:
    """Add one node by MAC, named ``name`` or from defaults.conf."""
    nodeid = require_mac(mac)
    if name is not None:
        check_value("hostname", name)
    (added,) = add_nodes(instance.db, instance.settings, [NewNode(nodeid, name)])
    warn_unknown_vnfs(instance, added.vnfs, warn)
    return added


def import_nodes(instance: Instance, text: str, source: str, form: str, warn: Warn) -> list[Node]:
    """Add the nodes a list names, in its order and in one transaction: all of them or none.

    ``form`` names the reader (``importers.READERS``); ``source`` is the list's name in
    errors (``file:line``). MACs already known are skipped, with a warning each.
    """
    entries = importers.READERS[form](text, source)
    known = {n.nodeid: n.hostname for n in instance.db.nodes()}
    fresh = []
    for entry in entries:
        if entry.mac in known:
            warn(f"NodeID '{entry.mac}' already exists as node '{known[entry.mac]}', skipped", entry.where)
        else:
            fresh.append(entry)
    return add_nodes(instance.db, instance.settings, fresh)


def delete(instance: Instance, nodes: Sequence[Node]) -> int:
    """Delete the nodes in one transaction; their own boot files then follow the committed database."""
    with instance.db.transaction():
        count = instance.db.delete_nodes(n.nodeid for n in nodes)
    pxelinux.sync_boot_files(
        instance.paths.tftp_dir, instance.db.nodes(), instance.warn, [n.nodeid for n in nodes]
    )
    return count


@dataclass(frozen=True)
class Replacement:
    """``node replace``: NEW (new hardware) takes OLD's identity."""

    old: Node
    new: Node


def _one(instance: Instance, pattern: str, by_nodeid: bool, warn: Warn) -> Node:
    chosen = select(instance, NodeQuery((pattern,), by_nodeid), warn)
    if len(chosen) != 1:
        raise InvalidRequest(f"{pattern!r} names {len(chosen)} nodes, not one (use -i with the MAC address)")
    return chosen[0]


def plan_replace(instance: Instance, old: str, new: str, by_nodeid: bool, warn: Warn) -> Replacement:
    """The two nodes ``old`` and ``new`` name, each exactly one and not the same."""
    plan = Replacement(_one(instance, old, by_nodeid, warn), _one(instance, new, by_nodeid, warn))
    if plan.old.nodeid == plan.new.nodeid:
        raise InvalidRequest(f"{old!r} and {new!r} are the same node")
    return plan


def replace(instance: Instance, plan: Replacement) -> None:
    """NEW's MAC takes OLD's record, unless either changed since the plan; OLD's boot file follows."""
    db = instance.db
    boot = pxelinux.boot_follows(instance.paths.tftp_dir, db, plan.old, plan.new, instance.warn)
    with boot, db.transaction():
        if db.node(plan.old.nodeid) is None or db.node(plan.new.nodeid) is None:
            raise PerceusError("a node changed while you were asked; nothing replaced")
        db.replace_node(plan.old.nodeid, plan.new.nodeid)


def set_field(instance: Instance, field: str, value: str, query: NodeQuery, warn: Warn) -> int:
    """Set ``field`` to ``value`` on the nodes the query names, in one transaction; how many.

    ``boot`` (local, perceus or default) writes the nodes' own pxelinux files instead.
    """
    if field not in FIELDS:
        raise InvalidRequest(f"no node field {field!r}: one of {', '.join(FIELDS)}")
    if field == "boot":
        return set_boot(instance, value, query, warn)
    stored = check_value(field, value)
    if field in DAEMON_FIELDS:
        warn(f"{field} is written by perceusd as nodes check in", None)
    if field == "vnfs":
        warn_unknown_vnfs(instance, value, warn)
    with instance.db.transaction():
        chosen = select(instance, query, warn)
        if field == "hostname" and len(chosen) > 1:
            warn(
                f"{len(chosen)} nodes now share the name {value!r}; "
                "use -i with MAC addresses to tell them apart",
                None,
            )
        return instance.db.set_field((n.nodeid for n in chosen), field, stored)


def set_boot(instance: Instance, choice: str, query: NodeQuery, warn: Warn) -> int:
    """The nodes' own pxelinux files: local disk, stage one, or the default; how many nodes."""
    pxelinux.check_boot(choice)
    chosen = select(instance, query, warn)
    return pxelinux.set_boot(instance.paths.tftp_dir, [n.nodeid for n in chosen], choice)


def status_timeout(instance: Instance) -> int:
    """Seconds without a check-in after which a node counts as timed out."""
    return instance.settings.perceus.get_int("node timeout") or DEFAULT_TIMEOUT


@dataclass(frozen=True)
class LiveStatus:
    """One refresh of the live view: the nodes with their perceusd sessions."""

    nodes: list[tuple[Node, dict | None]]  # each node and its session (the newest), if it has one
    unknown: list[dict]  # sessions of MACs not in the database yet (between HELLO and being added)
    perceusd: dict  # the daemon's own totals
    timeout: int
    now: float


def live_status(nodes: Sequence[Node], document: dict, timeout: int, now: float) -> LiveStatus:
    """Match the sessions of perceusd's control document to the nodes."""
    live: dict[str, dict] = {}
    for session in document.get("sessions", []):
        if isinstance(session, dict) and isinstance(session.get("nodeid"), str):
            live[session["nodeid"]] = session
    matched = [(node, live.pop(node.nodeid, None)) for node in nodes]
    unknown = [session for nodeid, session in live.items() if nodeid]
    return LiveStatus(matched, unknown, document.get("perceusd", {}), timeout, now)


def watch(instance: Instance, query: NodeQuery, warn: Warn, interval: float) -> Iterator[LiveStatus]:
    """The live view every ``interval`` seconds from perceusd's control socket, until closed."""
    timeout = status_timeout(instance)
    for document in control.watch(control.socket_path(), interval):
        now = time.time()
        yield live_status(select(instance, query, warn), document, timeout, now)
