"""``/etc/perceus/node.conf``: who this node is and whom provisiond calls, as perceusd wrote it.

The file is sourceable shell (``KEY="value"`` lines), read without a shell by
:mod:`perceus.common.shellvars`, the parser and writer every such file shares.
"""

from dataclasses import dataclass, field
from pathlib import Path

from perceus.common import shellvars
from perceus.common.shellvars import ShellVarsError
from perceus.stage1.cmdline import Master, parse_masters

__all__ = ["DEFAULT_INTERVAL", "NodeConf", "parse_node_conf", "read_node_conf"]

DEFAULT_INTERVAL = 300  # seconds between ready check-ins when node.conf says nothing
MAX_NODE_CONF = 64 << 10


@dataclass(frozen=True)
class NodeConf:
    """The values provisiond uses, plus every KEY found (``values``)."""

    masters: tuple[Master, ...] = ()
    interval: int = DEFAULT_INTERVAL
    nodeid: str = ""
    nodename: str = ""
    vnfs: str = ""
    values: dict[str, str] = field(default_factory=dict)


def parse_node_conf(text: str) -> NodeConf:
    """Parse node.conf text; ValueError (naming the line) for anything that is not KEY=value."""
    try:
        values = shellvars.parse(text)
    except ShellVarsError as exc:
        raise ValueError(f"{exc.path}: {exc.reason}" if exc.path else exc.reason) from None
    interval_text = values.get("PROVISIOND_INTERVAL", "").strip()
    interval = DEFAULT_INTERVAL
    if interval_text:
        if not interval_text.isdigit() or int(interval_text) < 1:
            raise ValueError(f"PROVISIOND_INTERVAL={interval_text!r}: expected a number of seconds >= 1")
        interval = int(interval_text)
    try:
        masters = parse_masters(values.get("MASTERS", ""))
    except ValueError as exc:
        raise ValueError(f"MASTERS: {exc}") from None
    return NodeConf(
        masters=masters,
        interval=interval,
        nodeid=values.get("NODEID", "").upper(),
        nodename=values.get("NODENAME", ""),
        vnfs=values.get("VNFS", ""),
        values=values,
    )


def read_node_conf(path: Path) -> NodeConf:
    """Read and parse node.conf; OSError or ValueError with the path in the message."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_NODE_CONF + 1)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_NODE_CONF:
        raise ValueError(f"{path}: larger than {MAX_NODE_CONF} bytes")
    try:
        return parse_node_conf(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
