"""Node lists from other tools, read in file order (the guide: add nodes in rack order).

Each reader returns :class:`NewNode` entries carrying ``file:line`` so a bad line is
reported where it is; nothing is added unless the whole source reads cleanly.
"""

import csv
import io
import re
from collections.abc import Callable

from perceus.server.errors import PerceusError
from perceus.server.fields import HOSTNAME
from perceus.server.macaddr import parse_mac
from perceus.server.registry import NewNode

_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def _mac(text: str, where: str) -> str:
    mac = parse_mac(text)
    if mac is None:
        raise PerceusError(f"not a MAC address: {text!r}", where)
    return mac


def _name(text: str, where: str) -> str:
    if not HOSTNAME.match(text):
        raise PerceusError(f"not a valid node name: {text!r}", where)
    return text


def read_macs(text: str, source: str) -> list[NewNode]:
    """One MAC per line (blank lines and ``#`` comments skipped), as piped on standard input."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            where = f"{source}:{number}"
            entries.append(NewNode(_mac(line, where), None, where))
    return entries


def read_ethers(text: str, source: str) -> list[NewNode]:
    """``/etc/ethers``: ``MAC hostname`` per line; an IP address in place of a name gets a new name."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source}:{number}"
        if len(fields) != 2:
            raise PerceusError(f"expected 'MAC hostname', got {line.strip()!r}", where)
        name = None if _IPV4.match(fields[1]) else _name(fields[1], where)
        entries.append(NewNode(_mac(fields[0], where), name, where))
    return entries


def read_csv(text: str, source: str) -> list[NewNode]:
    """``mac,name`` rows (name optional); a first row of column titles is skipped."""
    entries = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        where = f"{source}:{number}"
        if number == 1 and parse_mac(cells[0]) is None and cells[0].lower() in ("mac", "nodeid", "hwaddr"):
            continue
        if len(cells) > 2:
            raise PerceusError(f"expected 'mac,name', got {len(cells)} columns", where)
        name = _name(cells[1], where) if len(cells) == 2 and cells[1] else None
        entries.append(NewNode(_mac(cells[0], where), name, where))
    return entries


_DHCPD_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{};]|[^\s{};"]+')


def read_dhcpd(text: str, source: str) -> list[NewNode]:
    """ISC dhcpd.conf ``host NAME { hardware ethernet MAC; ... }`` blocks, nested or not."""
    entries = []
    tokens: list[tuple[str, int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = _strip_dhcpd_comment(line)
        tokens.extend((token, number) for token in _DHCPD_TOKEN.findall(line))
    depth = 0
    host: tuple[str, int, int] | None = None  # name, line, depth of its block
    host_mac: str | None = None
    statement: list[str] = []
    for token, number in tokens:
        where = f"{source}:{number}"
        if token == "{":
            depth += 1
            if len(statement) == 2 and statement[0] == "host":
                if host is not None:
                    raise PerceusError("host block inside a host block", where)
                host, host_mac = (statement[1].strip('"'), number, depth), None
            statement = []
        elif token == "}":
            if depth == 0:
                raise PerceusError("unbalanced '}'", where)
            if host is not None and host[2] == depth:
                host_where = f"{source}:{host[1]}"
                if host_mac is None:
                    raise PerceusError(f"host {host[0]} has no 'hardware ethernet'", host_where)
                entries.append(NewNode(host_mac, _name(host[0], host_where), host_where))
                host = None
            depth -= 1
            statement = []
        elif token == ";":
            if host is not None and statement[:2] == ["hardware", "ethernet"]:
                if len(statement) != 3:
                    raise PerceusError("expected 'hardware ethernet MAC;'", where)
                host_mac = _mac(statement[2], where)
            statement = []
        else:
            statement.append(token)
    if depth != 0:
        raise PerceusError("unbalanced '{': missing '}' at end of file", f"{source}:{tokens[-1][1]}")
    return entries


def _strip_dhcpd_comment(line: str) -> str:
    """Drop a ``#`` comment unless the ``#`` is inside a quoted string."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


READERS: dict[str, Callable[[str, str], list[NewNode]]] = {
    "dhcpd": read_dhcpd,
    "ethers": read_ethers,
    "csv": read_csv,
    "macs": read_macs,
}
"""The readers by the name of the form they read (``node import --dhcpd`` ...; MACs on stdin)."""
