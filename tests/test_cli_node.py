"""``perceus node``: output in the original's columns, selection, confirmation, import."""

import json
import time

from tests.support.instance import Instance
from tests.support.macs import macs


def test_add_list_and_name_allocation(perceus: Instance) -> None:
    assert perceus.ok("node", "add", "00:11:22:33:44:55").out == "Node 'n0000' has been added to Perceus\n"
    perceus.ok("node", "add", "aa-bb-cc-dd-ee-01", "login1")
    perceus.ok("node", "add", "aabbccddee02")
    assert perceus.ok("node", "list").lines == ["login1", "n0000", "n0001"]
    assert perceus.sql("SELECT nodeid FROM nodes WHERE hostname = 'n0001'") == [("AA:BB:CC:DD:EE:02",)]
    assert perceus.ok("-q", "node", "add", "00:00:00:00:00:09").out == ""


def test_deleted_names_are_reused(perceus: Instance) -> None:
    perceus.ok("node", "import", input=macs(3))
    perceus.ok("-y", "node", "delete", "n0001")
    perceus.ok("node", "add", "00:11:22:33:44:55")
    assert perceus.sql("SELECT hostname FROM nodes WHERE nodeid = '00:11:22:33:44:55'") == [("n0001",)]


def test_summary_columns(perceus: Instance) -> None:
    perceus.ok("node", "add", "00:00:00:00:00:01")
    perceus.ok("node", "set", "enabled", "0", "n0000")
    perceus.ok("node", "set", "vnfs", "debian-12-1.stateless.x86_64", "n0000")
    lines = perceus.ok("node", "summary").lines
    assert lines[0].split() == ["HostName", "GroupName", "Enabled", "Vnfs"]
    assert lines[1] == "-" * 79
    assert lines[2] == f"{'n0000':<20} {'cluster':<16} {'no':<9} debian-12-1.stateless.x86_64"
    assert perceus.ok("-q", "node", "summary").lines == lines[2:]


def test_status_marks_timed_out_nodes(perceus: Instance) -> None:
    perceus.ok("node", "import", input=macs(3))
    now = int(time.time())
    perceus.sql(
        "UPDATE nodes SET status='ready', ipaddr='10.0.0.5', lastcontact=? WHERE hostname='n0000'", now - 65
    )
    perceus.sql(
        "UPDATE nodes SET status='init', ipaddr='10.0.0.6', lastcontact=? WHERE hostname='n0001'", now - 3725
    )
    lines = perceus.ok("node", "status").lines
    assert lines[0].split() == ["HostName", "Status", "IP", "Address", "Last", "Contact"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["n0000"].startswith(f"{'n0000':<20} {'ready':<14} {'10.0.0.5':<22} 00:01:")
    assert "timed out" not in rows["n0000"]
    contact, *flag = rows["n0001"].split()[3:]
    hours, minutes, seconds = map(int, contact.split(":"))
    assert 3725 <= hours * 3600 + minutes * 60 + seconds < 3785  # HH:MM:SS elapsed, a slow run allowed for
    assert flag == ["timed", "out"]  # past node timeout = 600
    assert rows["n0002"].split()[1:] == ["(undefined)", "(undefined)", "(undefined)"]
    timed_out = [line for line in lines if "timed out" in line]  # the guide's grep
    assert [line.split()[0] for line in timed_out] == ["n0001"]
    data = json.loads(perceus.ok("node", "status", "--json", "n0001").out)
    assert data[0]["timed_out"] is True and data[0]["ipaddr"] == "10.0.0.6"


def test_node_timeout_comes_from_perceus_conf(perceus: Instance) -> None:
    perceus.ok("node", "add", "00:00:00:00:00:01")
    perceus.sql("UPDATE nodes SET lastcontact=?", int(time.time()) - 100)
    conf = perceus.sysconfdir / "perceus.conf"
    conf.write_text(conf.read_text() + "node timeout = 30\n")
    assert "timed out" in perceus.ok("node", "status").out


def test_show_prints_host_field_lines(perceus: Instance) -> None:
    perceus.ok("node", "add", "00:00:00:00:00:01")
    perceus.ok("node", "set", "desc", "hello world", "n0000")
    lines = perceus.ok("node", "show", "n0000").lines
    assert lines[0] == "n0000: nodeid=00:00:00:00:00:01"
    fields = [line.split(":", 1)[1].split("=", 1)[0].strip() for line in lines]
    assert fields == [
        "nodeid",
        "created",
        "debug",
        "desc",
        "enabled",
        "group",
        "hostname",
        "ipaddr",
        "lastcontact",
        "status",
        "updated",
        "vnfs",
    ]
    assert "n0000: desc=hello world" in lines
    assert "n0000: group=cluster" in lines


def test_json_listings(perceus: Instance) -> None:
    perceus.ok("node", "import", input=macs(2))
    assert json.loads(perceus.ok("node", "list", "--json").out) == [
        {"hostname": "n0000", "nodeid": "02:00:00:00:00:00"},
        {"hostname": "n0001", "nodeid": "02:00:00:00:00:01"},
    ]
    shown = json.loads(perceus.ok("node", "show", "--json", "n0001").out)
    assert shown[0]["nodeid"] == "02:00:00:00:00:01" and shown[0]["enabled"] == 1
    summary = json.loads(perceus.ok("node", "summary", "--json").out)
    assert summary[1] == {
        "hostname": "n0001",
        "nodeid": "02:00:00:00:00:01",
        "group": "cluster",
        "enabled": True,
        "vnfs": "",
    }


def test_nodeid_option_takes_macs(perceus: Instance) -> None:
    perceus.ok("node", "import", input=macs(2))
    perceus.ok("node", "set", "hostname", "dup", "n000[0-1]")  # the guide's warning case
    perceus.ok("-i", "node", "set", "hostname", "newname", "02-00-00-00-00-01")
    assert perceus.ok("-i", "node", "list", "02:00:00:00:00:*").lines == ["dup", "newname"]
    shown = perceus.ok("--nodeid", "node", "show", "02:00:00:00:00:01").lines
    assert shown[0] == "newname: nodeid=02:00:00:00:00:01"


def test_duplicate_hostnames_warn(perceus: Instance) -> None:
    perceus.ok("node", "import", input=macs(3))
    result = perceus.ok("node", "set", "hostname", "duplicatename", "n00*")
    assert "3 nodes now share the name 'duplicatename'" in result.err
    perceus.error("node", "replace", "duplicatename", "n0000", status=2, contains="names 3 nodes")


def test_confirmation_refused_changes_nothing(perceus: Instance) -> None:
    perceus.ok("node", "import", input=macs(3))
    perceus.error("node", "delete", "n0001", input="no\n", status=1, contains="not confirmed")
    perceus.error("node", "delete", "n0001", input="", status=1, contains="not confirmed")  # EOF
    result = perceus.ok("node", "delete", "n0001", input="maybe\nyes\n")
    assert result.err.count("Please Confirm [yes/no]>") == 2
    assert perceus.ok("node", "list").lines == ["n0000", "n0002"]


def test_import_forms(perceus: Instance, tmp_path) -> None:
    dhcpd = tmp_path / "dhcpd.conf"
    dhcpd.write_text(
        "host c1 { hardware ethernet 00:00:00:00:01:01; }\nhost c2 { hardware ethernet 00:00:00:00:01:02; }\n"
    )
    ethers = tmp_path / "ethers"
    ethers.write_text("00:00:00:00:02:01 e1\n00:00:00:00:02:02 10.1.1.1\n")
    csv = tmp_path / "nodes.csv"
    csv.write_text("mac,name\n00:00:00:00:03:01,v1\n")
    assert "'2' nodes imported" in perceus.ok("node", "import", "--dhcpd", str(dhcpd)).out
    perceus.ok("node", "import", "--ethers", str(ethers))
    perceus.ok("node", "import", "--csv", str(csv))
    perceus.ok("node", "import", input="00:00:00:00:04:01\n00:00:00:00:04:02\n")
    assert perceus.ok("node", "list").lines == ["c1", "c2", "e1", "n0000", "n0001", "n0002", "v1"]
    # the ethers line with an address got the first free name; stdin MACs followed in order
    assert perceus.sql("SELECT hostname FROM nodes WHERE nodeid='00:00:00:00:04:02'") == [("n0002",)]
    again = perceus.ok("node", "import", "--dhcpd", str(dhcpd))  # re-running skips known MACs
    assert "already exists as node 'c1', skipped" in again.err and "'0' nodes imported" in again.out


def test_import_is_all_or_nothing(perceus: Instance) -> None:
    perceus.error(
        "node",
        "import",
        input="00:00:00:00:00:01\n00:00:00:00:00:02\nbogus\n",
        status=1,
        contains="not a MAC address: 'bogus' (<stdin>:3)",
    )
    perceus.error(
        "node",
        "import",
        input="00:00:00:00:00:01\n00:00:00:00:00:01\n",
        status=1,
        contains="already exists as node 'n0000' (<stdin>:2)",
    )
    assert perceus.ok("node", "list").out == ""
