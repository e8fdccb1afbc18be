"""NFS exports for hybridization (``vnfs transfer method = nfs``).

Nodes mount ``<master>:<statedir>/vnfs`` read-only to reach the hybridized parts of their
VNFS; only that directory is exported, never the whole state directory (it holds the
node database and the SSH host keys). ``no_root_squash`` because a node's root must read
root-only files of its VNFS.
"""

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from perceus.server.netservices.files import install_text

OPTIONS = "ro,no_root_squash,no_subtree_check"
EXPORTFS_TIMEOUT = 60


@dataclass(frozen=True)
class Export:
    directory: Path
    network: ipaddress.IPv4Network


def render(export: Export) -> str:
    return (
        "# Written by 'perceus configure nfs': the VNFS directory, read-only, for the nodes' subnet.\n"
        f"{export.directory} {export.network}({OPTIONS})\n"
    )


def write(path: Path, export: Export) -> None:
    install_text(path, render(export))


@dataclass(frozen=True)
class Reload:
    """What running ``exportfs -ra`` came to: not installed, or its status and words."""

    installed: bool
    status: int = 0
    output: str = ""


def reload_exports() -> Reload:
    """``exportfs -ra`` if nfs-kernel-server's tools are installed (on PATH: it needs root)."""
    exportfs = shutil.which("exportfs")
    if exportfs is None:
        return Reload(installed=False)
    try:
        proc = subprocess.run(
            [exportfs, "-ra"], capture_output=True, text=True, timeout=EXPORTFS_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Reload(installed=True, status=1, output=str(exc))
    return Reload(installed=True, status=proc.returncode, output=(proc.stderr + proc.stdout).strip())
