"""What perceusd answers a node checking in: WAIT, ASSIGN (with or without an image) or REFUSE,
from the node's record alone."""

from dataclasses import dataclass
from enum import Enum

from perceus.server import vnfs as vnfs_mod
from perceus.server.db import Node
from perceus.stage1 import protocol


class Action(Enum):
    WAIT = "wait"  # come back in `node retry` seconds
    ASSIGN = "assign"  # name, VNFS and (at init) the image
    REFUSE = "refuse"  # ERROR(REFUSED): not a node of ours


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    vnfs: vnfs_mod.Vnfs | None = None  # set when an image follows
    vnfs_name: str = ""  # what ASSIGN names (empty if the node's VNFS cannot be named on the wire)


def _wire_vnfs(name: str) -> str:
    return name if name and protocol._VNFS_RE.fullmatch(name) and ".." not in name else ""


def decide(node: Node | None, state: str, store: vnfs_mod.VnfsStore) -> Decision:
    """What a node checking in at ``state`` gets.

    A disabled node waits at any state. At ``init`` the node also needs an imported VNFS
    (else it waits: "no VNFS assigned" / "VNFS 'X' is not imported") and gets its image;
    at other states (ready, halt, reboot...) it gets its name and that state's script only.
    """
    if node is None:
        return Decision(Action.REFUSE, "unknown node: check in with state init first")
    if not node.enabled:
        return Decision(Action.WAIT, "node is disabled")
    name = _wire_vnfs(node.vnfs)
    if state != "init":
        return Decision(Action.ASSIGN, vnfs_name=name)
    if not node.vnfs:
        return Decision(Action.WAIT, "no VNFS assigned")
    if not name or not store.exists(name):
        return Decision(Action.WAIT, f"VNFS '{node.vnfs}' is not imported")
    return Decision(Action.ASSIGN, vnfs=vnfs_mod.Vnfs(name, store.root / name), vnfs_name=name)
