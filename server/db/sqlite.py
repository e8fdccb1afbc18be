"""The SQLite backend: one file in WAL mode, every change in one IMMEDIATE transaction.

``BEGIN IMMEDIATE`` takes the write lock before anything is read, so reading the
taken names and inserting the new node cannot interleave between processes: that is
what makes name allocation atomic across concurrent ``perceus node add``. The contract
of each operation is :class:`perceus.server.db.interface.Database`'s.
"""

import functools
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

from perceus.server.db.interface import DatabaseBusy
from perceus.server.db.model import GROUP_LEVEL_FIELDS, Group, Node
from perceus.server.errors import PerceusError

BUSY_TIMEOUT_MS = 120_000

# Schema migrations: index i takes the database from user_version i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE nodes (
        nodeid      TEXT PRIMARY KEY,
        hostname    TEXT NOT NULL,
        groupname   TEXT NOT NULL DEFAULT '',
        vnfs        TEXT NOT NULL DEFAULT '',
        enabled     INTEGER NOT NULL DEFAULT 1,
        debug       INTEGER NOT NULL DEFAULT 0,
        "desc"      TEXT NOT NULL DEFAULT '',
        status      TEXT NOT NULL DEFAULT '',
        ipaddr      TEXT NOT NULL DEFAULT '',
        lastcontact INTEGER,
        created     INTEGER NOT NULL,
        updated     INTEGER NOT NULL
    );
    CREATE INDEX nodes_hostname ON nodes (hostname);
    CREATE INDEX nodes_groupname ON nodes (groupname);
    CREATE TABLE groups (
        name   TEXT PRIMARY KEY,
        "desc" TEXT NOT NULL DEFAULT '',
        vnfs   TEXT NOT NULL DEFAULT ''
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_NODE_SELECT = """
    SELECT n.nodeid, n.hostname, n.groupname,
           CASE WHEN n.vnfs != '' THEN n.vnfs ELSE COALESCE(g.vnfs, '') END,
           n.enabled, n.debug,
           CASE WHEN n."desc" != '' THEN n."desc" ELSE COALESCE(g."desc", '') END,
           n.status, n.ipaddr, n.lastcontact, n.created, n.updated
    FROM nodes n LEFT JOIN groups g ON g.name = n.groupname
"""

# Field names as the CLI spells them -> columns.
_COLUMNS = {
    "hostname": "hostname",
    "group": "groupname",
    "vnfs": "vnfs",
    "enabled": "enabled",
    "debug": "debug",
    "desc": '"desc"',
    "status": "status",
    "ipaddr": "ipaddr",
    "lastcontact": "lastcontact",
}


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _failure(doing: str, exc: sqlite3.Error, path: Path) -> PerceusError:
    """SQLite's error as the interface's: busy (retry) or not."""
    kind = DatabaseBusy if isinstance(exc, sqlite3.OperationalError) and _busy(exc) else PerceusError
    return kind(f"{doing}: {exc}", str(path))


def _busy(exc: sqlite3.Error) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _reported(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """SQLite's exceptions from ``method`` leave as the interface's PerceusError kinds."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            raise _failure("node database", exc, args[0].path) from exc

    return wrapper


class SQLiteDatabase:
    """Node database in one SQLite file (implements ``db.interface.Database``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise _failure("cannot open the node database", exc, self.path) from exc

    @property
    def location(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self._conn.close()

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic change: committed when the block ends, rolled back if it raises."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _failure("cannot lock the node database", exc, self.path) from exc
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _failure("cannot commit to the node database", exc, self.path) from exc

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise PerceusError(
                f"database schema {version} is newer than this perceus understands ({SCHEMA_VERSION})",
                str(self.path),
            )
        if self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise PerceusError("cannot switch the node database to WAL mode", str(self.path))
        with self.transaction():
            conn = self._conn
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    @_reported
    def schema_version(self) -> int:
        return self._conn.execute("PRAGMA user_version").fetchone()[0]

    # -- reading ------------------------------------------------------------------------

    @_reported
    def nodes(self) -> list[Node]:
        return [Node(*row) for row in self._conn.execute(_NODE_SELECT)]

    @_reported
    def node(self, nodeid: str) -> Node | None:
        row = self._conn.execute(_NODE_SELECT + " WHERE n.nodeid = ?", (nodeid,)).fetchone()
        return Node(*row) if row else None

    @_reported
    def hostnames(self) -> list[str]:
        return [row[0] for row in self._conn.execute("SELECT hostname FROM nodes")]

    @_reported
    def groups(self) -> list[Group]:
        rows = self._conn.execute(
            """SELECT n.groupname, COALESCE(g."desc", ''), COALESCE(g.vnfs, ''), COUNT(*)
               FROM nodes n LEFT JOIN groups g ON g.name = n.groupname
               GROUP BY n.groupname ORDER BY n.groupname"""
        )
        return [Group(*row) for row in rows]

    # -- writing (call inside ``with db.transaction():``) ----------------------------------------

    @_reported
    def insert_node(self, node: Node) -> None:
        self._conn.execute(
            """INSERT INTO nodes (nodeid, hostname, groupname, vnfs, enabled, debug, "desc",
                                  status, ipaddr, lastcontact, created, updated)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                node.nodeid,
                node.hostname,
                node.group,
                node.vnfs,
                node.enabled,
                node.debug,
                node.desc,
                node.status,
                node.ipaddr,
                node.lastcontact,
                node.created,
                node.updated,
            ),
        )

    @_reported
    def set_field(self, nodeids: Iterable[str], field: str, value: object) -> int:
        column = _COLUMNS[field]
        now = int(time.time())
        changed = 0
        for nodeid in nodeids:
            changed += self._conn.execute(
                f"UPDATE nodes SET {column} = ?, updated = ? WHERE nodeid = ?", (value, now, nodeid)
            ).rowcount
        self._prune_groups()
        return changed

    @_reported
    def set_group_value(self, group: str, field: str, value: str) -> None:
        """Record a group-level desc or vnfs, which nodes without their own inherit."""
        if field not in GROUP_LEVEL_FIELDS:
            raise ValueError(field)
        column = '"desc"' if field == "desc" else "vnfs"
        self._conn.execute("INSERT OR IGNORE INTO groups (name) VALUES (?)", (group,))
        self._conn.execute(f"UPDATE groups SET {column} = ? WHERE name = ?", (value, group))

    @_reported
    def rename_group(self, old: str, new: str) -> None:
        """Carry group-level values over when ``group set group NEW OLD`` moves a whole group."""
        if old == new:
            return
        self._conn.execute("INSERT OR IGNORE INTO groups (name) VALUES (?)", (new,))
        for column in ('"desc"', "vnfs"):
            self._conn.execute(
                f"""UPDATE groups SET {column} = (SELECT {column} FROM groups WHERE name = ?)
                    WHERE name = ? AND {column} = ''""",
                (old, new),
            )

    @_reported
    def delete_nodes(self, nodeids: Iterable[str]) -> int:
        deleted = sum(
            self._conn.execute("DELETE FROM nodes WHERE nodeid = ?", (n,)).rowcount for n in nodeids
        )
        self._prune_groups()
        return deleted

    @_reported
    def replace_node(self, old: str, new: str) -> None:
        """NEW's MAC takes over OLD's whole record; NEW's own record and OLD's MAC go."""
        now = int(time.time())
        self._conn.execute("DELETE FROM nodes WHERE nodeid = ?", (new,))
        self._conn.execute("UPDATE nodes SET nodeid = ?, updated = ? WHERE nodeid = ?", (new, now, old))
        self._prune_groups()

    @_reported
    def record_checkin(self, nodeid: str, status: str, ipaddr: str, when: int) -> None:
        self._conn.execute(
            "UPDATE nodes SET status = ?, ipaddr = ?, lastcontact = ? WHERE nodeid = ?",
            (status, ipaddr, when, nodeid),
        )

    def _prune_groups(self) -> None:
        """Groups exist while nodes are in them: drop the values of emptied groups."""
        self._conn.execute("DELETE FROM groups WHERE name NOT IN (SELECT DISTINCT groupname FROM nodes)")
