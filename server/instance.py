"""One perceus instance as the services see it: its directories, configuration and database.

Every service takes an :class:`Instance` instead of reaching for the CLI's state, so the
same workflow runs under ``perceus``, inside perceusd, or from a test in-process.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from perceus.server.config import Settings
from perceus.server.db import Database, open_database
from perceus.server.errors import PerceusError
from perceus.server.paths import Paths

__all__ = ["Instance"]


def _no_warnings(message: str) -> None:
    """The default sink for warnings and notes: a caller that wants them passes its own."""


@dataclass
class Instance:
    """Lazily opened: a command that needs only the paths never reads perceus.conf."""

    paths: Paths = field(default_factory=Paths.from_environment)
    warn: Callable[[str], None] = _no_warnings
    note: Callable[[str], None] = _no_warnings  # what -v shows: which database was opened

    @cached_property
    def settings(self) -> Settings:
        """perceus.conf and defaults.conf; an uninitialised master is an error."""
        if not self.paths.perceus_conf.exists():
            raise PerceusError("perceus is not initialised: run 'perceus init'", str(self.paths.perceus_conf))
        return Settings.load(self.paths, warn=self.warn)

    @cached_property
    def db(self) -> Database:
        database = open_database(self.settings)
        self.note(f"node database {database.location} (schema {database.schema_version})")
        return database

    def close(self) -> None:
        """Close the database if it was opened."""
        database = self.__dict__.pop("db", None)
        if database is not None:
            database.close()
