"""perceusd's control socket and ``perceus node status --watch``."""

import asyncio
import json
import subprocess
from pathlib import Path

from perceus.server import control
from perceus.server.daemon import serve
from perceus.stage1.protocol import Bye, ImageRequest, ObjectKind, RawBytes

from tests.support.instance import BIN, Instance
from tests.support.perceusd import (
    VNFS,
    Node,
    import_vnfs,
    mac,
    options,
    run,
    settings_of,
)


async def ask(path: Path, line: bytes) -> list[dict]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(line)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return [json.loads(x) for x in data.splitlines()]


async def poll(sock: Path, good) -> dict:
    """Status documents until ``good(document)`` (bounded); that document."""
    for _ in range(1000):
        (document,) = await ask(sock, b"status\n")
        if good(document):
            return document
        await asyncio.sleep(0.02)
    raise AssertionError(f"never saw the expected status: {document}")


def test_status_during_a_transfer(perceus: Instance, tmp_path: Path) -> None:
    import_vnfs(perceus, tmp_path, filler=200)  # ~8 MB of incompressible files
    sock = tmp_path / "run" / "perceusd.sock"

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            async with Node(server.port, mac(1)) as node:
                out = await node.boot(fetch=False, bye=False)
                await node.send(ImageRequest(ObjectKind.IMAGE))
                await node.event()  # IMAGE_DATA, then the bytes, read slowly while we look
                got, document = 0, None
                while got < out.offer.image_size:
                    event = await node.event()
                    assert isinstance(event, RawBytes)
                    got += len(event.data)
                    if document is None:
                        (seen,) = await ask(sock, b"status\n")
                        if seen["sessions"] and seen["sessions"][0]["bytes_sent"]:
                            document = seen
                await node.send(Bye("simulated"))
            after = await poll(sock, lambda d: not d["sessions"])
            return out, document, after

    out, document, after = run(scenario())
    (session,) = document["sessions"]
    assert session["nodeid"] == mac(1) and session["name"] == "n0000" and session["state"] == "init"
    assert session["phase"] == "image" and session["peer"] == "127.0.0.1"
    assert 0 < session["bytes_sent"] <= out.offer.image_size
    assert session["bytes_total"] == out.offer.image_size + out.offer.overlay_size + out.offer.kernel_size
    assert session["rate_bps"] >= 0 and session["started"] > 0
    assert document["perceusd"]["active_sessions"] == 1
    assert after["perceusd"]["bytes_sent_total"] == out.offer.image_size
    assert after["perceusd"]["sessions_total"] == 1 and after["perceusd"]["nodes_added"] == 1


def test_bad_control_clients_get_an_error_and_change_nothing(perceus: Instance, tmp_path: Path) -> None:
    sock = tmp_path / "run" / "perceusd.sock"

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            answers = [
                await ask(sock, b"frobnicate\n"),
                await ask(sock, b"watch -1\n"),
                await ask(sock, b"watch nan\n"),
                await ask(sock, b"\xff\xfe\n"),
                await ask(sock, b"x" * 5000),
                await ask(sock, b"\n"),
            ]
            reader, writer = await asyncio.open_unix_connection(str(sock))
            writer.write(b"watch 0.1\n")
            watched = [json.loads(await asyncio.wait_for(reader.readline(), 20)) for _ in range(3)]
            writer.close()
            return answers, watched, server.status()

    answers, watched, status = run(scenario())
    assert [set(doc) for doc in watched] == [{"perceusd", "sessions"}] * 3
    assert all(len(a) == 1 and "error" in a[0] for a in answers), answers
    assert status["sessions"] == []
    assert (sock.parent / "perceusd.sock").exists() is False  # removed when perceusd stopped


def test_parse_command() -> None:
    assert control.parse_command(b"status") == ("status", 0.0)
    assert control.parse_command(b"watch 0.5") == ("watch", 0.5)
    assert control.parse_command(b"watch") == ("watch", 1.0)
    for bad in (b"", b"watch 0", b"watch inf", b"status now", b"watch 1 2", b"\x80"):
        try:
            control.parse_command(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_node_status_watch(perceus: Instance, tmp_path: Path) -> None:
    perceus.ok("node", "add", mac(9), "quiet9")
    env = dict(perceus.env, PERCEUS_RUNDIR=str(tmp_path / "run"))

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            async with Node(server.port, mac(1)) as node:  # WAITs (no VNFS) but is added first
                await node.boot()
            import_vnfs(perceus, tmp_path)
            perceus.ok("node", "set", "vnfs", VNFS, "quiet9")
            async with Node(server.port, mac(9)) as held:
                await held.boot(fetch=False, bye=False)  # offered, live in phase "image"
                proc = await asyncio.create_subprocess_exec(
                    str(BIN / "perceus"),
                    "node",
                    "status",
                    "--watch",
                    "--interval",
                    "0.1",
                    "--count",
                    "2",
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await asyncio.wait_for(proc.communicate(), 60)
                json_proc = await asyncio.create_subprocess_exec(
                    str(BIN / "perceus"), "node", "status", "--watch", "--json", "--count", "1",
                    env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                json_out, _ = await asyncio.wait_for(json_proc.communicate(), 60)
            return proc.returncode, out.decode(), err.decode(), json.loads(json_out)

    status, out, err, document = run(scenario())
    assert status == 0, err
    tables = out.strip().split("\n\n")
    assert len(tables) == 2
    lines = tables[0].splitlines()
    assert lines[0].startswith("HostName") and lines[0].split()[-3:] == ["Phase", "Sent", "Rate"]
    assert any(line.startswith("n0000 ") and " init " in line for line in lines)
    assert any(line.startswith("quiet9 ") and " image " in line for line in lines)
    assert lines[-1].startswith("perceusd: ")
    assert {row["hostname"] for row in document["nodes"]} == {"n0000", "quiet9"}


def test_node_status_watch_without_perceusd(perceus: Instance, tmp_path: Path) -> None:
    env = dict(perceus.env, PERCEUS_RUNDIR=str(tmp_path / "nothing"))
    proc = subprocess.run(
        [str(BIN / "perceus"), "node", "status", "--watch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "perceus: error: perceusd is not running (no control socket) "
        f"({tmp_path / 'nothing' / 'perceusd.sock'})"
    )
    assert perceus.ok("node", "status").out == perceus.ok("node", "status").out  # the plain view is unchanged
