"""Node names and addresses in hosts-file form (guide 3.1.4).

dnsmasq reads perceus's own hosts file (``addn-hosts``) to answer DNS for the nodes, and
a name there that also has a ``dhcp-host`` line gets that address by DHCP: this is how
a node's address becomes static. Nodes without an address in the database are left out.

``--etc-hosts FILE`` merges the same entries into a hosts file others also edit, between
two marker lines; lines outside the markers are kept byte for byte.
"""

import os
from collections.abc import Iterable
from pathlib import Path

from perceus.server.db import Node
from perceus.server.errors import PerceusError
from perceus.server.netservices.files import install_text

BEGIN = "# BEGIN perceus nodes (written by 'perceus configure hosts'; edits between these lines are lost)"
END = "# END perceus nodes"


def entries(nodes: Iterable[Node]) -> list[str]:
    """``ADDRESS<TAB>NAME`` for each node with an address, in the order given."""
    return [f"{node.ipaddr}\t{node.hostname}" for node in nodes if node.ipaddr]


def render(nodes: Iterable[Node]) -> str:
    lines = ["# Written by 'perceus configure hosts' from the node database: nodes with an address."]
    return "\n".join(lines + entries(nodes)) + "\n"


def write(path: Path, nodes: Iterable[Node]) -> int:
    """perceus's own hosts file; how many entries it has."""
    text = render(nodes)
    install_text(path, text)
    return text.count("\n") - 1


def merge(text: str, lines: list[str], source: str) -> str:
    """``text`` with the perceus block replaced by ``lines`` (appended if it has none)."""
    block = [BEGIN, *lines, END]
    existing = text.splitlines(keepends=True)
    stripped = [line.rstrip("\r\n") for line in existing]
    begins = [i for i, line in enumerate(stripped) if line.startswith("# BEGIN perceus nodes")]
    ends = [i for i, line in enumerate(stripped) if line == END]
    if not begins and not ends:
        prefix = text if not text or text.endswith("\n") else text + "\n"
        return prefix + "\n".join(block) + "\n"
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise PerceusError("the perceus block's marker lines are damaged: fix them by hand", source)
    before, after = existing[: begins[0]], existing[ends[0] + 1 :]
    return "".join(before) + "\n".join(block) + "\n" + "".join(after)


def merge_file(path: Path, nodes: Iterable[Node]) -> int:
    """Merge the entries into an existing hosts-style file, keeping its mode and owner."""
    where = str(path)
    path = path.resolve()  # a symlinked hosts file keeps its link
    try:
        info = os.stat(path)
        text = path.read_bytes().decode()
    except FileNotFoundError:
        raise PerceusError("no such file", where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PerceusError(f"cannot read it: {exc}", where) from None
    lines = entries(nodes)
    merged = merge(text, lines, where)
    if merged != text:
        install_text(path, merged, like=info)
    return len(lines)
