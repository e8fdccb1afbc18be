"""Every command's bad input: one line 'perceus: error: ...', exit 2 or 1, nothing changed."""

import pytest

from tests.support.instance import Instance
from tests.support.macs import macs

USAGE, FAILURE = 2, 1


@pytest.fixture
def populated(perceus: Instance) -> Instance:
    perceus.ok("node", "import", input=macs(4))
    perceus.ok("node", "set", "group", "io", "n0003")
    return perceus


CASES = [
    # (arguments, stdin, status, text in the error line)
    (("frobnicate",), None, USAGE, "No such command 'frobnicate'. (perceus)"),
    (("node", "frobnicate"), None, USAGE, "(perceus node)"),
    (("--bogus", "node", "list"), None, USAGE, "No such option '--bogus'"),
    (("node", "add"), None, USAGE, "Missing argument 'MAC'. (perceus node add)"),
    (("node", "add", "00:11:22:33:44"), None, USAGE, "not a MAC address: '00:11:22:33:44' (node add)"),
    (("node", "add", "02:00:00:00:00:01"), None, FAILURE, "already exists as node 'n0001' (node add)"),
    (("node", "add", "00:11:22:33:44:55", "bad/name"), None, USAGE, "hostname takes"),
    (("node", "add", "00:11:22:33:44:55", "n0002"), None, FAILURE, "node name 'n0002' is already taken"),
    (("node", "delete"), None, USAGE, "Missing argument 'NODES...'"),
    (("-y", "node", "delete", "x[1-"), None, USAGE, "unbalanced"),
    (("-y", "node", "delete", "nothere*"), None, FAILURE, "no nodes match nothere* (node delete)"),
    (("node", "list", "n[5-2]"), None, USAGE, "n[5-2]"),
    (("node", "list", "n[0-99999999]"), None, USAGE, "10000000"),
    (("node", "list", "zz"), None, FAILURE, "no nodes match zz (node list)"),
    (("-y", "node", "replace", "n0000", "n0000"), None, USAGE, "are the same node"),
    (("-y", "node", "replace", "n0000", "n00*"), None, USAGE, "names 4 nodes, not one"),
    (("-y", "node", "replace", "n0000", "gone"), None, FAILURE, "no nodes match gone"),
    (("node", "set", "colour", "red", "n0000"), None, USAGE, "Invalid value for 'FIELD'"),
    (("node", "set", "enabled", "yes", "n0000"), None, USAGE, "enabled takes a whole number"),
    (("node", "set", "hostname", "bad!name", "n0000"), None, USAGE, "hostname takes"),
    (("node", "set", "hostname", "-x", "n0000"), None, USAGE, "No such option '-x'"),
    (("node", "set", "desc", "two\nlines", "n0000"), None, USAGE, "desc takes one line"),
    (("node", "set", "ipaddr", "10.0.0.300", "n0000"), None, USAGE, "ipaddr takes"),
    (("node", "set", "desc", "x"), None, USAGE, "Missing argument 'NODES...'"),
    (("-i", "node", "set", "desc", "x", "n0000"), None, USAGE, "not a MAC address: 'n0000'"),
    (("node", "show", "q*"), None, FAILURE, "no nodes match q*"),
    (("node", "status", "n[]"), None, USAGE, "n[]"),
    (("node", "summary", "n[1-2]]"), None, USAGE, "unbalanced"),
    (("node", "import", "--csv", "/nonexistent.csv"), None, USAGE, "/nonexistent.csv"),
    (("node", "import", "--csv", "/dev/null", "--ethers", "/dev/null"), None, USAGE, "give one of"),
    (("node", "import"), "00:11:22:33:44:55\nxx\n", FAILURE, "not a MAC address: 'xx' (<stdin>:2)"),
    (("group", "set", "hostname", "x", "io"), None, USAGE, "Invalid value for 'FIELD'"),
    (("group", "set", "debug", "1.5", "io"), None, USAGE, "debug takes a whole number"),
    (("-y", "group", "delete", "nosuch"), None, FAILURE, "no groups match nosuch (group delete)"),
    (("group", "delete"), None, USAGE, "Missing argument 'GROUPS...'"),
    (("group", "list", "x[1-"), None, USAGE, "unbalanced"),
    (("group", "nodelist", "nosuch"), None, FAILURE, "no groups match nosuch"),
    (("group", "show", "nosuch"), None, FAILURE, "no groups match nosuch"),
    (("group", "status", "nosuch"), None, FAILURE, "no groups match nosuch"),
    (("group", "summary", "nosuch"), None, FAILURE, "no groups match nosuch"),
    (("info", "config", "no such key"), None, FAILURE, "no configuration key 'no such key' (info config)"),
    (("info", "frobnicate"), None, USAGE, "No such command"),
    (("-y", "init", "--force", "--first-node", "minus one"), None, FAILURE, "First Node: expected a whole"),
    (("completion", "tcsh"), None, USAGE, "'tcsh' is not one of 'bash', 'zsh', 'fish'"),
]


@pytest.mark.parametrize(("args", "stdin", "status", "text"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_error_paths(populated: Instance, args: tuple, stdin: str | None, status: int, text: str) -> None:
    populated.error(*args, input=stdin, status=status, contains=text)


def test_uninitialised_instance(bare: Instance) -> None:
    for args in (
        ("node", "list"),
        ("group", "list"),
        ("info", "system"),
        ("node", "add", "00:00:00:00:00:01"),
    ):
        bare.error(*args, status=FAILURE, contains="perceus is not initialised: run 'perceus init'")
    assert not bare.statedir.exists()


def test_malformed_config_names_file_and_line(populated: Instance) -> None:
    conf = populated.sysconfdir / "perceus.conf"
    lines = conf.read_text().splitlines()
    conf.write_text("\n".join(lines + ["this line has no equals sign"]) + "\n")
    populated.error(
        "node",
        "list",
        status=FAILURE,
        contains=f"malformed line, expected 'key = value': "
        f"'this line has no equals sign' ({conf}:{len(lines) + 1})",
    )


def test_unknown_config_key_warns(populated: Instance) -> None:
    conf = populated.sysconfdir / "defaults.conf"
    conf.write_text(conf.read_text() + "Colour = blue\n")
    result = populated.ok("node", "list")
    assert f"perceus: warning: unknown key 'Colour' ({conf}:" in result.err
    assert result.lines == ["n0000", "n0001", "n0002", "n0003"]


def test_total_nodes_exhausted(populated: Instance) -> None:
    conf = populated.sysconfdir / "defaults.conf"
    conf.write_text(conf.read_text() + "Total Nodes = 4\n")
    populated.error("node", "add", "00:11:22:33:44:55", status=FAILURE, contains="no free node name")


def test_corrupt_database(populated: Instance) -> None:
    for path in populated.database.parent.iterdir():
        path.unlink()
    populated.database.write_bytes(b"this is not a database" * 100)
    result = populated.run("node", "list")
    assert result.status == FAILURE and "Traceback" not in result.err
    assert result.err.startswith("perceus: error: ") and result.err.count("\n") == 1
    assert str(populated.database) in result.err
