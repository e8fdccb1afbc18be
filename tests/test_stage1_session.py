"""Stage one's sessions against a fake master on 127.0.0.1: the whole init flow and its failures."""

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from perceus.stage1.cmdline import Master, parse_master
from perceus.stage1.facts import simulated_facts
from perceus.stage1.fetch import Download
from perceus.stage1.protocol import ObjectKind
from perceus.stage1.retry import NoMaster, RetryPolicy, Target, check_in_until_done
from perceus.stage1.scriptrun import ScriptEnv, run_script
from perceus.stage1.session import CheckIn, SessionFailed, check_in
from perceus.stage1.simulate import SimOptions, simulate_node

from tests.support.fakemaster import FakeMaster, closed_port

KEY = b"example site key (32 bytes) !!!!"
QUICK = RetryPolicy(rounds=5, backoff=0.0, wait_max=0.01)
MAC = "02:00:00:00:00:2A"


def sim(master: FakeMaster | list[str], tmp_path: Path, **kw) -> SimOptions:
    addresses = [master.address] if isinstance(master, FakeMaster) else master
    kw.setdefault("policy", QUICK)
    kw.setdefault("io_timeout", 20.0)
    return SimOptions(masters=tuple(parse_master(a) for a in addresses), simdir=tmp_path, **kw)


def run(coro):
    return asyncio.run(coro)


def test_full_init_flow_in_simulate_mode(tmp_path):
    script = b'echo "hello from $PERCEUS_MODE"\nmkdir -p "$DESTDIR/etc"\necho x > "$DESTDIR/etc/marker"\n'
    with FakeMaster(scripts={"init": script, "ready": b"echo ready\n"}) as master:
        result = run(simulate_node(sim(master, tmp_path), MAC))
    assert result.ok, result.error
    assert (result.name, result.vnfs, result.ready) == ("n0000", "busybox-1.0", 1)
    node = tmp_path / MAC
    assert (node / "image").read_bytes() == master.image
    assert (node / "overlay").read_bytes() == master.objects[ObjectKind.OVERLAY]
    assert (node / "kernel").read_bytes() == master.objects[ObjectKind.KERNEL]
    assert (node / "root" / "etc" / "marker").read_text() == "x\n"
    boot = json.loads((node / "boot.json").read_text())
    assert boot["name"] == "n0000" and boot["kernel_args"] == "console=ttyS0 quiet"
    assert boot["image_sha256"] == hashlib.sha256(master.image).hexdigest()
    assert master.record.checkins == [(MAC, "init"), (MAC, "ready")]
    assert [r[1:] for r in master.record.results] == [(0, b"hello from simulate\n"), (0, b"ready\n")]
    assert master.record.byes == [(MAC, "simulated"), (MAC, "simulated")]
    assert [r[1:] for r in master.record.requests] == [
        (ObjectKind.IMAGE, 0, len(master.image)),
        (ObjectKind.OVERLAY, 0, len(master.objects[ObjectKind.OVERLAY])),
        (ObjectKind.KERNEL, 0, len(master.objects[ObjectKind.KERNEL])),
    ]
    assert result.bytes == sum(len(v) for v in master.objects.values())
    assert len(result.checkins) == 2


def test_discard_keeps_no_bytes(tmp_path):
    with FakeMaster() as master:
        result = run(simulate_node(sim(master, tmp_path, discard=True), MAC))
    assert result.ok, result.error
    assert not (tmp_path / MAC / "image").exists()
    assert (tmp_path / MAC / "boot.json").exists()


def test_wait_then_retry(tmp_path):
    with FakeMaster(waits=2) as master:
        result = run(simulate_node(sim(master, tmp_path), MAC))
    assert result.ok, result.error
    assert master.record.checkins == [(MAC, "init")] * 3 + [(MAC, "ready")]
    assert len(result.checkins) == 4  # a latency for every check-in, WAITs included


def test_script_environment_and_output_tail(tmp_path):
    script = (
        b'printf "%s|%s|%s|%s" "$DESTDIR" "$PERCEUS_MODE" "$PERCEUS_PROC" "$PERCEUS_REQUEST" \\\n'
        b'  > "$DESTDIR/env"\n'
        b'test -f "$PERCEUS_REQUEST" && test ! -s "$PERCEUS_REQUEST" && echo request-file-ok >&2\n'
        b"i=0; while [ $i -lt 3000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done\n"
        b"echo last-line >&2\n"
    )
    with FakeMaster(scripts={"init": script}) as master:
        result = run(simulate_node(sim(master, tmp_path), MAC))
    assert result.ok, result.error
    destdir, mode, proc, request = (tmp_path / MAC / "root" / "env").read_text().split("|")
    assert (destdir, mode, proc) == (str(tmp_path / MAC / "root"), "simulate", str(tmp_path / MAC / "proc"))
    assert request and not Path(request).exists()  # a temporary file, gone after the run
    tail = master.record.results[0][2]
    assert len(tail) == 64 * 1024 and tail.endswith(b"line-2999-xxxxxxxxxxxxxxxxxxxxxxxxx\nlast-line\n")


def test_request_word_reprovision_runs_init_again(tmp_path):
    ready = b'[ -e "$DESTDIR/once" ] || { touch "$DESTDIR/once"; echo reprovision > "$PERCEUS_REQUEST"; }\n'
    with FakeMaster(scripts={"init": b"true\n", "ready": ready}) as master:
        result = run(simulate_node(sim(master, tmp_path), MAC))
    assert result.ok, result.error
    assert result.reprovisions == 1
    assert master.record.checkins == [(MAC, "init"), (MAC, "ready")] * 2


def test_failing_script_fails_the_round(tmp_path):
    with FakeMaster(scripts={"init": b"exit 3\n"}) as master:
        result = run(simulate_node(sim(master, tmp_path, policy=RetryPolicy(rounds=2, backoff=0)), MAC))
    assert not result.ok
    assert "nodescript failed with status 3" in result.error and "2 rounds" in result.error
    assert [r[1] for r in master.record.results] == [3, 3]


def test_corrupted_chunk_is_fetched_again(tmp_path):
    with FakeMaster(corrupt_chunk=1) as master:
        result = run(simulate_node(sim(master, tmp_path), MAC))
        boundary = len(master.chunks[0])
    assert result.ok, result.error
    assert (tmp_path / MAC / "image").read_bytes() == master.image
    image_requests = [r for r in master.record.requests if r[1] is ObjectKind.IMAGE]
    assert [(s, off) for s, _, off, _ in image_requests] == [(1, 0), (1, boundary)]  # same session
    assert any("chunk 1" in line and "sha256" in line for line in master.record.logs)


def test_dropped_connection_resumes_from_the_last_good_chunk(tmp_path):
    with FakeMaster(drop_after=70000 + 20000) as master:  # all of chunk 0, part of chunk 1
        result = run(simulate_node(sim(master, tmp_path), MAC))
    assert result.ok, result.error
    assert (tmp_path / MAC / "image").read_bytes() == master.image
    image_requests = [r for r in master.record.requests if r[1] is ObjectKind.IMAGE]
    assert [(s, off) for s, _, off, _ in image_requests] == [(1, 0), (2, 70000)]
    assert master.record.checkins[:2] == [(MAC, "init"), (MAC, "init")]


def test_site_key_authenticates(tmp_path):
    with FakeMaster(site_key=KEY, auth_required=True) as master:
        result = run(simulate_node(sim(master, tmp_path, site_key=KEY), MAC))
    assert result.ok, result.error
    assert master.record.authenticated == [True, True]


@pytest.mark.parametrize("master_key", [None, b"another site key, also 32 bytes!"])
def test_node_refuses_a_master_without_its_key(tmp_path, master_key):
    with FakeMaster(site_key=master_key) as master:
        result = run(simulate_node(sim(master, tmp_path, site_key=KEY, policy=RetryPolicy(1, 0)), MAC))
    assert not result.ok
    assert "site key" in result.error
    assert master.record.results == []  # no script ran


def test_unreachable_master_means_the_next_one(tmp_path, caplog):
    dead = f"127.0.0.1:{closed_port()}"
    with FakeMaster() as master:
        result = run(simulate_node(sim([dead, master.address], tmp_path), MAC))
    assert result.ok, result.error
    assert any(dead in r.getMessage() and "cannot connect" in r.getMessage() for r in caplog.records)


def test_five_failed_rounds_give_up(tmp_path):
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    req = CheckIn("init", simulated_facts(MAC), ScriptEnv("simulate", str(tmp_path)), download=Download())
    targets = [Target(Master("127.0.0.1", closed_port())), Target(Master("127.0.0.1", closed_port()))]
    with pytest.raises(NoMaster, match="no master answered in 5 rounds"):
        policy = RetryPolicy(backoff=1.0, backoff_max=4.0, jitter=0)
        run(check_in_until_done(targets, req, policy, sleep=sleep))
    assert slept == [1.0, 2.0, 4.0, 4.0]  # bounded, doubling backoff between the 5 rounds


def test_silent_master_times_out(tmp_path):
    req = CheckIn("init", simulated_facts(MAC), ScriptEnv("simulate", str(tmp_path)), io_timeout=0.2)
    with FakeMaster(silent=True) as master:
        with pytest.raises(SessionFailed, match="timed out waiting for the master in state ANSWER"):
            run(check_in(Master("127.0.0.1", master.port), req))


def test_unknown_node_refused_at_ready(tmp_path):
    req = CheckIn("ready", simulated_facts(MAC), ScriptEnv("simulate", str(tmp_path)))
    with FakeMaster() as master:
        with pytest.raises(SessionFailed, match="REFUSED: unknown node"):
            run(check_in(Master("127.0.0.1", master.port), req))


def test_script_time_bound_kills_the_group(tmp_path):
    body = b"sleep 30 &\nsleep 30\n"
    result = run(run_script(body, ScriptEnv("simulate", str(tmp_path)), timeout=0.3))
    assert result.status == -9


def test_script_request_words(tmp_path):
    env = ScriptEnv("simulate", str(tmp_path))
    assert run(run_script(b'echo "  HALT now" > "$PERCEUS_REQUEST"\n', env)).request == "halt"
    odd = run(run_script(b'echo explode > "$PERCEUS_REQUEST"\n', env))
    assert (odd.request, odd.bad_request) == ("", "explode")
