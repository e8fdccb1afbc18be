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
