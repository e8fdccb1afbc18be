"""The stage-one program from the command line: simulate, provisiond --once, errors in one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perceus.stage1.main import main

from tests.support.fakemaster import FakeMaster, closed_port, real_overlay

KEY = b"example site key (32 bytes) !!!!"
MAC = "02:00:00:00:00:07"


def stage1(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "perceus.stage1", *args], capture_output=True, text=True, timeout=timeout
    )


def test_simulate_one_node(tmp_path):
    (tmp_path / "key").write_bytes(KEY)
    ready = b'cat "$DESTDIR/etc/perceus/node.conf"\n'
    with FakeMaster(
        site_key=KEY, auth_required=True, overlay=real_overlay(), scripts={"ready": ready}
    ) as master:
        proc = stage1("--simulate", str(tmp_path / "sim"), "--master", master.address, "--mac", MAC.lower(),
                      "--site-key", str(tmp_path / "key"), "--ready-checkins", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "sim" / MAC / "root"
    assert (root / "etc/perceus/node.conf").read_text() == 'NODENAME="n0000"\n'  # the overlay, unpacked
    assert all(status == 0 for _, status, _ in master.record.results)
    assert proc.stdout.startswith(f"{MAC} n0000 busybox-1.0 ready")
    assert json.loads((tmp_path / "sim" / MAC / "boot.json").read_text())["vnfs"] == "busybox-1.0"
    assert master.record.checkins == [(MAC, "init"), (MAC, "ready"), (MAC, "ready")]


def test_simulate_timeout_names_the_last_wait(tmp_path):
    with FakeMaster(waits=1000) as master:
        proc = stage1("--simulate", str(tmp_path), "--master", master.address, "--mac", MAC, "--timeout", "2")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        f"perceus-stage1: error: {MAC}: timed out after 2 s (last answer: wait 1 s: node is disabled)"
    )


def test_simulate_gives_up_after_five_rounds(tmp_path):
    dead = f"127.0.0.1:{closed_port()}"
    proc = stage1("--simulate", str(tmp_path), "--master", dead, "--round-backoff", "0")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("perceus-stage1: error: ") and "no master answered in 5 rounds" in lines[-1]
    assert sum("cannot connect" in line for line in lines) == 6  # 5 warnings + the error
    assert sum(" of 5 failed; next round" in line for line in lines) == 4
    assert "Connection refused" in lines[-1]


def write_conf(path: Path, port: int, mac: str = MAC) -> Path:
    path.write_text(
        f'NODENAME="n0042"\nNODEID="{mac}"\nVNFS="busybox-1.0"\n'
        f'MASTERS="127.0.0.1:{port}"\nPROVISIOND_INTERVAL="300"\n'
    )
    return path


def test_provisiond_once_halt(tmp_path):
    halt = b'echo "halting $PERCEUS_MODE [$DESTDIR]"\necho halt > "$PERCEUS_REQUEST"\n'
    marker = tmp_path / "powered-off"
    with FakeMaster(scripts={"halt": halt}, known={MAC: "n0042"}) as master:
        conf = write_conf(tmp_path / "node.conf", master.port)
        proc = stage1("--mode", "provisiond", "--config", str(conf), "--once", "halt",
                      "--poweroff-command", f"touch {marker}", "--reboot-command", "false")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert master.record.checkins == [(MAC, "halt")]
    assert master.record.results == [(MAC, 0, b"halting provisiond []\n")]
    assert marker.exists()
    assert "asks to halt" in proc.stderr


def test_provisiond_once_unreachable_fails(tmp_path):
    conf = write_conf(tmp_path / "node.conf", closed_port())
    proc = stage1("--mode", "provisiond", "--config", str(conf), "--once", "ready", "--round-backoff", "0",
                  "--rounds", "2")  # fmt: skip
    assert proc.returncode == 1
    assert "no master answered in 2 rounds" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message", "status"),
    [
        ([], "choose a mode", 2),
        (["--simulate", "d"], "--simulate needs --master", 2),
        (["--simulate", "d", "--master", "a:b:c"], "not HOST[:PORT]", 2),
        (["--simulate", "d", "--master", "h", "--mac", "zz"], "--mac 'zz'", 2),
        (
            ["--simulate", "d", "--master", "h", "--site-key", "/nonexistent/key"],
            "cannot read the site key",
            1,
        ),
        (
            ["--mode", "provisiond", "--config", "/nonexistent/node.conf"],
            "cannot read /nonexistent/node.conf",
            1,
        ),
        (["--mode", "simulate"], "needs --simulate DIR", 2),
        (["--bogus"], "unrecognized arguments: --bogus", 2),
    ],
)
def test_bad_input_is_one_line(capsys, args, message, status):
    assert main(args) == status
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("perceus-stage1: error: ") and message in err[0]


def test_simulate_where_the_simulator_is_left_out_is_one_line(monkeypatch, capsys):
    """The frozen initramfs carries no simulator (buildroot.pyfreeze.EXCLUDED): --simulate says so."""
    monkeypatch.setitem(sys.modules, "perceus.stage1.simulate", None)
    assert main(["--simulate", "d", "--master", "h"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["perceus-stage1: error: --simulate: this build of stage one has no simulated node"]


def test_short_site_key_is_refused(tmp_path, capsys):
    (tmp_path / "key").write_bytes(b"short")
    assert main(["--simulate", str(tmp_path), "--master", "h", "--site-key", str(tmp_path / "key")]) == 1
    assert "site key" in capsys.readouterr().err


def test_bad_node_conf_is_one_line(tmp_path, capsys):
    (tmp_path / "node.conf").write_text('MASTERS="a:b:c"\n')
    assert main(["--mode", "provisiond", "--config", str(tmp_path / "node.conf"), "--once", "ready"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "MASTERS" in err[0]


def test_provisiond_loop_checks_in_ready_and_stops_on_sigterm(tmp_path):
    import signal
    import time

    pidfile = tmp_path / "provisiond.pid"
    with FakeMaster(scripts={"ready": b"echo ok\n"}, known={MAC: "n0042"}) as master:
        conf = write_conf(tmp_path / "node.conf", master.port)
        proc = subprocess.Popen(
            [sys.executable, "-m", "perceus.stage1", "--mode", "provisiond", "--config", str(conf),
             "--foreground", "--pidfile", str(pidfile), "--interval", "3600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not master.record.byes and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert master.record.checkins == [(MAC, "ready")]
            assert pidfile.read_text() == f"{proc.pid}\n"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not pidfile.exists()
    assert "checked in ready as n0042" in err
