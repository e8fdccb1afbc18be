"""The user guide's chapter 5.2 examples, run as written against a throwaway instance."""

from tests.support.instance import Instance
from tests.support.macs import macs


def test_set_vnfs_on_ranges_and_globs(perceus: Instance) -> None:
    """5.2.1: perceus node set vnfs [VNFS NAME] n00[00-05,06,20-40] io*"""
    perceus.ok("node", "import", input=macs(50))
    perceus.ok("node", "add", "02:00:00:01:00:01", "io1")
    perceus.ok("node", "add", "02:00:00:01:00:02", "io2")
    result = perceus.ok("node", "set", "vnfs", "centos-9-1.stateless.x86_64", "n00[00-05,06,20-40]", "io*")
    assert "'30' nodes set vnfs='centos-9-1.stateless.x86_64'" in result.out
    with_vnfs = {h for h, v in perceus.sql("SELECT hostname, vnfs FROM nodes") if v}
    expected = {f"n{i:04d}" for i in list(range(0, 7)) + list(range(20, 41))} | {"io1", "io2"}
    assert with_vnfs == expected


def test_delete_a_range(perceus: Instance) -> None:
    """5.2.2: perceus node delete n000[0-2] (answering the confirmation)."""
    perceus.ok("node", "import", input=macs(5))
    result = perceus.ok("node", "delete", "n000[0-2]", input="yes\n")
    assert "Are you sure you wish to delete 3 nodes from Perceus?" in result.err
    for name in ("n0000", "n0001", "n0002"):
        assert name in result.err  # the affected nodes are listed before the question
    assert "'3' nodes have been deleted" in result.out
    assert perceus.ok("node", "list").lines == ["n0003", "n0004"]


def test_add_then_replace(perceus: Instance) -> None:
    """5.2.3: add a node, describe both, then replace n0099 with the new n1024."""
    perceus.ok("node", "import", input=macs(1024))
    assert "Node 'n1024' has been added" in perceus.ok("node", "add", "00:11:22:33:44:55").out
    perceus.ok("node", "set", "desc", "New node is a hot spare", "n1024")
    perceus.ok("node", "set", "desc", "This node just burnt up its CPU", "n0099")
    old_mac = perceus.sql("SELECT nodeid FROM nodes WHERE hostname = 'n0099'")[0][0]
    result = perceus.ok("node", "replace", "n0099", "n1024", input="y\n")
    assert "Node 'n0099' has been replaced." in result.out
    rows = perceus.sql("SELECT nodeid, \"desc\" FROM nodes WHERE hostname IN ('n0099', 'n1024')")
    assert rows == [("00:11:22:33:44:55", "This node just burnt up its CPU")]
    assert perceus.sql("SELECT COUNT(*) FROM nodes WHERE nodeid = ?", old_mac) == [(0,)]
    assert perceus.sql("SELECT COUNT(*) FROM nodes")[0][0] == 1024
