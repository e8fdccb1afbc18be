"""Which nodes or groups a request's arguments name: bracket ranges, globs, or MACs with -i.

Ranges expand natively (``perceus.native.nodeset``); ``*`` and ``?`` match against the
names the database knows, as the guide's ``n1*`` does.
"""

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from perceus.native import nodeset
from perceus.server.db import Group, Node
from perceus.server.errors import InvalidRequest, PerceusError, Warn
from perceus.server.macaddr import parse_mac

# Stand-ins that let bracket ranges around globs expand first ("n[1-2]*"): never in a name.
_STAR, _QUESTION = "\x01", "\x02"


@dataclass(frozen=True)
class NodeQuery:
    """The nodes a request names: names (or MACs, ``by_nodeid``) with ranges and globs; none = all."""

    patterns: tuple[str, ...] = ()
    by_nodeid: bool = False


def natural_key(text: str) -> tuple:
    """Sort key putting n2 before n10."""
    return tuple((1, int(part)) if part.isdigit() else (0, part) for part in re.split(r"(\d+)", text) if part)


def node_order(node: Node) -> tuple:
    """The original's listing order: by group, then by hostname."""
    return (natural_key(node.group), natural_key(node.hostname), node.nodeid)


def expand_patterns(pattern: str) -> list[str]:
    """Names and glob patterns one argument stands for."""
    try:
        if not nodeset.is_glob(pattern):
            return nodeset.expand(pattern)
        masked = pattern.replace("*", _STAR).replace("?", _QUESTION)
        return [name.replace(_STAR, "*").replace(_QUESTION, "?") for name in nodeset.expand(masked)]
    except nodeset.NodeSetError as exc:
        raise InvalidRequest(str(exc)) from exc


def _match(patterns: Sequence[str], keys: dict[str, list], warn: Warn, what: str) -> list:
    """Everything whose key one of the patterns names; unknown exact names are warned about."""
    chosen: dict[int, object] = {}
    for pattern in patterns:
        for item in expand_patterns(pattern):
            if nodeset.is_glob(item):
                hits = [obj for key in fnmatch.filter(keys, item) for obj in keys[key]]
            else:
                hits = keys.get(item, [])
                if not hits:
                    warn(f"no {what} named {item!r}", None)
            for obj in hits:
                chosen[id(obj)] = obj
    if patterns and not chosen:
        raise PerceusError(f"no {what}s match {' '.join(patterns)}")
    return list(chosen.values())


def select_nodes(nodes: Iterable[Node], query: NodeQuery, warn: Warn) -> list[Node]:
    """The nodes the query names (all of them when it names none), in listing order."""
    nodes = list(nodes)
    if not query.patterns:
        return sorted(nodes, key=node_order)
    keys: dict[str, list[Node]] = {}
    if query.by_nodeid:
        patterns = [_mac_pattern(p) for p in query.patterns]
        for node in nodes:
            keys.setdefault(node.nodeid, []).append(node)
        what = "node with NodeID"
    else:
        patterns = list(query.patterns)
        for node in nodes:
            keys.setdefault(node.hostname, []).append(node)
        what = "node"
    return sorted(_match(patterns, keys, warn, what), key=node_order)


def _mac_pattern(pattern: str) -> str:
    if nodeset.is_glob(pattern):
        return pattern.upper().replace("-", ":")
    mac = parse_mac(pattern)
    if mac is None:
        raise InvalidRequest(f"not a MAC address: {pattern!r} (-i/--nodeid takes MACs)")
    return mac


def select_groups(groups: Iterable[Group], patterns: Sequence[str], warn: Warn) -> list[Group]:
    """The groups the arguments name (all of them when there are none), sorted by name."""
    groups = list(groups)
    if patterns:
        groups = _match(patterns, {g.name: [g] for g in groups}, warn, "group")
    return sorted(groups, key=lambda g: natural_key(g.name))
