"""The node database: the interface every backend implements (each test runs against every
backend, ``conftest.DATABASE_BACKENDS``), then SQLite's own schema and migrations."""

import inspect
import sqlite3
from pathlib import Path

import pytest

from perceus.server.config import Settings
from perceus.server.db import Database, DatabaseBusy, Node, open_database
from perceus.server.db import sqlite as sqlite_backend
from perceus.server.db.sqlite import SCHEMA_VERSION, SQLiteDatabase
from perceus.server.errors import PerceusError
from perceus.server.paths import Paths
from perceus.server.perceusd import checkins
from perceus.server.registry import NewNode, add_nodes


def add(db: Database, settings: Settings, *macs: str) -> list[Node]:
    return add_nodes(db, settings, [NewNode(mac) for mac in macs])


# ------------------------------------------------------------------------------ the interface


def interface_members() -> list[str]:
    return [name for name in vars(Database) if not name.startswith("_")]


def test_sqlite_implements_every_operation_of_the_interface() -> None:
    members = interface_members()
    assert {"transaction", "nodes", "insert_node", "record_checkin", "location"} <= set(members)
    for name in members:
        declared, implemented = vars(Database)[name], getattr(SQLiteDatabase, name, None)
        assert implemented is not None, name
        if isinstance(declared, property):
            assert isinstance(implemented, property), name
            continue
        wanted = list(inspect.signature(declared).parameters.values())
        have = list(inspect.signature(implemented).parameters.values())
        assert have == wanted, (name, have, wanted)


def test_every_backend_is_a_database(database: Database) -> None:
    assert isinstance(database, Database)
    assert database.schema_version >= 1 and database.location


def test_reopening_keeps_data(database_settings: Settings, database: Database) -> None:
    add(database, database_settings, "00:00:00:00:00:01")
    again = open_database(database_settings)
    assert [n.hostname for n in again.nodes()] == ["n0000"]
    again.close()


def test_defaults_applied_to_new_nodes(database_settings: Settings, database: Database) -> None:
    paths = database_settings.paths
    paths.defaults_conf.write_text(
        "Node Name = c##\nGroup Name = compute\nVnfs Name = debian-12\n"
        "Enabled = 0\nDebug = 2\nFirst Node = 1\n"
    )
    settings = Settings.load(paths)
    (node,) = add(database, settings, "00:00:00:00:00:01")
    assert (node.hostname, node.group, node.vnfs, node.enabled, node.debug) == (
        "c01",
        "compute",
        "debian-12",
        0,
        2,
    )
    assert node.created == node.updated and node.lastcontact is None


def test_failed_transaction_changes_nothing(database_settings: Settings, database: Database) -> None:
    db = database
    add(db, database_settings, "00:00:00:00:00:01")
    with pytest.raises(PerceusError, match="already exists as node 'n0000'"):
        add(db, database_settings, "00:00:00:00:00:02", "00:00:00:00:00:03", "00:00:00:00:00:01")
    assert [n.nodeid for n in db.nodes()] == ["00:00:00:00:00:01"]
    with pytest.raises(RuntimeError), db.transaction():
        db.set_field(["00:00:00:00:00:01"], "desc", "half written")
        raise RuntimeError("killed")
    assert db.node("00:00:00:00:00:01").desc == ""


def test_group_level_values_apply_to_members(database_settings: Settings, database: Database) -> None:
    db = database
    a, b = add(db, database_settings, "00:00:00:00:00:01", "00:00:00:00:00:02")
    with db.transaction():
        db.set_group_value("cluster", "vnfs", "base-1")
        db.set_group_value("cluster", "desc", "compute rack")
        db.set_field([b.nodeid], "vnfs", "special-1")
    assert db.node(a.nodeid).vnfs == "base-1" and db.node(a.nodeid).desc == "compute rack"
    assert db.node(b.nodeid).vnfs == "special-1"  # a node's own value wins
    (group,) = db.groups()
    assert (group.name, group.vnfs, group.desc, group.nodes) == ("cluster", "base-1", "compute rack", 2)
    with db.transaction():
        db.set_field([a.nodeid, b.nodeid], "group", "io")
    assert [g.name for g in db.groups()] == ["io"]  # an emptied group is gone, values and all
    assert db.node(a.nodeid).vnfs == ""


def test_replace_moves_the_record_to_the_new_mac(database_settings: Settings, database: Database) -> None:
    db = database
    old, new = add(db, database_settings, "00:00:00:00:00:01", "00:00:00:00:00:02")
    with db.transaction():
        db.set_field([old.nodeid], "desc", "burnt")
        db.replace_node(old.nodeid, new.nodeid)
    (node,) = db.nodes()
    assert (node.nodeid, node.hostname, node.desc) == (new.nodeid, "n0000", "burnt")


def test_rename_group_carries_its_values(database_settings: Settings, database: Database) -> None:
    db = database
    (node,) = add(db, database_settings, "00:00:00:00:00:01")
    with db.transaction():
        db.set_group_value("cluster", "desc", "rack 1")
        db.rename_group("cluster", "hpc")
        db.set_field([node.nodeid], "group", "hpc")
    (group,) = db.groups()
    assert (group.name, group.desc, group.nodes) == ("hpc", "rack 1", 1)
    with pytest.raises(ValueError), db.transaction():
        db.set_group_value("hpc", "enabled", "1")  # not a group-level field


def test_delete_and_checkin(database_settings: Settings, database: Database) -> None:
    db = database
    a, b = add(db, database_settings, "00:00:00:00:00:01", "00:00:00:00:00:02")
    with db.transaction():
        db.record_checkin(a.nodeid, "ready", "10.0.0.5", 1_700_000_000)
    node = db.node(a.nodeid)
    assert (node.status, node.ipaddr, node.lastcontact, node.updated) == (
        "ready",
        "10.0.0.5",
        1_700_000_000,
        a.updated,
    )
    with db.transaction():
        assert db.delete_nodes([a.nodeid, "00:00:00:00:00:99"]) == 1
    assert db.node(a.nodeid) is None and db.hostnames() == ["n0001"]
    with pytest.raises(PerceusError), db.transaction():
        db.insert_node(b)  # its MAC is taken: the interface's error, not the backend's


# ------------------------------------------------------------------------------ SQLite itself


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(Paths(tmp_path / "etc", tmp_path / "var"))


@pytest.fixture
def db(settings: Settings) -> SQLiteDatabase:
    database = open_database(settings)
    yield database
    database.close()


def test_new_database_is_wal_and_current(db: SQLiteDatabase) -> None:
    with sqlite3.connect(db.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"nodes", "groups"} <= tables
    assert db.path.name == "perceus.db" and db.path.parent.name == "database"


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "perceus.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(PerceusError, match="newer than this perceus understands"):
        SQLiteDatabase(path)


def test_a_held_write_lock_is_busy(settings: Settings, db: SQLiteDatabase, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 50)
    other = SQLiteDatabase(db.path)
    try:
        with db.transaction(), pytest.raises(DatabaseBusy, match="locked"), other.transaction():
            pass
        with other.transaction():  # the lock is free again
            pass
    finally:
        other.close()


def test_the_checkin_writer_retries_only_a_busy_database(monkeypatch) -> None:
    monkeypatch.setattr(checkins.time, "sleep", lambda seconds: None)
    attempts = []

    def busy_twice() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise DatabaseBusy("cannot lock the node database: database is locked", "perceus.db")
        return "done"

    assert checkins.CheckinWriter._retry(busy_twice) == "done" and len(attempts) == 3
    attempts.clear()

    def refused() -> None:
        attempts.append(1)
        raise PerceusError("NodeID already exists")

    with pytest.raises(PerceusError, match="already exists"):
        checkins.CheckinWriter._retry(refused)
    assert len(attempts) == 1
