"""End to end: the real perceusd process, the real perceus-sim and perceus-stage1 --simulate.

No fakes and no in-process shortcuts: perceusd runs as a child process on 127.0.0.1 and a
free port, the nodes are the programs an administrator would run, and what the nodes got
is read back from the files the simulator keeps (image, overlay, boot.json) and from the
database. Every wait is bounded and perceusd is stopped whatever happens.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.e2e_sim import (
    STEP,
    VNFS,
    Perceusd,
    import_vnfs,
    manifest_rootfs,
    overlay_files,
    pack_vnfs,
    perceus_sim,
    set_conf,
    shell_vars,
    stage1_sim,
)
from tests.support.instance import BIN, Instance, environment

MAC = "52:54:00:E2:E0:01"
MAC2 = "52:54:00:E2:E0:02"
NAME_RE = re.compile(r"n(\d{4})")


@pytest.fixture(scope="module")
def capsules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two versions of the same VNFS (different random data), packed once for the module."""
    root = tmp_path_factory.mktemp("e2e-capsules")
    packer = Instance(root, environment(root))
    return {seed: pack_vnfs(packer, root, seed=seed) for seed in ("a", "b")}


@pytest.fixture
def site(perceus: Instance, capsules: dict[str, Path]) -> Instance:
    """An initialised instance, empty database, VNFS ``e2e`` imported and the default for new nodes."""
    import_vnfs(perceus, capsules["a"])
    return perceus


def hostnames() -> tuple[str, str]:
    cmd = subprocess.run(["hostname"], capture_output=True, text=True, timeout=30).stdout.strip()
    return socket.gethostname(), cmd


def node_dir(simdir: Path, mac: str = MAC) -> Path:
    return simdir / mac


# -- 1. the acceptance test: 256 nodes on an empty database -------------------------------------------


@pytest.mark.slow
def test_256_nodes_boot_on_an_empty_database_and_are_named_n0000_to_n0255(
    site: Instance, tmp_path: Path
) -> None:
    rootfs = manifest_rootfs(site)
    assert len(rootfs["chunks"]) >= 2, rootfs["chunks"]  # the image really is several chunks
    assert site.sql("SELECT COUNT(*) FROM nodes") == [(0,)]
    started = int(time.time())
    with Perceusd(site, tmp_path / "run") as master:
        ran = perceus_sim(
            master, "--nodes", "256", "--json", "--workers", "2", "--discard", "--timeout", "150"
        )
        assert ran.status == 0, (ran.out, ran.err, master.log()[-4000:])
        summary = json.loads(ran.out)
        assert (summary["ok"], summary["failed"], summary["failures"]) == (256, 0, [])
        assert summary["names"] == "n[0000-0255]"
        assert summary["checkins"] >= 512  # one init and one ready check-in per node
        provisioned = master.matching(r"(n\d{4}) \S+ init from 127\.0\.0\.1: provisioned")
        assert sorted(m.group(1) for m in provisioned) == [f"n{i:04d}" for i in range(256)]
        status = site.ok("node", "status")
    rows = site.sql("SELECT hostname, status, ipaddr, lastcontact, vnfs FROM nodes ORDER BY hostname")
    assert len(rows) == 256
    assert [r[0] for r in rows] == [f"n{i:04d}" for i in range(256)]
    assert {r[1] for r in rows} == {"ready"}
    assert {r[2] for r in rows} == {"127.0.0.1"}
    assert all(r[3] is not None and int(r[3]) >= started - 1 for r in rows)
    assert {r[4] for r in rows} == {VNFS}
    listed = [
        line.split() for line in status.lines if NAME_RE.fullmatch(line.split()[0] if line.split() else "")
    ]
    assert sorted(words[0] for words in listed) == [f"n{i:04d}" for i in range(256)], status.out[:2000]
    assert all("ready" in words for words in listed), status.out[:2000]


# -- 2. the built-in modules, end to end; syncnodes re-provisions a node whose VNFS changed -------------

PASSWD_ALL = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
IPADDR = "n0000  eth0:10.0.0.10/24/10.0.0.1 eth1:dhcp\nn*  eth0:dhcp\n"
MODPROBE = "*  ipmi_si\nn0000  bonding mode=4 miimon=100\n"
GATE = """#!/bin/sh
# e2e: hold the first ready check-in (before syncnodes reads the manifest) until the test says go
if [ ! -e {gate}/go ]; then
    touch {gate}/waiting
    i=0
    while [ ! -e {gate}/go ] && [ $i -lt 400 ]; do sleep 0.1; i=$((i + 1)); done
fi
"""


def activate_modules(site: Instance) -> None:
    conf = site.sysconfdir / "modules"
    site.ok("module", "activate", "passwdfile", "init/all")  # its hook makes the tree (and an `all`)
    (conf / "passwdfile" / "all").write_text(PASSWD_ALL)
    (conf / "ipaddr").parent.mkdir(parents=True, exist_ok=True)
    (conf / "ipaddr").write_text(IPADDR)
    (conf / "modprobe").write_text(MODPROBE)
    for module, state in (("hostname", "init/all"), ("ipaddr", "init/all"), ("modprobe", "init/all")):
        site.ok("module", "activate", module, state)
    site.ok("module", "activate", "syncnodes", "ready/all")


def test_builtin_modules_reach_the_node_and_syncnodes_reprovisions(
    site: Instance, capsules: dict[str, Path], tmp_path: Path
) -> None:
    before = hostnames()
    activate_modules(site)
    gate = tmp_path / "gate"
    gate.mkdir()
    part = site.statedir / "nodescripts" / "ready" / "all" / "00-e2e-gate"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_text(GATE.format(gate=gate))
    part.chmod(0o755)
    sha_a = manifest_rootfs(site)["sha256"]
    simdir = tmp_path / "sim"
    with Perceusd(site, tmp_path / "run") as master:
        argv = [str(BIN / "perceus-stage1"), "--simulate", str(simdir), "--master", master.master]
        argv += ["--mac", MAC, "--ready-checkins", "1", "--timeout", "150", "--round-backoff", "0.2"]
        node = subprocess.Popen(
            argv,
            env=master.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + STEP
            while not (gate / "waiting").exists():
                assert node.poll() is None, (node.communicate(), master.log())
                assert time.monotonic() < deadline, master.log()
                time.sleep(0.05)
            # the node booted and is in its first ready check-in: what reached it
            home = node_dir(simdir)
            boot = json.loads((home / "boot.json").read_text())
            assert (boot["name"], boot["vnfs"], boot["image_sha256"]) == ("n0000", VNFS, sha_a)
            overlay = overlay_files(home / "overlay")
            check_overlay(overlay, sha_a, master.port)
            assert (home / "kernel").read_bytes() == b"kernel a\n" * 4096
            # a changed VNFS under the same name, then let the ready check-in go on
            site.ok("-y", "vnfs", "delete", VNFS)
            import_vnfs(site, capsules["b"])
            sha_b = manifest_rootfs(site)["sha256"]
            assert sha_b != sha_a
            (gate / "go").touch()
            out, err = node.communicate(timeout=150)
        finally:
            (gate / "go").touch()  # never leave a check-in held in the gate
            if node.poll() is None:
                node.kill()
                node.communicate(timeout=30)
        assert hostnames() == before  # the simulator never touches this machine's hostname
        assert node.returncode == 0, (out, err, master.log())
        assert out.strip().startswith(f"{MAC} n0000 {VNFS} ready"), out
        root = node_dir(simdir) / "root"
        seen = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        # syncnodes' node shell reads "$DESTDIR/etc/perceus/node.conf" (DESTDIR = DIR/<MAC>/root here)
        assert "the ready script asks to reprovision: running init again" in err, (
            f"no reprovision; the simulated node's root holds {seen}",
            err,
            master.log(),
        )
        inits = master.matching(rf"n0000 {MAC} init from 127\.0\.0\.1: provisioned")
        assert len(inits) == 2, master.log()
    boot = json.loads((node_dir(simdir) / "boot.json").read_text())
    assert boot["image_sha256"] == sha_b  # the node runs the new image now
    assert (
        shell_vars(overlay_files(node_dir(simdir) / "overlay")["etc/perceus/node.conf"].data.decode())[
            "VNFS_SHA256"
        ]
        == sha_b
    )
    assert site.sql("SELECT hostname, status FROM nodes") == [("n0000", "ready")]


def check_overlay(overlay: dict, sha: str, port: int) -> None:
    assert overlay["etc/hostname"].data == b"n0000\n"
    assert overlay["etc/hostname"].mode & 0o777 == 0o644
    assert overlay["etc/passwd"].data.decode() == PASSWD_ALL
    conf = shell_vars(overlay["etc/perceus/node.conf"].data.decode())
    assert overlay["etc/perceus/node.conf"].mode & 0o777 == 0o644
    assert conf["NODENAME"] == "n0000" and conf["NODEID"] == MAC and conf["VNFS"] == VNFS
    assert conf["VNFS_SHA256"] == sha
    assert conf["MASTERS"] == f"127.0.0.1:{port}"
    assert conf["GROUPNAME"] == "cluster" and conf["PROVISIOND_INTERVAL"] == "300"
    ipaddr = overlay["etc/perceus/ipaddr"].data.decode().splitlines()
    assert ipaddr == ["eth0 10.0.0.10 24 10.0.0.1", "eth1 dhcp - -"]
    stanzas = overlay["etc/network/interfaces.d/perceus-ipaddr"].data.decode()
    assert "address 10.0.0.10" in stanzas and "gateway 10.0.0.1" in stanzas and "eth1 inet dhcp" in stanzas
    assert overlay["etc/modules-load.d/perceus.conf"].data.decode().split() == ["ipmi_si", "bonding"]
    assert "options bonding mode=4 miimon=100" in overlay["etc/modprobe.d/perceus.conf"].data.decode()
    # an open site (no site key): the master's SSH host keys go to every node
    keys = {name: f for name, f in overlay.items() if name.startswith("etc/ssh/ssh_host_")}
    assert keys and all((f.mode & 0o777) == (0o644 if n.endswith(".pub") else 0o600) for n, f in keys.items())
    assert "root" not in overlay and "etc" not in overlay  # directories the image has are not emitted


# -- 3. the site key ------------------------------------------------------------------------------------


def write_site_key(site: Instance, tmp_path: Path) -> Path:
    """The master's $SYSCONFDIR/site.key (0600) and the same key in a file for the nodes."""
    key = os.urandom(32)
    master_key = site.sysconfdir / "site.key"
    master_key.write_bytes(key)
    master_key.chmod(0o600)
    node_key = tmp_path / "node-site.key"
    node_key.write_bytes(key)
    node_key.chmod(0o600)
    return node_key


def test_node_auth_required_serves_only_nodes_with_the_site_key(site: Instance, tmp_path: Path) -> None:
    key = write_site_key(site, tmp_path)
    set_conf(site, "node auth", "required")
    simdir = tmp_path / "sim"
    with Perceusd(site, tmp_path / "run") as master:
        keyed = stage1_sim(master, simdir, "--mac", MAC, "--site-key", str(key), "--timeout", "60")
        assert keyed.status == 0, (keyed.err, master.log())
        assert keyed.out.strip().startswith(f"{MAC} n0000 {VNFS} ready"), keyed.out
        keyless = stage1_sim(
            master, simdir, "--mac", MAC2, "--rounds", "1", "--round-backoff", "0", "--timeout", "60"
        )
        assert keyless.status == 1, (keyless.out, keyless.err)
        errors = [line for line in keyless.err.splitlines() if line.startswith("perceus-stage1: error: ")]
        assert len(errors) == 1 and "Traceback" not in keyless.err, keyless.err
        assert "auth" in errors[0].lower(), errors[0]
        assert not (simdir / MAC2 / "boot.json").exists()
        # perceus-sim's nodes without the key fail the same way and are not added either
        sim = perceus_sim(
            master, "--nodes", "3", "--json", "--rounds", "1", "--round-backoff", "0", "--discard"
        )
        assert sim.status == 1, (sim.out, sim.err)
        summary = json.loads(sim.out)
        assert (summary["ok"], summary["failed"]) == (0, 3)
        assert all("auth" in failure.lower() for failure in summary["failures"]), summary["failures"]
        # ... and with the key they reach ready
        sim = perceus_sim(master, "--nodes", "3", "--json", "--site-key", str(key), "--discard")
        assert sim.status == 0, (sim.out, sim.err, master.log())
        assert json.loads(sim.out)["names"] == "n[0001-0003]"
    rows = site.sql("SELECT nodeid, hostname, status FROM nodes ORDER BY hostname")
    assert [r[1] for r in rows] == ["n0000", "n0001", "n0002", "n0003"]
    assert rows[0][0] == MAC and {r[2] for r in rows} == {"ready"}
    assert MAC2 not in {r[0] for r in rows}


def test_node_auth_optional_keeps_secrets_from_nodes_without_the_key(site: Instance, tmp_path: Path) -> None:
    key = write_site_key(site, tmp_path)
    set_conf(site, "node auth", "optional")
    site.ok("module", "activate", "passwdfile", "init/all")
    (site.sysconfdir / "modules" / "passwdfile" / "all").write_text(PASSWD_ALL)
    site.ok("module", "activate", "hostname", "init/all")
    simdir = tmp_path / "sim"
    with Perceusd(site, tmp_path / "run") as master:
        keyed = stage1_sim(master, simdir, "--mac", MAC, "--site-key", str(key), "--timeout", "60")
        assert keyed.status == 0, (keyed.err, master.log())
        keyless = stage1_sim(master, simdir, "--mac", MAC2, "--timeout", "60")
        assert keyless.status == 0, (keyless.err, master.log())
        assert keyless.out.strip().startswith(f"{MAC2} n0001 {VNFS} ready"), keyless.out
    with_key = overlay_files(simdir / MAC / "overlay")
    without = overlay_files(simdir / MAC2 / "overlay")
    assert with_key["etc/passwd"].data.decode() == PASSWD_ALL
    assert any(name.startswith("etc/ssh/ssh_host_") for name in with_key)
    assert "etc/passwd" not in without
    assert not any(name.startswith("etc/ssh") for name in without), sorted(without)
    # what is not secret still reaches both
    assert with_key["etc/hostname"].data == b"n0000\n" and without["etc/hostname"].data == b"n0001\n"
    assert shell_vars(without["etc/perceus/node.conf"].data.decode())["NODENAME"] == "n0001"
    assert site.sql("SELECT hostname, status FROM nodes ORDER BY hostname") == [
        ("n0000", "ready"),
        ("n0001", "ready"),
    ]


# -- 4. WAIT: a disabled node keeps waiting ----------------------------------------------------------------


def test_a_disabled_node_keeps_getting_wait(site: Instance, tmp_path: Path) -> None:
    set_conf(site, "node retry", "1")
    simdir = tmp_path / "sim"
    with Perceusd(site, tmp_path / "run") as master:
        first = stage1_sim(master, simdir, "--mac", MAC, "--timeout", "60")
        assert first.status == 0, (first.err, master.log())
        site.ok("node", "set", "enabled", "0", "n0000")
        waiting = stage1_sim(master, simdir, "--mac", MAC, "--timeout", "5")
        assert waiting.status == 1, (waiting.out, waiting.err)
        says = [line for line in waiting.err.splitlines() if "says wait 1 s (node is disabled)" in line]
        assert len(says) >= 2, waiting.err  # it keeps polling
        errors = [line for line in waiting.err.splitlines() if line.startswith("perceus-stage1: error: ")]
        assert errors == [
            f"perceus-stage1: error: {MAC}: timed out after 5 s (last answer: wait 1 s: node is disabled)"
        ], waiting.err
        master.wait_for(rf"{MAC} init from 127\.0\.0\.1: wait 1 s: node is disabled", count=2)
        # re-enabled, the same node boots again
        site.ok("node", "set", "enabled", "1", "n0000")
        again = stage1_sim(master, simdir, "--mac", MAC, "--timeout", "60")
        assert again.status == 0, (again.err, master.log())
        # perceus-sim: new nodes that defaults.conf adds disabled wait until the --timeout bound
        defaults = site.sysconfdir / "defaults.conf"
        defaults.write_text(re.sub(r"(?m)^Enabled\s*=.*$", "Enabled = 0", defaults.read_text()))
        master.proc.send_signal(signal.SIGHUP)
        master.wait_for("configuration reloaded")
        sim = perceus_sim(master, "--nodes", "2", "--json", "--timeout", "3", "--discard")
        assert sim.status == 1, (sim.out, sim.err)
        summary = json.loads(sim.out)
        assert (summary["ok"], summary["failed"], summary["names"]) == (0, 2, "")
        assert all(
            failure.endswith(": timed out after 3 s (last answer: wait 1 s: node is disabled)")
            for failure in summary["failures"]
        ), summary
        assert len(master.matching(r"init from 127\.0\.0\.1: wait 1 s: node is disabled")) >= 2 + 2
    rows = site.sql("SELECT hostname, enabled, status FROM nodes ORDER BY hostname")
    assert rows == [("n0000", 1, "ready"), ("n0001", 0, "init"), ("n0002", 0, "init")]
    # the session log names the known node, as docs/perceusd.md "Logs" shows for a WAIT
    disabled = master.matching(rf"(\S+) {MAC} init from 127\.0\.0\.1: wait 1 s: node is disabled")
    assert {m.group(1) for m in disabled} == {"n0000"}, master.log()
