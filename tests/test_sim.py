"""perceus-sim against the fake master: 20 nodes in one process, summary in text and JSON."""

import json
import subprocess
import sys

from perceus.bench.sim import fold_names, main, run_simulation
from perceus.stage1.retry import RetryPolicy

from tests.support.fakemaster import FakeMaster, closed_port, real_overlay


def sim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "perceus.bench.sim", *args], capture_output=True, text=True, timeout=120
    )


def test_twenty_nodes_json():
    with FakeMaster(scripts={"init": b"echo hi\n", "ready": b"true\n"}) as master:
        proc = sim("--master", master.address, "--nodes", "20", "--json", "--discard")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert set(summary) == {
        "ok", "failed", "failures", "names", "wall_s", "bytes", "mb_per_s",
        "checkin_p50_ms", "checkin_p99_ms", "checkins",
    }  # fmt: skip
    assert (summary["ok"], summary["failed"], summary["failures"]) == (20, 0, [])
    assert summary["names"] == "n[0000-0019]"
    assert summary["checkins"] == 40
    assert summary["bytes"] == 20 * sum(len(v) for v in master.objects.values())
    assert 0 < summary["checkin_p50_ms"] <= summary["checkin_p99_ms"]
    assert sorted(state for _, state in master.record.checkins) == ["init"] * 20 + ["ready"] * 20


def test_twenty_nodes_text_with_files(tmp_path):
    with FakeMaster(overlay=real_overlay()) as master:
        proc = sim("--master", master.address, "--nodes", "20", "--dir", str(tmp_path), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "nodes: 20, ok 20, failed 0" in proc.stdout
    assert "names: n[0000-0019]" in proc.stdout
    assert "MB/s aggregate" in proc.stdout and "check-in latency: p50" in proc.stdout
    images = sorted(tmp_path.glob("*/image"))
    assert len(images) == 20 and all(p.read_bytes() == master.image for p in images)
    confs = sorted(tmp_path.glob("*/root/etc/perceus/node.conf"))
    assert len(confs) == 20  # every node unpacked its overlay into its root


def test_waiting_nodes_fail_with_the_last_wait():
    with FakeMaster(waits=1000) as master:
        proc = sim("--master", master.address, "--nodes", "2", "--json", "--timeout", "2", "--discard")
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)
    assert summary["failed"] == 2
    assert all(
        f.endswith(": timed out after 2 s (last answer: wait 1 s: node is disabled)")
        for f in summary["failures"]
    )


def test_failures_are_reported_and_exit_1():
    proc = sim("--master", f"127.0.0.1:{closed_port()}", "--nodes", "3", "--rounds", "1", "--json")
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)
    assert (summary["ok"], summary["failed"], summary["names"]) == (0, 3, "")
    assert len(summary["failures"]) == 3 and "cannot connect" in summary["failures"][0]


def test_in_process_api():
    with FakeMaster() as master:
        summary = run_simulation([master.address], 5, policy=RetryPolicy(backoff=0))
    assert summary["ok"] == 5 and summary["names"] == "n[0000-0004]"


def test_bad_usage_is_one_line(capsys):
    assert main(["--master", "x:0", "--nodes", "2"]) == 2
    assert main(["--master", "127.0.0.1:1", "--nodes", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("perceus-sim: error: ") for line in err)


def test_fold_names():  # the percentile the summary uses is tested in test_common.py
    names = ["n0003", "n0000", "n0001", "n0005", "x"]
    assert fold_names(names) == "n[0000-0001,0003,0005],x"
    assert fold_names(["n0007"]) == "n0007"
    assert fold_names(["n0000", "n0001", "n0002"]) == "n[0000-0002]"
