"""Where perceus keeps its configuration and state; both honour environment overrides.

Tests and non-root users point ``PERCEUS_SYSCONFDIR`` and ``PERCEUS_STATEDIR`` at
private directories so every command and daemon runs isolated.
"""

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SYSCONFDIR = "/etc/perceus"
DEFAULT_STATEDIR = "/var/lib/perceus"


@dataclass(frozen=True)
class Paths:
    """The directories of one perceus instance."""

    sysconfdir: Path
    statedir: Path

    @classmethod
    def from_environment(cls) -> "Paths":
        return cls(
            sysconfdir=Path(os.environ.get("PERCEUS_SYSCONFDIR") or DEFAULT_SYSCONFDIR),
            statedir=Path(os.environ.get("PERCEUS_STATEDIR") or DEFAULT_STATEDIR),
        )

    @property
    def perceus_conf(self) -> Path:
        return self.sysconfdir / "perceus.conf"

    @property
    def defaults_conf(self) -> Path:
        return self.sysconfdir / "defaults.conf"

    @property
    def database_dir(self) -> Path:
        return self.statedir / "database"

    @property
    def database_file(self) -> Path:
        return self.database_dir / "perceus.db"

    @property
    def vnfs_dir(self) -> Path:
        return self.statedir / "vnfs"

    @property
    def modules_dir(self) -> Path:
        return self.statedir / "modules"

    @property
    def nodescripts_dir(self) -> Path:
        return self.statedir / "nodescripts"

    @property
    def ssh_dir(self) -> Path:
        """SSH host keys made at init and handed to VNFS capsules as they are imported."""
        return self.statedir / "ssh"

    @property
    def stage1_dir(self) -> Path:
        """What nodes boot: ``perceus stage1 build`` writes the initramfs and its kernel here."""
        return self.statedir / "stage1"

    @property
    def stage1_initramfs(self) -> Path:
        return self.stage1_dir / "initramfs.img"

    @property
    def stage1_kernel(self) -> Path:
        """The kernel whose modules the stage-one initramfs carries (they must match)."""
        return self.stage1_dir / "vmlinuz"

    @property
    def tftp_dir(self) -> Path:
        """The TFTP root dnsmasq serves: pxelinux, its configs, the kernel and stage one."""
        return self.statedir / "tftp"

    @property
    def dnsmasq_conf(self) -> Path:
        return self.sysconfdir / "dnsmasq.conf"
