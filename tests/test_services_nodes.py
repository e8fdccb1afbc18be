"""The node and group services in-process: add, import, select, set, replace, delete, and the
warnings and errors they leave for the caller to place."""

import pytest

from perceus.server.db import Node
from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.instance import Instance
from perceus.server.netservices import pxelinux
from perceus.server.netservices.files import install_text
from perceus.server.selection import NodeQuery
from perceus.server.services import groups, nodes

MACS = [f"52:54:00:00:00:{i:02X}" for i in range(6)]


def populate(instance: Instance, count: int = 4) -> None:
    nodes.import_nodes(instance, "\n".join(MACS[:count]), "<test>", "macs", lambda what, where: None)


def names(found) -> list[str]:
    return [n.hostname for n in found]


def boot_tree(instance: Instance) -> None:
    """The pxelinux default ``configure tftp`` writes: per-node files copy its stage-one entry."""
    default = pxelinux.config_dir(instance.paths.tftp_dir) / "default"
    install_text(default, pxelinux.render_default("masterip=10.0.0.1"))


def test_add_names_from_defaults_or_as_given(server_instance: Instance, warn: list) -> None:
    first = nodes.add(server_instance, "52-54-00-00-00-aa", None, warn)
    named = nodes.add(server_instance, "5254000000bb", "login1", warn)
    assert (first.nodeid, first.hostname, first.group) == ("52:54:00:00:00:AA", "n0000", "cluster")
    assert (named.nodeid, named.hostname) == ("52:54:00:00:00:BB", "login1")
    assert warn == []


def test_add_refusals_name_no_place(server_instance: Instance, warn: list) -> None:
    nodes.add(server_instance, MACS[0], None, warn)
    for mac, name, kind, words in [
        ("52:54:00", None, InvalidRequest, "not a MAC address: '52:54:00'"),
        (MACS[1], "bad/name", InvalidRequest, "hostname takes"),
        (MACS[0], None, PerceusError, "already exists as node 'n0000'"),
        (MACS[1], "n0000", PerceusError, "node name 'n0000' is already taken"),
    ]:
        with pytest.raises(kind, match=words) as caught:
            nodes.add(server_instance, mac, name, warn)
        assert caught.value.path is None  # the caller (the CLI: its command) says where
    assert names(server_instance.db.nodes()) == ["n0000"]


def test_add_warns_about_a_vnfs_not_imported(server_instance: Instance, warn: list) -> None:
    server_instance.paths.defaults_conf.write_text("Vnfs Name = debian-12\n")
    nodes.add(server_instance, MACS[0], None, warn)
    assert warn == [("VNFS 'debian-12' is not imported yet", str(server_instance.paths.vnfs_dir))]


def test_import_skips_known_macs_and_is_all_or_nothing(server_instance: Instance, warn: list) -> None:
    nodes.add(server_instance, MACS[1], None, warn)
    csv = f"mac,name\n{MACS[0]},c1\n{MACS[1]}\n{MACS[2]}\n"
    added = nodes.import_nodes(server_instance, csv, "nodes.csv", "csv", warn)
    assert names(added) == ["c1", "n0001"]
    assert warn == [(f"NodeID '{MACS[1]}' already exists as node 'n0000', skipped", "nodes.csv:3")]
    with pytest.raises(PerceusError, match="not a MAC address: 'bogus'") as caught:
        nodes.import_nodes(server_instance, f"{MACS[3]}\nbogus\n", "<stdin>", "macs", warn)
    assert caught.value.path == "<stdin>:2"
    assert len(server_instance.db.nodes()) == 3


def test_select_by_names_ranges_globs_and_macs(server_instance: Instance, warn: list) -> None:
    populate(server_instance)
    assert names(nodes.select(server_instance, NodeQuery(), warn)) == ["n0000", "n0001", "n0002", "n0003"]
    chosen = nodes.select(server_instance, NodeQuery(("n000[1-2]", "n0003", "ghost")), warn)
    assert names(chosen) == ["n0001", "n0002", "n0003"]
    assert warn == [("no node named 'ghost'", None)]
    by_mac = nodes.select(server_instance, NodeQuery((MACS[0].lower(),), by_nodeid=True), warn)
    assert names(by_mac) == ["n0000"]
    with pytest.raises(PerceusError, match="no nodes match zz") as caught:
        nodes.select(server_instance, NodeQuery(("zz",)), warn)
    assert caught.value.path is None
    with pytest.raises(InvalidRequest, match="-i/--nodeid takes MACs"):
        nodes.select(server_instance, NodeQuery(("n0000",), by_nodeid=True), warn)


def test_set_fields_and_their_warnings(server_instance: Instance, warn: list) -> None:
    populate(server_instance)
    assert nodes.set_field(server_instance, "desc", "rack 1", NodeQuery(("n000*",)), warn) == 4
    assert {n.desc for n in server_instance.db.nodes()} == {"rack 1"}
    assert nodes.set_field(server_instance, "ipaddr", "10.0.0.5", NodeQuery(("n0000",)), warn) == 1
    assert nodes.set_field(server_instance, "hostname", "dup", NodeQuery(("n000[2-3]",)), warn) == 2
    assert warn == [
        ("ipaddr is written by perceusd as nodes check in", None),
        ("2 nodes now share the name 'dup'; use -i with MAC addresses to tell them apart", None),
    ]
    for field, value, words in [
        ("enabled", "yes", "enabled takes a whole number"),
        ("colour", "red", "no node field 'colour'"),
        ("boot", "disk", "boot takes local, perceus or default"),
    ]:
        with pytest.raises(InvalidRequest, match=words):
            nodes.set_field(server_instance, field, value, NodeQuery(("n0000",)), warn)


def test_set_boot_writes_and_removes_per_node_files(server_instance: Instance, warn: list) -> None:
    populate(server_instance, 2)
    with pytest.raises(PerceusError, match="run 'perceus configure tftp'"):
        nodes.set_field(server_instance, "boot", "local", NodeQuery(("n0000",)), warn)
    boot_tree(server_instance)
    assert nodes.set_field(server_instance, "boot", "local", NodeQuery(("n000*",)), warn) == 2
    files = [pxelinux.mac_file(server_instance.paths.tftp_dir, mac) for mac in MACS[:2]]
    assert [pxelinux.node_choice(f) for f in files] == ["local", "local"]
    nodes.set_field(server_instance, "boot", "default", NodeQuery(("n0001",)), warn)
    assert [f.exists() for f in files] == [True, False]


def test_replace_plans_then_moves_the_identity_and_its_boot_file(
    server_instance: Instance, warn: list
) -> None:
    populate(server_instance, 3)
    boot_tree(server_instance)
    nodes.set_field(server_instance, "boot", "local", NodeQuery(("n0000",)), warn)
    plan = nodes.plan_replace(server_instance, "n0000", "n0002", False, warn)
    assert (plan.old.nodeid, plan.new.nodeid) == (MACS[0], MACS[2])
    nodes.replace(server_instance, plan)
    assert server_instance.db.node(MACS[2]).hostname == "n0000" and server_instance.db.node(MACS[0]) is None
    tftp = server_instance.paths.tftp_dir
    assert pxelinux.node_choice(pxelinux.mac_file(tftp, MACS[2])) == "local"
    assert not pxelinux.mac_file(tftp, MACS[0]).exists()
    with pytest.raises(PerceusError, match="a node changed while you were asked"):
        nodes.replace(server_instance, plan)  # the plan is stale now: nothing happens
    with pytest.raises(InvalidRequest, match="are the same node"):
        nodes.plan_replace(server_instance, "n0000", "n0000", False, warn)
    with pytest.raises(InvalidRequest, match="names 2 nodes, not one"):
        nodes.plan_replace(server_instance, "n000*", "n0001", False, warn)


def test_delete_takes_the_nodes_and_their_boot_files(server_instance: Instance, warn: list) -> None:
    populate(server_instance, 3)
    boot_tree(server_instance)
    nodes.set_field(server_instance, "boot", "local", NodeQuery(), warn)
    doomed = nodes.select(server_instance, NodeQuery(("n000[0-1]",)), warn)
    assert nodes.delete(server_instance, doomed) == 2
    assert names(server_instance.db.nodes()) == ["n0002"]
    left = sorted(p.name for p in pxelinux.config_dir(server_instance.paths.tftp_dir).iterdir())
    assert left == ["01-52-54-00-00-00-02", "default"]


def test_live_status_matches_sessions_to_nodes() -> None:
    document = {
        "sessions": [
            {"nodeid": MACS[0], "phase": "image", "bytes_sent": 10},
            {"nodeid": MACS[0], "phase": "overlay", "bytes_sent": 20},  # the newest wins
            {"nodeid": MACS[5], "phase": "hello"},  # not in the database yet
            {"nodeid": None},
            "junk",
        ],
        "perceusd": {"active_sessions": 2},
    }
    known = [
        Node(mac, f"n{i}", "cluster", "", 1, 0, "", "", "", None, 0, 0) for i, mac in enumerate(MACS[:2])
    ]
    live = nodes.live_status(known, document, 600, 1000.0)
    assert [(n.hostname, s and s["phase"]) for n, s in live.nodes] == [("n0", "overlay"), ("n1", None)]
    assert live.unknown == [{"nodeid": MACS[5], "phase": "hello"}]
    assert live.perceusd == {"active_sessions": 2} and live.timeout == 600


def test_groups_select_set_and_rename(server_instance: Instance, warn: list) -> None:
    populate(server_instance, 4)
    nodes.set_field(server_instance, "group", "io", NodeQuery(("n0003",)), warn)
    chosen = groups.select(server_instance, ("clus*", "ghost"), warn)
    assert [g.name for g in chosen.groups] == ["cluster"] and len(chosen.members) == 3
    assert warn == [("no group named 'ghost'", None)]
    assert groups.set_field(server_instance, "vnfs", "base-1", ("cluster",), warn) == 3
    assert warn[-1] == ("VNFS 'base-1' is not imported yet", str(server_instance.paths.vnfs_dir))
    nodes.add(server_instance, MACS[4], None, warn)  # joins the group later: inherits its VNFS
    assert server_instance.db.node(MACS[4]).vnfs == "base-1"
    assert groups.set_field(server_instance, "group", "hpc", ("cluster",), warn) == 4
    everything = groups.select(server_instance, (), warn)
    assert [g.name for g in everything.groups] == ["hpc", "io"]
    assert [g.vnfs for g in everything.groups] == ["base-1", ""]  # the group's own value moved too
    assert names(everything.members_of("io")) == ["n0003"]
    with pytest.raises(InvalidRequest, match="no group field 'hostname'"):
        groups.set_field(server_instance, "hostname", "x", ("io",), warn)
    with pytest.raises(PerceusError, match="no groups match nosuch"):
        groups.select(server_instance, ("nosuch",), warn)
