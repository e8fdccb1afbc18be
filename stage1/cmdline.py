"""The kernel command line as stage one reads it: where the master is, how to debug, what to skip.

Pure functions only, so every option is testable without booting anything.
"""

import ipaddress
from dataclasses import dataclass

from perceus.stage1.protocol import DEFAULT_PORT

__all__ = ["BootOptions", "Master", "parse_cmdline", "parse_masters"]


@dataclass(frozen=True)
class Master:
    """One master to try: host (name or address) and TCP port."""

    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class BootOptions:
    """What ``masterip=`` and the ``perceus.*`` words on /proc/cmdline ask for."""

    masters: tuple[Master, ...] = ()  # masterip=, in order; empty: the DHCP server
    debug: int = 0  # perceus.debug=N; N >= 3 opens a shell on the console after failures
    ifaces: tuple[str, ...] = ()  # perceus.iface=eth0,eth1: only these interfaces
    noload: tuple[str, ...] = ()  # perceus.noload=mod1,mod2: drivers never to load
    warnings: tuple[str, ...] = ()  # words that were present but unusable (printed, never fatal)


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_master(text: str, default_port: int = DEFAULT_PORT) -> Master:
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` -> Master; ValueError if malformed."""
    text = text.strip()
    if not text:
        raise ValueError("empty master address")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"master {text!r}: unclosed '['")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"master {text!r}: expected ':PORT' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError(f"master {text!r}: not HOST[:PORT] (write IPv6 as [ADDRESS]:PORT)") from None
    if not host or any(c.isspace() or c in "/,@" for c in host):
        raise ValueError(f"master {text!r}: not a host name or address")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"master {text!r}: port must be 1..65535")
        port = int(port_text)
    return Master(host, port)


def parse_masters(value: str, default_port: int = DEFAULT_PORT) -> tuple[Master, ...]:
    """A comma list of masters (``10.0.0.1,10.0.0.2:9870``); ValueError on the first bad one."""
    return tuple(parse_master(part, default_port) for part in _split_list(value))


def parse_cmdline(text: str) -> BootOptions:
    """Read the words stage one cares about from a kernel command line; never raises.

    The last occurrence of a word wins (as the kernel's own parameters do); unusable values
    are reported in ``warnings`` and otherwise ignored, because a typo must not keep a node
    from booting.
    """
    masters: tuple[Master, ...] = ()
    debug = 0
    ifaces: tuple[str, ...] = ()
    noload: tuple[str, ...] = ()
    warnings: list[str] = []
    for word in text.split():
        key, sep, value = word.partition("=")
        if not sep:
            continue
        if key == "masterip":
            try:
                masters = parse_masters(value)
            except ValueError as exc:
                warnings.append(f"masterip= ignored: {exc}")
        elif key == "perceus.debug":
            if value.isdigit():
                debug = int(value)
            else:
                warnings.append(f"perceus.debug={value} ignored: not a number")
        elif key == "perceus.iface":
            ifaces = _split_list(value)
        elif key == "perceus.noload":
            noload = tuple(name.replace("-", "_") for name in _split_list(value))
    return BootOptions(masters, debug, ifaces, noload, tuple(warnings))
