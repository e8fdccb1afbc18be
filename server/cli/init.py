"""``perceus init``: first-time set-up of one master (guide 3.2.2).

Writes perceus.conf and defaults.conf, makes the state tree and the node database,
creates the SSH host keys capsules receive and root's own SSH key. It never
overwrites existing configuration without ``--force`` and can be run again safely.
"""

import os
import subprocess
from pathlib import Path

import click

from perceus.common.atomicfile import atomic_write
from perceus.server import netinfo
from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusCommand
from perceus.server.config import DEFAULTS_KEYS, PERCEUS_KEYS, Settings, parse, render
from perceus.server.db import open_database
from perceus.server.errors import PerceusError
from perceus.server.modules import ModuleStore

HOST_KEY_TYPES = ("rsa", "ecdsa", "ed25519")
STATE_DIRS = ("database", "vnfs", "modules", "nodescripts/init/all", "nodescripts/ready/all", "ssh")


def _ask(app: App, flag_value: str | None, question: str, default: str) -> str:
    if flag_value is not None:
        return flag_value
    if app.assume_yes:
        return default
    return click.prompt(question, default=default, show_default=True)


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
        raise PerceusError("ssh-keygen is missing: install openssh-client", "perceus init") from exc
    except subprocess.CalledProcessError as exc:
        raise PerceusError(f"ssh-keygen failed: {exc.stderr.decode().strip()}", str(key)) from exc
    return True


def _root_ssh_key(app: App) -> None:
    """Root's passphraseless key, authorised for itself (guide 5.6.1), so ssh to nodes works."""
    ssh = Path(os.environ.get("HOME") or "/root") / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ssh / "id_ed25519"
    if not any((ssh / name).exists() for name in ("id_ed25519", "id_rsa", "id_ecdsa")):
        _keygen(key, "ed25519", "perceus root key")
        app.info(f"Created root's SSH key {key}")
    for name in ("id_ed25519", "id_rsa", "id_ecdsa"):
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


def _link(link: Path, target: Path) -> None:
    """The guide's convenience links in /etc/perceus (vnfs, nodescripts) into the state tree."""
    if link.is_symlink() or link.exists():
        return
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


@click.command(cls=PerceusCommand)
@click.option("--master-device", help="Network device facing the nodes (perceus.conf).")
@click.option("--transfer-master", help="Address nodes reach the VNFS server on (perceus.conf).")
@click.option("--node-name", help="Name template of new nodes, e.g. n#### (defaults.conf).")
@click.option("--group-name", help="Group of new nodes (defaults.conf).")
@click.option("--first-node", help="Number of the first node (defaults.conf).")
@click.option("--force", is_flag=True, help="Rewrite existing configuration files.")
@pass_app
def init(app: App, master_device, transfer_master, node_name, group_name, first_node, force) -> None:
    """First-time set-up: configuration, database, SSH keys. Prompts unless given flags or -y."""
    paths = app.paths
    files = []  # (path, text): asked for and checked before anything is written
    if force or not paths.perceus_conf.exists():
        devices = [d for d in netinfo.interfaces() if d != "lo"] or ["eth1"]
        device = _ask(app, master_device, "Network device facing the nodes", devices[0])
        master = _ask(
            app, transfer_master, "Address of the VNFS transfer master", netinfo.ipv4_address(device) or ""
        )
        values = {"master network device": device, "vnfs transfer master": master}
        files.append((paths.perceus_conf, PERCEUS_KEYS, render(PERCEUS_KEYS, values)))
    if force or not paths.defaults_conf.exists():
        values = {
            "Node Name": _ask(app, node_name, "Name of new nodes ('#' = digit)", "n####"),
            "Group Name": _ask(app, group_name, "Group of new nodes", "cluster"),
            "First Node": _ask(app, first_node, "Number of the first node", "0"),
        }
        files.append((paths.defaults_conf, DEFAULTS_KEYS, render(DEFAULTS_KEYS, values)))
    for path, keys, text in files:
        parse(text, path, keys, app.warn)  # what we write must read back: a bad answer stops here

    paths.sysconfdir.mkdir(parents=True, exist_ok=True)
    for sub in STATE_DIRS:
        paths.statedir.joinpath(sub).mkdir(parents=True, exist_ok=True)
    for path, _, text in files:
        atomic_write(path, text)
        app.info(f"Wrote {path}")

    settings = Settings.load(paths, warn=app.warn)
    db = open_database(settings)
    app.info(f"Node database ready: {paths.database_file} (schema {db.schema_version})")
    db.close()

    for kind in HOST_KEY_TYPES:
        key = paths.ssh_dir / f"ssh_host_{kind}_key"
        if _keygen(key, kind, "perceus capsule host key"):
            app.info(f"Created SSH host key {key}")
    _root_ssh_key(app)
    for name in ModuleStore(paths).install_builtins():
        app.info(f"Installed module '{name}' (activate it with: perceus module activate {name})")
    _link(paths.sysconfdir / "vnfs", paths.vnfs_dir)
    _link(paths.sysconfdir / "nodescripts", paths.nodescripts_dir)
    app.info("Perceus is initialised.")
