"""``perceus group``: the guide's 4.2.4 examples and group-level values."""

import json

from tests.support.instance import Instance
from tests.support.macs import macs


def grouped(perceus: Instance) -> None:
    perceus.ok("node", "import", input=macs(20))
    perceus.ok("node", "set", "group", "interactive", "n000[0-9]")
    perceus.ok("node", "set", "group", "compute", "n[0010-1023]")


def test_guide_group_examples(perceus: Instance) -> None:
    grouped(perceus)
    perceus.ok("group", "set", "desc", "Interactive and login nodes", "interactive")
    perceus.ok("group", "set", "vnfs", "caos-nsa-full-1.0-1.stateless.x86_64", "interactive")
    perceus.ok("group", "set", "vnfs", "caos-nsa-node-1.0-1.stateless.x86_64", "compute")
    assert perceus.ok("group", "list").lines == ["compute", "interactive"]
    rows = perceus.ok("-q", "group", "summary", "interactive").lines
    assert len(rows) == 10 and all(
        r.split()[1:] == ["interactive", "yes", "caos-nsa-full-1.0-1.stateless.x86_64"] for r in rows
    )
    show = perceus.ok("group", "show", "interactive").lines
    assert show[:3] == [
        "interactive: desc=Interactive and login nodes",
        "interactive: nodes=10",
        "interactive: vnfs=caos-nsa-full-1.0-1.stateless.x86_64",
    ]
    assert "n0000: desc=Interactive and login nodes" in show


def test_new_members_inherit_group_values(perceus: Instance) -> None:
    grouped(perceus)
    perceus.ok("group", "set", "vnfs", "compute-1", "compute")
    perceus.ok("node", "add", "00:11:22:33:44:55")
    perceus.ok("node", "set", "group", "compute", "n0020")
    assert perceus.ok("-q", "node", "summary", "n0020").lines[0].split()[-1] == "compute-1"


def test_nodelist_and_json(perceus: Instance) -> None:
    grouped(perceus)
    lines = perceus.ok("group", "nodelist", "inter*").lines
    assert lines[0] == "interactive:" and lines[1:] == [f"   n000{i}" for i in range(10)]
    data = json.loads(perceus.ok("group", "nodelist", "--json").out)
    assert sorted(data) == ["compute", "interactive"] and len(data["compute"]) == 10
    groups = json.loads(perceus.ok("group", "list", "--json").out)
    assert groups[0] == {"name": "compute", "desc": "", "vnfs": "", "nodes": 10}


def test_group_status_and_rename(perceus: Instance) -> None:
    grouped(perceus)
    assert len(perceus.ok("-q", "group", "status", "compute").lines) == 10
    perceus.ok("group", "set", "desc", "hpc", "compute")
    perceus.ok("group", "set", "group", "hpc", "compute")
    assert perceus.ok("group", "list").lines == ["hpc", "interactive"]
    assert perceus.ok("group", "show", "hpc").lines[0] == "hpc: desc=hpc"


def test_group_delete_confirms(perceus: Instance) -> None:
    grouped(perceus)
    result = perceus.ok("group", "delete", "interactive", input="yes\n")
    assert "Are you sure you wish to delete 10 nodes from Perceus?" in result.err
    assert "'10' nodes have been deleted" in result.out
    assert perceus.ok("group", "list").lines == ["compute"]
