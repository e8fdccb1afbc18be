"""``perceus init``, ``info`` and bash completion."""

import json
import os
import stat
import subprocess

from tests.support.instance import BIN, Instance
from tests.support.macs import macs


def test_init_sets_everything_up(bare: Instance) -> None:
    result = bare.ok("-y", "init", "--master-device", "lo", "--transfer-master", "10.0.0.1")
    conf = (bare.sysconfdir / "perceus.conf").read_text()
    assert "master network device = lo\n" in conf and "vnfs transfer master = 10.0.0.1\n" in conf
    assert "Node Name = n####\n" in (bare.sysconfdir / "defaults.conf").read_text()
    assert bare.database.exists()
    for kind in ("rsa", "ecdsa", "ed25519"):
        key = bare.statedir / "ssh" / f"ssh_host_{kind}_key"
        assert key.exists() and (bare.statedir / "ssh" / f"ssh_host_{kind}_key.pub").exists()
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    home = bare.root / "home" / ".ssh"
    public = (home / "id_ed25519.pub").read_text().strip()
    assert public in (home / "authorized_keys").read_text().splitlines()
    assert os.readlink(bare.sysconfdir / "vnfs") == str(bare.statedir / "vnfs")
    assert "Perceus is initialised." in result.out


def test_init_again_keeps_configuration_and_keys(bare: Instance) -> None:
    bare.ok("-y", "init", "--master-device", "lo")
    conf = bare.sysconfdir / "defaults.conf"
    conf.write_text(conf.read_text().replace("n####", "node###"))
    key = (bare.statedir / "ssh" / "ssh_host_ed25519_key").read_bytes()
    bare.ok("node", "add", "00:11:22:33:44:55")
    bare.ok("-y", "init")
    assert "node###" in conf.read_text()
    assert (bare.statedir / "ssh" / "ssh_host_ed25519_key").read_bytes() == key
    assert bare.ok("node", "list").lines == ["node000"]
    authorized = (bare.root / "home" / ".ssh" / "authorized_keys").read_text().splitlines()
    assert len(authorized) == 1


def test_init_prompts_without_flags(bare: Instance) -> None:
    answers = "lo\n192.168.7.1\nc##\ncompute\n1\n"
    result = bare.ok("init", input=answers)
    assert "Network device facing the nodes" in result.out
    assert "vnfs transfer master = 192.168.7.1" in (bare.sysconfdir / "perceus.conf").read_text()
    bare.ok("node", "add", "00:11:22:33:44:55")
    assert bare.ok("-q", "node", "summary").lines[0].split()[:2] == ["c01", "compute"]


def test_init_refuses_bad_answers_before_writing(bare: Instance) -> None:
    bare.error("-y", "init", "--node-name", "node", status=1, contains="Node Name")
    assert not bare.sysconfdir.exists() and not bare.statedir.exists()


def test_info_config(perceus: Instance) -> None:
    assert perceus.ok("info", "config", "node timeout").out == "600\n"
    assert perceus.ok("info", "config", "master network device").out == "lo\n"
    assert perceus.ok("info", "config", "statedir").out == f"{perceus.statedir}\n"
    assert perceus.ok("info", "config", "Node Name").out == "n####\n"
    everything = json.loads(perceus.ok("info", "config", "--json").out)
    assert everything["database type"] == "sqlite" and everything["First Node"] == "0"


def test_info_system_and_about(perceus: Instance) -> None:
    perceus.ok("node", "import", input=macs(3))
    text = perceus.ok("info", "system").out
    for heading in ("Perceus Information:", "Perceus Status:", "System Configuration:"):
        assert heading in text
    assert "Nodes configured: 3" in text
    data = json.loads(perceus.ok("info", "system", "--json").out)
    assert data["nodes"] == 3 and data["schema_version"] >= 1 and "database pass" not in data["config"]
    assert "Perceus" in perceus.ok("info", "about").out


def complete(perceus: Instance, line: str) -> list[str]:
    words = line.split(" ")
    env = dict(
        perceus.env, _PERCEUS_COMPLETE="bash_complete", COMP_WORDS=line, COMP_CWORD=str(len(words) - 1)
    )
    proc = subprocess.run([str(BIN / "perceus")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [entry.split(",", 1)[1] for entry in proc.stdout.splitlines()]


def test_bash_completion(perceus: Instance) -> None:
    perceus.ok("node", "import", input=macs(3))
    perceus.ok("node", "set", "group", "io", "n0002")
    assert complete(perceus, "perceus no") == ["node"]
    assert set(complete(perceus, "perceus node ")) >= {"add", "delete", "list", "replace", "set", "status"}
    assert complete(perceus, "perceus node set de") == ["debug", "desc"]
    assert complete(perceus, "perceus node show n000") == ["n0000", "n0001", "n0002"]
    assert complete(perceus, "perceus -i node show 02:00:00:00:00:0") == [
        f"02:00:00:00:00:0{i}" for i in range(3)
    ]
    assert complete(perceus, "perceus group summary i") == ["io"]
    script = perceus.ok("completion", "bash").out
    assert "_PERCEUS_COMPLETE" in script and "complete " in script
