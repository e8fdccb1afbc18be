"""MAC addresses, the node's primary key: parsed leniently, stored one canonical way."""

import re

from perceus.server.errors import InvalidRequest

_SEPARATED = re.compile(r"^[0-9A-Fa-f]{1,2}([:-])(?:[0-9A-Fa-f]{1,2}\1){4}[0-9A-Fa-f]{1,2}$")
_BARE = re.compile(r"^[0-9A-Fa-f]{12}$")
_DOTTED = re.compile(r"^[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}$")


def parse_mac(text: str) -> str | None:
    """Canonical ``AA:BB:CC:DD:EE:FF`` for a MAC in any common spelling, else None.

    Accepts ``:``/``-`` separated octets (one or two digits, as /etc/ethers allows),
    12 bare hex digits, Cisco ``aabb.ccdd.eeff``, and the ``01:`` hardware-type prefix
    DHCP client identifiers carry (the original Perceus stripped it too).
    """
    text = text.strip()
    if len(text) >= 20 and text[:3] in ("01:", "01-"):
        text = text[3:]
    if _SEPARATED.match(text):
        octets = re.split(r"[:-]", text)
    elif _BARE.match(text):
        octets = [text[i : i + 2] for i in range(0, 12, 2)]
    elif _DOTTED.match(text):
        flat = text.replace(".", "")
        octets = [flat[i : i + 2] for i in range(0, 12, 2)]
    else:
        return None
    return ":".join(octet.upper().zfill(2) for octet in octets)


def require_mac(text: str) -> str:
    """Like :func:`parse_mac`, but a bad address is a usage error naming it."""
    mac = parse_mac(text)
    if mac is None:
        raise InvalidRequest(f"not a MAC address: {text!r}")
    return mac
