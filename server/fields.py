"""The values a node's fields take, one rule per field: what ``node set``, ``group set`` and
``node add`` write, and the names node lists from other tools bring in."""

import re

from perceus.server.errors import InvalidRequest

HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
GROUPNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
VNFSNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
IPV4 = re.compile(r"^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$")
MAX_TEXT = 1024


def check_value(field: str, value: str) -> str | int:
    """The value as stored, or :class:`InvalidRequest` naming the field and what it expects."""
    if field in ("enabled", "debug"):
        if not re.fullmatch(r"\d{1,9}", value):
            raise InvalidRequest(f"{field} takes a whole number >= 0, not {value!r}")
        return int(value)
    rules = {
        "hostname": (HOSTNAME, "letters, digits, '.', '_' and '-', starting with a letter or digit"),
        "group": (GROUPNAME, "letters, digits, '.', '_' and '-'"),
        "vnfs": (VNFSNAME, "a VNFS name such as centos-9-1.stateless.x86_64, or '' for none"),
        "ipaddr": (IPV4, "a dotted IPv4 address, or '' for none"),
    }
    if field in rules:
        pattern, expected = rules[field]
        if value == "" and field in ("vnfs", "ipaddr"):
            return value
        if not pattern.match(value):
            raise InvalidRequest(f"{field} takes {expected}, not {value!r}")
        return value
    if len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
        raise InvalidRequest(f"{field} takes one line of at most {MAX_TEXT} characters")
    return value
