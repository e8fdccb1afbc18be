"""What an installed module is: its name, its ``module.json``, its scripts, and activation states.

An installed module is the directory ``$STATEDIR/modules/<name>/``::

    module.json                 {"name", "version", "description", "states", "secret"}
    nodescripts/<state>/<file>  executables run on the master, other files sent as they are
    activate                    optional executable run on the master at activation
    ...                         anything else the module's scripts read (its own files)

An activation state is ``<state>/all`` or ``<state>/{group,vnfs,node}/<NAME>`` (guide 4.6.2):
the nodescript layer ``$STATEDIR/nodescripts/<state>/<scope>/`` the module's scripts for
``<state>`` are linked into.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from perceus.server.errors import InvalidRequest, PerceusError

MODULE_JSON = "module.json"
ACTIVATE = "activate"
NODESCRIPTS = "nodescripts"
MAX_MODULE_JSON = 64 << 10

# Module, state and scope names become path components: letters, digits, '-', '_', '.'.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SCOPES = ("all", "group", "vnfs", "node")
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~]{0,63}")
_KEYS = {"name", "version", "description", "states", "secret"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: str, what: str = "module name") -> str:
    """A name safe as one path component (no '/', no leading '.', nothing but [A-Za-z0-9._-])."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidRequest(f"not a {what}: {name!r} (use letters, digits, '-', '_' and '.')")
    return name


@dataclass(frozen=True, order=True)
class Activation:
    """One place a module can be active: ``init/all``, ``ready/group/NAME``, ``init/node/NAME``..."""

    state: str
    scope: str
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> "Activation":
        parts = text.split("/")
        usage = f"not a state: {text!r} (use STATE/all or STATE/group|vnfs|node/NAME)"
        if len(parts) == 2 and parts[1] == "all":
            return cls(check_name(parts[0], "state name"), "all")
        if len(parts) == 3 and parts[1] in SCOPES[1:]:
            return cls(check_name(parts[0], "state name"), parts[1], check_name(parts[2], "name"))
        raise InvalidRequest(usage)

    def __str__(self) -> str:
        return f"{self.state}/{self.scope}" + (f"/{self.name}" if self.name else "")

    def directory(self, nodescripts_dir: Path) -> Path:
        """The nodescript layer this activation links into."""
        base = Path(nodescripts_dir) / self.state / self.scope
        return base / self.name if self.name else base


@dataclass(frozen=True)
class ModuleInfo:
    """The parsed ``module.json``."""

    name: str
    version: str
    description: str
    states: tuple[Activation, ...]
    secret: bool

    @classmethod
    def parse(cls, raw: bytes, source: str) -> "ModuleInfo":
        """Checked totally: a module.json that is not exactly right is refused, naming why and
        ``source`` (the file it came from)."""

        def bad(why: str) -> PerceusError:
            return PerceusError(f"bad {MODULE_JSON}: {why}", source)

        if len(raw) > MAX_MODULE_JSON:
            raise bad(f"larger than {MAX_MODULE_JSON} bytes")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise bad(str(exc).splitlines()[0][:200]) from None
        if not isinstance(data, dict):
            raise bad("not a JSON object")
        missing, unknown = _KEYS - set(data), set(data) - _KEYS
        if missing or unknown:
            raise bad(f"lacks {sorted(missing)[0]!r}" if missing else f"unknown key {sorted(unknown)[0]!r}")
        name, version, description = data["name"], data["version"], data["description"]
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise bad(f"name {name!r} is not allowed (letters, digits, '-', '_', '.')")
        if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
            raise bad(f"version {version!r} is not allowed")
        if not isinstance(description, str) or len(description) > 200 or _CONTROL.search(description):
            raise bad("description must be one line of at most 200 characters")
        if not isinstance(data["secret"], bool):
            raise bad("secret must be true or false")
        states = data["states"]
        if not isinstance(states, list) or not all(isinstance(s, str) for s in states):
            raise bad('states must be a list of strings such as "init/all"')
        try:
            parsed = tuple(Activation.parse(s) for s in states)
        except PerceusError as exc:
            raise bad(exc.what) from None
        return cls(name, version, description, parsed, data["secret"])

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "name": self.name,
                    "version": self.version,
                    "description": self.description,
                    "states": [str(s) for s in self.states],
                    "secret": self.secret,
                },
                indent=2,
            )
            + "\n"
        )


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith("~")


@dataclass(frozen=True)
class Module:
    """An installed module directory, read when asked."""

    path: Path
    info: ModuleInfo

    @classmethod
    def load(cls, path: Path) -> "Module":
        """The module in directory ``path``; its module.json must name it as the directory does."""
        path = Path(path)
        try:
            raw = (path / MODULE_JSON).read_bytes()
        except OSError as exc:
            raise PerceusError(
                f"cannot read {MODULE_JSON}: {exc.strerror}", str(path / MODULE_JSON)
            ) from None
        info = ModuleInfo.parse(raw, str(path / MODULE_JSON))
        module = cls(path, info)
        module.check()
        return module

    @property
    def name(self) -> str:
        return self.info.name

    def check(self) -> None:
        """Refuse a module whose defaults name a state it has no scripts for."""
        for activation in self.info.states:
            if not self.scripts(activation.state):
                raise PerceusError(
                    f"module '{self.name}' has no scripts for its default state {activation}",
                    str(self.path / MODULE_JSON),
                )
        hook = self.path / ACTIVATE
        if hook.exists() and (not hook.is_file() or hook.is_symlink() or not os.access(hook, os.X_OK)):
            raise PerceusError("the activate hook must be an executable regular file", str(hook))

    def script_states(self) -> list[str]:
        """The states this module has scripts for."""
        base = self.path / NODESCRIPTS
        if not base.is_dir():
            return []
        return sorted(s for s in os.listdir(base) if NAME_RE.fullmatch(s) and self.scripts(s))

    def scripts(self, state: str) -> list[Path]:
        """The module's nodescripts for ``state``: regular files (not symlinks), by name."""
        directory = self.path / NODESCRIPTS / state
        if not NAME_RE.fullmatch(state) or not directory.is_dir() or directory.is_symlink():
            return []
        found = []
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if not _ignored(entry.name) and entry.is_file(follow_symlinks=False):
                found.append(Path(entry.path))
        return found

    @property
    def hook(self) -> Path | None:
        hook = self.path / ACTIVATE
        return hook if hook.is_file() else None
