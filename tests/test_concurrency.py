"""Atomic name allocation across processes, and all-or-nothing changes under SIGKILL."""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.support.instance import BIN, Instance
from tests.support.macs import macs

CONCURRENT_ADDS = 500


@pytest.mark.slow
def test_concurrent_adds_get_distinct_names(perceus: Instance) -> None:
    """500 separate ``perceus node add`` processes at once: 500 distinct names, no error."""
    addresses = macs(CONCURRENT_ADDS).split()
    procs = [
        subprocess.Popen(
            [str(BIN / "perceus"), "node", "add", mac],
            env=perceus.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mac in addresses
    ]
    failures = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0 or err:
            failures.append((proc.args[-1], proc.returncode, err))
    assert failures == []
    rows = perceus.sql("SELECT nodeid, hostname FROM nodes")
    assert sorted(mac for mac, _ in rows) == sorted(addresses)
    assert sorted(name for _, name in rows) == [f"n{i:04d}" for i in range(CONCURRENT_ADDS)]


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from perceus.server.db.sqlite import SQLiteDatabase
    from perceus.server.cli import run

    original = SQLiteDatabase.insert_node
    count = 0

    def insert_then_die(self, node):
        global count
        original(self, node)
        count += 1
        if count == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)  # killed mid-transaction

    SQLiteDatabase.insert_node = insert_then_die
    sys.exit(run(["node", "import"]))
    """
)


def test_killed_import_leaves_nothing_half_written(perceus: Instance) -> None:
    perceus.ok("node", "add", "00:11:22:33:44:55")
    before = perceus.snapshot()
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, "3000"],
        input=macs(5000),
        env=perceus.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9
    assert perceus.snapshot() == before
    assert perceus.sql("PRAGMA integrity_check") == [("ok",)]
    perceus.ok("node", "import", input=macs(5000))  # the database is usable straight after
    assert perceus.sql("SELECT COUNT(*) FROM nodes") == [(5001,)]


def test_readers_are_not_blocked_by_a_writer(perceus: Instance) -> None:
    """WAL: listing works while another process holds the write lock."""
    perceus.ok("node", "import", input=macs(3))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE'); c.execute(\"UPDATE nodes SET status='x'\")\n"
            "print('locked', flush=True); time.sleep(30)",
            str(perceus.database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert perceus.ok("node", "list").lines == ["n0000", "n0001", "n0002"]
    finally:
        holder.kill()
        holder.wait()
    assert os.path.exists(perceus.database)
