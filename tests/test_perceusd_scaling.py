"""What lets perceusd answer hundreds of nodes at once: the listen backlog, the image memos
warmed at start-up, no staging directory without a master-side part, the Streamer thread,
the non-blocking log pump, the nodescript listing cache and the check-in latency figures."""

import asyncio
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from perceus.server import daemon, nodescripts
from perceus.server.daemon import serve
from perceus.server.perceusd.streamer import Streamer
from perceus.stage1.protocol import Follows

from tests.support.instance import Instance
from tests.support.perceusd import add_script, boot, import_vnfs, mac, options, run, settings_of

# --------------------------------------------------------------------------- the backlog


def test_listen_backlog_is_capped_by_somaxconn(monkeypatch, tmp_path: Path) -> None:
    real_open = open

    def fake_open(path, *args, **kw):
        if path == "/proc/sys/net/core/somaxconn":
            return real_open(tmp_path / "somaxconn", *args, **kw)
        return real_open(path, *args, **kw)

    monkeypatch.setattr("builtins.open", fake_open)
    (tmp_path / "somaxconn").write_text("512\n")
    assert daemon.listen_backlog() == 512
    (tmp_path / "somaxconn").write_text("65535\n")
    assert daemon.listen_backlog() == daemon.BACKLOG == 4096
    (tmp_path / "somaxconn").unlink()
    assert daemon.listen_backlog() == daemon.BACKLOG


def test_the_server_listens_with_the_large_backlog(perceus: Instance, tmp_path: Path, monkeypatch) -> None:
    """asyncio.start_server listens again with its own backlog (100 by default): ours must be passed."""
    seen = {}
    real = asyncio.start_server

    async def spy(*args, **kw):
        seen.update(kw)
        return await real(*args, **kw)

    monkeypatch.setattr(asyncio, "start_server", spy)

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)):
            pass

    run(scenario())
    assert seen["backlog"] == daemon.listen_backlog() > 100


# --------------------------------------------------------------------------- warm-up


def test_image_memos_are_warmed_at_start_and_after_reload(perceus: Instance, tmp_path: Path) -> None:
    import_vnfs(perceus, tmp_path)

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            warmed = await server.warming
            hashes, dirs = dict(server.hashes._done), dict(server.dirs._done)
            first = server.warming
            server.reload()
            again = await server.warming
            return warmed, hashes, dirs, server.warming is not first, again

    warmed, hashes, dirs, restarted, again = run(scenario())
    assert warmed == 1 and again == 1 and restarted
    assert any(key[0] == "sha256" for key in hashes)  # the image's (and the kernel's) sha256
    (dirs_value,) = dirs.values()
    assert "etc" in dirs_value and "root" in dirs_value


def test_warm_up_skips_a_broken_vnfs(perceus: Instance, tmp_path: Path, caplog) -> None:
    import_vnfs(perceus, tmp_path)
    (perceus.statedir / "vnfs" / "broken").mkdir()

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            return await server.warming

    with caplog.at_level(logging.WARNING, logger="perceusd"):
        assert run(scenario()) == 1
    assert "VNFS broken: cannot prepare its image" in caplog.text


# --------------------------------------------------------------------------- staging directory


def _count_staging(monkeypatch) -> list[str]:
    made: list[str] = []
    real = tempfile.mkdtemp

    def spy(*args, **kw):
        path = real(*args, **kw)
        if kw.get("prefix") == "perceusd.":
            made.append(path)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    return made


def test_no_staging_directory_without_a_master_side_part(
    perceus: Instance, tmp_path: Path, monkeypatch
) -> None:
    import_vnfs(perceus, tmp_path)
    add_script(perceus, "init/all/10-node", "echo on the node\n")  # sent as it is: nothing runs here
    made = _count_staging(monkeypatch)

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            return await boot(server.port, mac(1))

    out = run(scenario())
    assert out.error is None and out.assign.follows == Follows.SCRIPT | Follows.IMAGE
    assert made == []


def test_a_master_side_part_gets_a_staging_directory_removed_at_the_end(
    perceus: Instance, tmp_path: Path, monkeypatch
) -> None:
    import_vnfs(perceus, tmp_path)
    add_script(perceus, "init/all/10-a", '#!/bin/sh\necho "echo a $DESTDIR"\n', executable=True)
    add_script(perceus, "init/all/20-b", '#!/bin/sh\necho "echo b $DESTDIR"\n', executable=True)
    made = _count_staging(monkeypatch)

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            return await boot(server.port, mac(1))

    out = run(scenario())
    assert out.error is None
    assert len(made) == 1  # one per session, however many parts run
    assert f"echo a {made[0]}" in out.script.decode() and f"echo b {made[0]}" in out.script.decode()
    assert not os.path.exists(made[0])


def test_assembly_calls_a_destdir_factory_only_for_an_executable_part(tmp_path: Path) -> None:
    statedir = tmp_path / "state"
    layer = statedir / "nodescripts" / "init" / "all"
    layer.mkdir(parents=True)
    (layer / "10-plain").write_text("echo plain\n")
    ctx = nodescripts.NodeContext(
        "init", "n0000", "52:54:00:00:00:01", "", 1, 0, "", "10.0.0.1", statedir, "", "", ""
    )
    calls = []

    def factory() -> Path:
        calls.append(1)
        return tmp_path

    async def assemble():
        return await nodescripts.assemble_parts_async(
            ctx, statedir / "nodescripts", statedir / "vnfs", destdir=factory
        )

    assert b"echo plain" in asyncio.run(assemble()).script and calls == []
    (layer / "20-master").write_text('#!/bin/sh\necho "echo $DESTDIR"\n')
    (layer / "20-master").chmod(0o755)
    assert f"echo {tmp_path}".encode() in asyncio.run(assemble()).script and calls == [1]


# --------------------------------------------------------------------------- the Streamer


def test_the_image_goes_through_the_streamer_not_loop_sendfile(
    perceus: Instance, tmp_path: Path, monkeypatch
) -> None:
    import_vnfs(perceus, tmp_path, filler=80)  # 80 x 40 kB: several MB

    async def no_sendfile(*args, **kw):
        raise AssertionError("loop.sendfile used")

    monkeypatch.setattr(asyncio.BaseEventLoop, "sendfile", no_sendfile)

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            outs = await asyncio.gather(*(boot(server.port, mac(i)) for i in range(4)))
            return outs, server.status()

    outs, status = run(scenario())
    image = (perceus.statedir / "vnfs").glob("*/image")
    data = next(image).read_bytes()
    assert all(out.error is None and out.image == data for out in outs)
    assert status["perceusd"]["bytes_sent_total"] >= 4 * len(data)


def _socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return a, b


def test_streamer_sends_a_range_and_reports_progress(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "file").write_bytes(data)
    streamer = Streamer()
    streamer.start()
    received = bytearray()

    def reader(sock: socket.socket, want: int) -> None:
        while len(received) < want:
            received.extend(sock.recv(1 << 16))

    async def scenario():
        a, b = _socketpair()
        with a, b, open(tmp_path / "file", "rb") as handle:
            thread = threading.Thread(target=reader, args=(b, len(data) - 1000))
            thread.start()
            job = streamer.send(a.fileno(), handle.fileno(), 1000, len(data) - 1000)
            error = await job.future
            thread.join(20)
            return error, job.sent

    try:
        error, sent = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        streamer.stop()
    assert error is None and sent == len(data) - 1000
    assert bytes(received) == data[1000:]


def test_streamer_reports_a_short_file_and_a_closed_peer(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x" * 100)
    streamer = Streamer()
    streamer.start()

    async def scenario():
        results = []
        a, b = _socketpair()
        with a, b, open(tmp_path / "file", "rb") as handle:
            job = streamer.send(a.fileno(), handle.fileno(), 0, 200)  # the file has 100 bytes
            results.append((await job.future, job.sent))
        a, b = _socketpair()
        with a, open(tmp_path / "file", "rb") as handle:
            b.close()
            job = streamer.send(a.fileno(), handle.fileno(), 0, 100)
            results.append((await job.future, job.sent))
        return results

    try:
        (short, short_sent), (closed, _) = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        streamer.stop()
    assert type(short).__name__ == "_EndedEarly" and short_sent == 100
    assert isinstance(closed, OSError)


def test_streamer_cancel_lets_go_of_the_descriptors(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(os.urandom(1 << 20))
    streamer = Streamer()
    streamer.start()

    async def scenario():
        a, b = _socketpair()  # nobody reads b: the job stalls once the socket is full
        with a, b, open(tmp_path / "file", "rb") as handle:
            before = len(os.listdir("/proc/self/fd"))
            job = streamer.send(a.fileno(), handle.fileno(), 0, 1 << 20)
            assert len(os.listdir("/proc/self/fd")) == before + 2  # the job's own duplicates
            await asyncio.sleep(0.05)
            assert not job.future.done() and 0 < job.sent < 1 << 20
            streamer.cancel(job)
            error = await job.future
            return error, before, len(os.listdir("/proc/self/fd"))

    try:
        error, before, after = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        streamer.stop()
    assert error is None and after == before


# --------------------------------------------------------------------------- the log pump


def test_log_pump_never_blocks_and_counts_what_it_drops() -> None:
    gate = threading.Event()
    written: list[str] = []

    class Slow(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            gate.wait(20)
            written.append(record.getMessage())

    pump = daemon._LogPump([Slow()], size=5)
    logger = logging.getLogger("perceusd.test-pump")
    logger.propagate = False
    logger.addHandler(pump)
    try:
        started = time.monotonic()
        for i in range(50):
            logger.warning("line %d", i)
        assert time.monotonic() - started < 5  # emit never waited for the blocked handler
        assert pump.dropped >= 40
    finally:
        gate.set()
        logger.removeHandler(pump)
        pump.close()
    assert written[0] == "line 0" and len(written) == 50 - pump.dropped + 1
    assert written[-1] == f"{pump.dropped} log lines were dropped: the log output was not keeping up"


# --------------------------------------------------------------------------- figures


def test_status_reports_check_in_latency(perceus: Instance, tmp_path: Path) -> None:
    import_vnfs(perceus, tmp_path)

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            before = server.status()["perceusd"]
            await asyncio.gather(*(boot(server.port, mac(i)) for i in range(3)))
            for _ in range(400):  # the sessions end just after the nodes' BYE
                if not server.sessions:
                    break
                await asyncio.sleep(0.05)
            return before, server.status()["perceusd"], list(server.checkins)

    before, after, samples = run(scenario())
    assert before["checkin_p50_ms"] == before["checkin_p99_ms"] == 0.0
    assert len(samples) == 3 and all(s > 0 for s in samples)
    assert 0 < after["checkin_p50_ms"] <= after["checkin_p99_ms"] == round(max(samples) * 1000, 2)


# --------------------------------------------------------------------------- nodescript cache


def _ctx(statedir: Path) -> nodescripts.NodeContext:
    return nodescripts.NodeContext(
        "init", "n0000", "52:54:00:00:00:01", "", 1, 0, "", "", statedir, "", "", ""
    )


def _names(statedir: Path) -> list[str]:
    parts = nodescripts.plan(_ctx(statedir), statedir / "nodescripts", statedir / "vnfs")
    return [p.name for p in parts]


def test_cached_listings_follow_changes(tmp_path: Path, monkeypatch) -> None:
    nodescripts.clear_caches()
    statedir = tmp_path / "state"
    layer = statedir / "nodescripts" / "init" / "all"
    layer.mkdir(parents=True)
    (layer / "10-a").write_text("a\n")
    assert _names(statedir) == ["10-a"]  # changed just now: not cached
    assert not nodescripts._listings
    monkeypatch.setattr(nodescripts, "RACY_SECONDS", 0)  # ctime cannot be set back: call it old enough
    assert _names(statedir) == ["10-a"]
    assert nodescripts._listings
    (layer / "20-b").write_text("b\n")  # the directory's mtime moves
    assert _names(statedir) == ["10-a", "20-b"]
    (layer / "10-a").unlink()
    assert _names(statedir) == ["20-b"]
    node_layer = statedir / "nodescripts" / "init" / "node" / "n0000"
    node_layer.mkdir(parents=True)  # a new layer appears
    (node_layer / "05-first").write_text("first\n")
    assert _names(statedir) == ["05-first", "20-b"]


def test_cached_symlinked_parts_are_checked_at_every_use(tmp_path: Path, monkeypatch) -> None:
    nodescripts.clear_caches()
    monkeypatch.setattr(nodescripts, "RACY_SECONDS", 0)
    statedir = tmp_path / "state"
    layer = statedir / "nodescripts" / "init" / "all"
    layer.mkdir(parents=True)
    target = statedir / "modules" / "m" / "30-m"
    target.parent.mkdir(parents=True)
    target.write_text("m\n")
    (layer / "30-m").symlink_to(target)
    assert _names(statedir) == ["30-m"]
    assert nodescripts._listings
    target.unlink()  # the layer directory does not change
    assert _names(statedir) == []  # dangling: ignored, as without the cache
    target.write_text("m\n")
    assert _names(statedir) == ["30-m"]
