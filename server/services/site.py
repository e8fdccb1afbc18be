"""The site itself: setting a master up (``perceus init``) and describing it (``perceus info``).

Init writes perceus.conf and defaults.conf, makes the state tree and the node database,
creates the SSH host keys capsules receive and root's own SSH key. It never overwrites
existing configuration unless forced and can be run again safely.
"""

import os
import platform
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from perceus.common.atomicfile import atomic_write
from perceus.server import netinfo
from perceus.server.config import DEFAULTS_KEYS, PERCEUS_KEYS, Settings, parse, render
from perceus.server.db import open_database
from perceus.server.errors import PerceusError
from perceus.server.instance import Instance
from perceus.server.modules import ModuleStore
from perceus.server.paths import Paths

HOST_KEY_TYPES = ("rsa", "ecdsa", "ed25519")
STATE_DIRS = ("database", "vnfs", "modules", "nodescripts/init/all", "nodescripts/ready/all", "ssh")
ROOT_KEY_NAMES = ("id_ed25519", "id_rsa", "id_ecdsa")

# ------------------------------------------------------------------------------ init


@dataclass(frozen=True)
class InitPlan:
    """Which configuration files init writes (missing ones, or all when forced), and the
    network devices its first question offers."""

    perceus_conf: bool
    defaults_conf: bool
    devices: list[str]


@dataclass(frozen=True)
class MasterAnswers:
    """perceus.conf's questions."""

    device: str
    transfer_master: str


@dataclass(frozen=True)
class NodeDefaults:
    """defaults.conf's questions."""

    node_name: str
    group_name: str
    first_node: str


class Step(Enum):
    WROTE = "wrote"  # a configuration file
    DATABASE = "database"  # the node database is ready (detail: its schema)
    HOST_KEY = "host key"
    ROOT_KEY = "root key"
    MODULE = "module"  # a built-in module installed (subject: its name)


@dataclass(frozen=True)
class InitStep:
    """One thing init did, reported as it happens."""

    step: Step
    subject: str  # a path, or a module's name
    schema: int | None = None


def plan_init(paths: Paths, force: bool) -> InitPlan:
    devices = [d for d in netinfo.interfaces() if d != "lo"] or ["eth1"]
    return InitPlan(
        force or not paths.perceus_conf.exists(), force or not paths.defaults_conf.exists(), devices
    )


def device_address(device: str) -> str:
    """The device's IPv4 address, or "" (the default answer for the transfer master)."""
    return netinfo.ipv4_address(device) or ""


def initialise(
    paths: Paths,
    master: MasterAnswers | None,
    defaults: NodeDefaults | None,
    warn: Callable[[str], None],
    home: Path | None = None,
) -> Iterator[InitStep]:
    """Set the master up; None for a configuration file that is kept as it is.

    The answers are checked (the files must read back) before anything is written.
    ``home`` is root's home directory (default: $HOME, else /root).
    """
    files = []  # (path, keys, text)
    if master is not None:
        values = {"master network device": master.device, "vnfs transfer master": master.transfer_master}
        files.append((paths.perceus_conf, PERCEUS_KEYS, render(PERCEUS_KEYS, values)))
    if defaults is not None:
        values = {
            "Node Name": defaults.node_name,
            "Group Name": defaults.group_name,
            "First Node": defaults.first_node,
        }
        files.append((paths.defaults_conf, DEFAULTS_KEYS, render(DEFAULTS_KEYS, values)))
    for path, keys, text in files:
        parse(text, path, keys, warn)  # what we write must read back: a bad answer stops here

    paths.sysconfdir.mkdir(parents=True, exist_ok=True)
    for sub in STATE_DIRS:
        paths.statedir.joinpath(sub).mkdir(parents=True, exist_ok=True)
    for path, _, text in files:
        atomic_write(path, text)
        yield InitStep(Step.WROTE, str(path))

    db = open_database(Settings.load(paths, warn=warn))
    schema = db.schema_version
    db.close()
    yield InitStep(Step.DATABASE, str(paths.database_file), schema)

    for kind in HOST_KEY_TYPES:
        key = paths.ssh_dir / f"ssh_host_{kind}_key"
        if _keygen(key, kind, "perceus capsule host key"):
            yield InitStep(Step.HOST_KEY, str(key))
    created = _root_ssh_key(Path(home or os.environ.get("HOME") or "/root") / ".ssh")
    if created is not None:
        yield InitStep(Step.ROOT_KEY, str(created))
    for name in ModuleStore(paths).install_builtins():
        yield InitStep(Step.MODULE, name)
    _link(paths.sysconfdir / "vnfs", paths.vnfs_dir)
    _link(paths.sysconfdir / "nodescripts", paths.nodescripts_dir)


def _keygen(key: Path, kind: str, comment: str) -> bool:
    if key.exists():
        return False
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(key)],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
    except FileNotFoundError as exc:
        raise PerceusError("ssh-keygen is missing: install openssh-client") from exc
    except subprocess.CalledProcessError as exc:
        raise PerceusError(f"ssh-keygen failed: {exc.stderr.decode().strip()}", str(key)) from exc
    return True


def _root_ssh_key(ssh: Path) -> Path | None:
    """Root's passphraseless key, authorised for itself (guide 5.6.1), so ssh to nodes works;
    the key if it was created now."""
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = None
    if not any((ssh / name).exists() for name in ROOT_KEY_NAMES):
        created = ssh / "id_ed25519"
        _keygen(created, "ed25519", "perceus root key")
    for name in ROOT_KEY_NAMES:
        public = ssh / f"{name}.pub"
        if public.exists():
            line = public.read_text().strip()
            authorized = ssh / "authorized_keys"
            current = authorized.read_text() if authorized.exists() else ""
            if line not in current.splitlines():
                atomic_write(
                    authorized,
                    current + ("" if current.endswith("\n") or not current else "\n") + line + "\n",
                    mode=0o600,
                )
            break
    return created


def _link(link: Path, target: Path) -> None:
    """The guide's convenience links in /etc/perceus (vnfs, nodescripts) into the state tree."""
    if link.is_symlink() or link.exists():
        return
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


# ------------------------------------------------------------------------------ info

DERIVED_KEYS = ("statedir", "sysconfdir", "database")


def config_keys() -> list[str]:
    """Every key ``info config`` reports: both files' keys, then the derived ones."""
    return [k.name for k in PERCEUS_KEYS + DEFAULTS_KEYS] + list(DERIVED_KEYS)


def config_value(instance: Instance, key: str) -> str:
    """A configuration value, with derived defaults filled in (the transfer master: the
    master device's address)."""
    paths = instance.paths
    derived = {"sysconfdir": paths.sysconfdir, "statedir": paths.statedir, "database": paths.database_file}
    if key in derived:
        return str(derived[key])
    settings = instance.settings
    files = {k.name: settings.perceus for k in PERCEUS_KEYS} | {
        k.name: settings.defaults for k in DEFAULTS_KEYS
    }
    if key not in files:
        raise PerceusError(f"no configuration key {key!r}")
    value = files[key].get(key)
    if key == "vnfs transfer master" and not value:
        value = netinfo.ipv4_address(settings.perceus.get("master network device")) or ""
    return value


def _release() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "unknown")
    except OSError:
        return "unknown"


def system_info(instance: Instance) -> dict:
    """The master at a glance: where its files are, its configuration (no password), how
    many nodes and which VNFS it has, and the system it runs on."""
    paths, settings = instance.paths, instance.settings
    return {
        "database": str(paths.database_file),
        "schema_version": instance.db.schema_version,
        "sysconfdir": str(paths.sysconfdir),
        "statedir": str(paths.statedir),
        "config": {k.name: settings.perceus.get(k.name) for k in PERCEUS_KEYS if k.name != "database pass"},
        "nodes": len(instance.db.nodes()),
        "vnfs": sorted(p.name for p in paths.vnfs_dir.iterdir()) if paths.vnfs_dir.is_dir() else [],
        "release": _release(),
        "devices": {dev: netinfo.ipv4_address(dev) or "" for dev in netinfo.interfaces()},
        "architecture": platform.machine(),
        "kernel": platform.release(),
    }
