"""perceusd as a process: start-up errors, pidfile, daemonising, SIGTERM, SIGHUP."""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from perceus.server import control

from tests.support.instance import BIN, Instance
from tests.support.perceusd import boot, import_vnfs, mac, perceusd_process, run


def read_until(proc: subprocess.Popen, pattern: str, timeout: float = 30.0) -> re.Match:
    """The first stderr line matching ``pattern`` (lines before it are kept in proc.seen)."""
    found: list = []

    def reader() -> None:
        for line in proc.stderr:
            proc.seen.append(line)
            match = re.search(pattern, line)
            if match:
                found.append(match)
                return

    proc.seen = getattr(proc, "seen", [])
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    assert found, f"perceusd never said {pattern!r}: {proc.seen}"
    return found[0]


def port_of(proc: subprocess.Popen) -> int:
    return int(read_until(proc, r"listening on 127\.0\.0\.1:(\d+)").group(1))


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=30)
    return proc.returncode, "".join(proc.seen) + rest


def test_foreground_serves_writes_pidfile_and_exits_cleanly_on_sigterm(
    perceus: Instance, tmp_path: Path
) -> None:
    import_vnfs(perceus, tmp_path)
    proc = perceusd_process(perceus, tmp_path, "--port", "0", "--bind", "127.0.0.1")
    try:
        port = port_of(proc)
        pidfile = tmp_path / "run" / "perceusd.pid"
        assert pidfile.read_text() == f"{proc.pid}\n"
        sock = tmp_path / "run" / "perceusd.sock"
        assert (sock.stat().st_mode & 0o777) == 0o600
        out = run(boot(port, mac(1)))
        assert out.error is None and out.assign.name == "n0000"
        line = read_until(proc, r"n0000 52:54:00:00:00:01 init from 127\.0\.0\.1: provisioned").group(0)
        assert line
        proc.send_signal(signal.SIGHUP)
        read_until(proc, "configuration reloaded")
        assert control.query(sock)["perceusd"]["pid"] == proc.pid
    finally:
        status, err = stop(proc)
    assert status == 0 and "Traceback" not in err and "stopped" in err
    assert not pidfile.exists() and not sock.exists()


def test_a_second_perceusd_is_refused_and_start_errors_are_one_line(
    perceus: Instance, tmp_path: Path
) -> None:
    first = perceusd_process(perceus, tmp_path, "--port", "0", "--bind", "127.0.0.1")
    try:
        port = port_of(first)
        second = perceusd_process(perceus, tmp_path, "--port", "0", "--bind", "127.0.0.1")
        _, err = second.communicate(timeout=60)
        assert second.returncode == 1
        assert err.strip().splitlines()[-1] == (
            f"perceusd: error: perceusd is already running as process {first.pid} "
            f"({tmp_path / 'run' / 'perceusd.pid'})"
        )
        other = tmp_path / "other"
        third = perceusd_process(perceus, other, "--port", str(port), "--bind", "127.0.0.1")
        _, err = third.communicate(timeout=60)
        assert third.returncode == 1 and err.strip().splitlines()[-1] == (
            f"perceusd: error: the port is in use (127.0.0.1:{port})"
        )
    finally:
        status, _ = stop(first)
    assert status == 0


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ("perceusd port = 99999\n", "perceusd port: expected a whole number from 1 to 65535"),
        ("node auth = maybe\n", "node auth: expected one of optional, required"),
        ("node retry = 0\n", "node retry: expected a whole number from 1 to 86400"),
    ],
)
def test_bad_configuration_is_one_line(perceus: Instance, tmp_path: Path, conf: str, message: str) -> None:
    path = perceus.sysconfdir / "perceus.conf"
    path.write_text(path.read_text() + conf)
    proc = perceusd_process(perceus, tmp_path, "--port", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"perceusd: error: {message}")


def test_not_initialised(bare: Instance, tmp_path: Path) -> None:
    proc = perceusd_process(bare, tmp_path, "--port", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip() == (
        "perceusd: error: perceus is not initialised: run 'perceus init' "
        f"({bare.sysconfdir / 'perceus.conf'})"
    )


def test_daemonises_and_stops_on_sigterm(perceus: Instance, tmp_path: Path) -> None:
    env = dict(perceus.env, PERCEUS_RUNDIR=str(tmp_path / "run"))
    pidfile = tmp_path / "run" / "perceusd.pid"
    started = subprocess.run(
        [str(BIN / "perceusd"), "--port", "0", "--bind", "127.0.0.1"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 30
    while not (tmp_path / "run" / "perceusd.sock").exists():
        assert time.monotonic() < deadline, "the daemon never opened its control socket"
        time.sleep(0.02)
    pid = int(pidfile.read_text())
    assert os.getsid(pid) == pid or os.getsid(pid) != os.getsid(0)  # its own session, not ours
    port = int(control.query(tmp_path / "run" / "perceusd.sock")["perceusd"]["listening"].rsplit(":", 1)[1])
    assert run(boot(port, mac(1))).wait.reason == "no VNFS assigned"
    os.kill(pid, signal.SIGTERM)
    while pidfile.exists():
        assert time.monotonic() < deadline + 30, "the daemon did not stop"
        time.sleep(0.02)
