"""The SQLite node database: schema, migrations, transactions, group-level values."""

import sqlite3
from pathlib import Path

import pytest

from perceus.server.config import Settings
from perceus.server.db import Node, open_database
from perceus.server.db.sqlite import SCHEMA_VERSION, SQLiteDatabase
from perceus.server.errors import PerceusError
from perceus.server.paths import Paths
from perceus.server.registry import NewNode, add_nodes


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(Paths(tmp_path / "etc", tmp_path / "var"))


@pytest.fixture
def db(settings: Settings) -> SQLiteDatabase:
    database = open_database(settings)
    yield database
    database.close()


def add(db: SQLiteDatabase, settings: Settings, *macs: str) -> list[Node]:
    return add_nodes(db, settings, [NewNode(mac) for mac in macs])


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


def test_reopening_keeps_data(settings: Settings, db: SQLiteDatabase) -> None:
    add(db, settings, "00:00:00:00:00:01")
    again = open_database(settings)
    assert [n.hostname for n in again.nodes()] == ["n0000"]
    again.close()


def test_defaults_applied_to_new_nodes(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "defaults.conf").write_text(
        "Node Name = c##\nGroup Name = compute\nVnfs Name = debian-12\n"
        "Enabled = 0\nDebug = 2\nFirst Node = 1\n"
    )
    settings = Settings.load(Paths(tmp_path / "etc", tmp_path / "var"))
    db = open_database(settings)
    (node,) = add(db, settings, "00:00:00:00:00:01")
    assert (node.hostname, node.group, node.vnfs, node.enabled, node.debug) == (
        "c01",
        "compute",
        "debian-12",
        0,
        2,
    )
    assert node.created == node.updated and node.lastcontact is None


def test_failed_transaction_changes_nothing(settings: Settings, db: SQLiteDatabase) -> None:
    add(db, settings, "00:00:00:00:00:01")
    with pytest.raises(PerceusError, match="already exists as node 'n0000'"):
        add(db, settings, "00:00:00:00:00:02", "00:00:00:00:00:03", "00:00:00:00:00:01")
    assert [n.nodeid for n in db.nodes()] == ["00:00:00:00:00:01"]
    with pytest.raises(RuntimeError), db.transaction():
        db.set_field(["00:00:00:00:00:01"], "desc", "half written")
        raise RuntimeError("killed")
    assert db.node("00:00:00:00:00:01").desc == ""


def test_group_level_values_apply_to_members(settings: Settings, db: SQLiteDatabase) -> None:
    a, b = add(db, settings, "00:00:00:00:00:01", "00:00:00:00:00:02")
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


def test_replace_moves_the_record_to_the_new_mac(settings: Settings, db: SQLiteDatabase) -> None:
    old, new = add(db, settings, "00:00:00:00:00:01", "00:00:00:00:00:02")
    with db.transaction():
        db.set_field([old.nodeid], "desc", "burnt")
        db.replace_node(old.nodeid, new.nodeid)
    (node,) = db.nodes()
    assert (node.nodeid, node.hostname, node.desc) == (new.nodeid, "n0000", "burnt")
