"""perceus.conf and defaults.conf, in the original Perceus syntax.

The syntax sites already have: ``key = value`` with spaces inside keys, whole-line
``#`` comments, optional double quotes around the value, commas splitting a value
into a list, and the last occurrence of a key winning. A key the file does not know
is a warning naming the file and line; a line without ``=`` is an error there.
"""

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from perceus.server.errors import PerceusError
from perceus.server.paths import Paths

_LINE = re.compile(r'^\s*(?P<key>[^=]*?)\s*=\s*"?\s*(?P<value>.*?)\s*"?\s*$')


@dataclass(frozen=True)
class Key:
    """One known configuration key: its default, its check, and the comment init writes."""

    name: str
    default: str
    help: str
    check: Callable[[str], str | None] | None = None


def _integer(minimum: int) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if not re.fullmatch(r"\d+", value) or int(value) < minimum:
            return f"expected a whole number >= {minimum}, got {value!r}"
        return None

    return check


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"expected one of {', '.join(choices)}, got {value!r}"

    return check


def _integer_range(minimum: int, maximum: int) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if not re.fullmatch(r"\d+", value) or not minimum <= int(value) <= maximum:
            return f"expected a whole number from {minimum} to {maximum}, got {value!r}"
        return None

    return check


def _node_name(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9._-]*#+[A-Za-z0-9._-]*", value):
        return f"expected a name with one run of '#' digits such as n####, got {value!r}"
    return None


PERCEUS_KEYS = (
    Key("master network device", "eth1", "The network device on the master that faces the nodes."),
    Key(
        "vnfs transfer method",
        "nfs",
        "How nodes reach hybridized parts of the VNFS: nfs, http or rsync.",
        _one_of("nfs", "http", "rsync"),
    ),
    Key("vnfs transfer master", "", "Address of the VNFS server; empty means the master device's address."),
    Key("vnfs transfer prefix", "", "Path prefix on the VNFS server, if it is not the state directory."),
    Key("vnfs mount directory", "/mnt", "Where 'perceus vnfs mount' puts a VNFS's writable working tree."),
    Key(
        "database type",
        "sqlite",
        "Node database: sqlite (one master) or postgresql (several masters sharing state).",
        _one_of("sqlite", "postgresql", "btree", "hash"),
    ),
    Key("database server", "localhost", "PostgreSQL server, when database type = postgresql."),
    Key("database name", "perceus", "PostgreSQL database name."),
    Key("database user", "", "PostgreSQL user."),
    Key("database pass", "", "PostgreSQL password."),
    Key(
        "node timeout",
        "600",
        "Seconds without a check-in after which a node shows as timed out.",
        _integer(1),
    ),
    Key(
        "perceusd port",
        "987",
        "TCP port perceusd answers booting nodes on (perceusd --port overrides it).",
        _integer_range(1, 65535),
    ),
    Key(
        "node auth",
        "optional",
        "required: only nodes holding the site key ($SYSCONFDIR/site.key) are served; "
        "optional: nodes without it are served too, but get no secret modules or SSH host keys.",
        _one_of("optional", "required"),
    ),
    Key(
        "node retry",
        "30",
        "Seconds a disabled node, or one without a VNFS, waits before checking in again.",
        _integer_range(1, 86400),
    ),
    Key(
        "provisiond interval",
        "300",
        "Seconds between provisiond's ready check-ins on running nodes.",
        _integer_range(1, 86400),
    ),
    Key("controlport bind address", "127.0.0.1", "Address of perceusd's local control port."),
    Key("controlport allow address", "127.0.0.1", "Addresses allowed to use the control port."),
)

DEFAULTS_KEYS = (
    Key("Node Name", "n####", "Name of new nodes; each '#' is one digit of the node number.", _node_name),
    Key("Group Name", "cluster", "Group new nodes join."),
    Key("Vnfs Name", "", "VNFS new nodes get; empty leaves it for you to set."),
    Key("Enabled", "1", "Whether new nodes may be provisioned (1) or wait (0).", _integer(0)),
    Key("First Node", "0", "Number of the first node.", _integer(0)),
    Key(
        "Total Nodes",
        "",
        "How many node numbers to count through; with more digits than '#'s, names widen to fit.",
        _integer(1),
    ),
    Key("Debug", "0", "Debug level new nodes get.", _integer(0)),
)


@dataclass
class ConfigFile:
    """A parsed configuration file: each key's values (a list) and where it was set."""

    path: Path
    keys: tuple[Key, ...]
    values: dict[str, list[str]] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def get(self, name: str) -> str:
        """The value as one string (a list joined back with commas), or the key's default."""
        if name in self.values:
            return ", ".join(self.values[name])
        return self._key(name).default

    def get_list(self, name: str) -> list[str]:
        if name in self.values:
            return list(self.values[name])
        default = self._key(name).default
        return [part.strip() for part in default.split(",")] if default else []

    def get_int(self, name: str) -> int | None:
        text = self.get(name)
        return int(text) if text else None

    def where(self, name: str) -> str:
        line = self.lines.get(name)
        return f"{self.path}:{line}" if line else str(self.path)

    def _key(self, name: str) -> Key:
        for key in self.keys:
            if key.name == name:
                return key
        raise KeyError(name)


def parse(text: str, path: Path, keys: tuple[Key, ...], warn: Callable[[str], None]) -> ConfigFile:
    """Parse configuration text; malformed lines raise, unknown keys are reported to ``warn``."""
    known = {key.name: key for key in keys}
    config = ConfigFile(path=path, keys=keys)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None or "=" not in line or not match.group("key"):
            raise PerceusError(f"malformed line, expected 'key = value': {line[:60]!r}", f"{path}:{number}")
        name, value = match.group("key"), match.group("value")
        if name not in known:
            warn(f"perceus: warning: unknown key {name!r} ({path}:{number})")
            continue
        values = [part for part in re.split(r"\s*,\s*", value)] if value else []
        check = known[name].check
        for part in values:
            problem = check(part) if check else None
            if problem:
                raise PerceusError(f"{name}: {problem}", f"{path}:{number}")
        config.values[name] = values
        config.lines[name] = number
    return config


def _warn_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def load(path: Path, keys: tuple[Key, ...], warn: Callable[[str], None] = _warn_stderr) -> ConfigFile:
    """Read a configuration file; a missing file means every key has its default."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ConfigFile(path=path, keys=keys)
    except OSError as exc:
        raise PerceusError(f"cannot read configuration: {exc.strerror}", str(path)) from exc
    except UnicodeDecodeError as exc:
        raise PerceusError("configuration is not text", str(path)) from exc
    return parse(text, path, keys, warn)


def render(keys: tuple[Key, ...], values: dict[str, str] | None = None) -> str:
    """A fresh, self-documenting configuration file in the original layout."""
    values = values or {}
    blocks = []
    for key in keys:
        value = values.get(key.name, key.default)
        blocks.append(f"# {key.help}\n{key.name} = {value}\n")
    return "\n".join(blocks)


@dataclass(frozen=True)
class Settings:
    """Both configuration files of one instance."""

    paths: Paths
    perceus: ConfigFile
    defaults: ConfigFile

    @classmethod
    def load(cls, paths: Paths, warn: Callable[[str], None] = _warn_stderr) -> "Settings":
        return cls(
            paths=paths,
            perceus=load(paths.perceus_conf, PERCEUS_KEYS, warn),
            defaults=load(paths.defaults_conf, DEFAULTS_KEYS, warn),
        )
