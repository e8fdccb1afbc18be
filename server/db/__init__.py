"""The node database behind an interface (``interface.Database``), so a PostgreSQL backend can
sit beside SQLite: the services and perceusd use only the interface."""

from perceus.server.config import Settings
from perceus.server.db.interface import Database, DatabaseBusy
from perceus.server.db.model import Group, Node
from perceus.server.db.sqlite import SQLiteDatabase
from perceus.server.errors import PerceusError

__all__ = ["Database", "DatabaseBusy", "Group", "Node", "open_database"]


def open_database(settings: Settings) -> Database:
    """Open the backend ``database type`` in perceus.conf names."""
    kind = settings.perceus.get("database type")
    if kind in ("sqlite", "btree", "hash"):  # the original's file backends map onto SQLite
        return SQLiteDatabase(settings.paths.database_file)
    raise PerceusError(
        f"database type {kind!r} is not available in this release (use sqlite)",
        settings.perceus.where("database type"),
    )
