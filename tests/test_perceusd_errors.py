"""perceusd answers every broken node with the right ERROR, and other sessions never notice."""

import asyncio
import struct
import zlib
from pathlib import Path

from perceus.server.daemon import serve
from perceus.stage1.protocol import MAGIC, ErrorCode, ImageRequest, ObjectKind, encode_frame

from tests.support.instance import Instance
from tests.support.perceusd import Node, boot, import_vnfs, mac, options, run, settings_of


def frame_header(version: int = 1, type_: int = 1, flags: int = 0, length: int = 0) -> bytes:
    return MAGIC + struct.pack(">BBHI", version, type_, flags, length)


async def bad_node(port: int, data: bytes, *, hello_first: bool = False) -> ErrorCode:
    async with Node(port, mac(999)) as node:
        if hello_first:
            await node.send(node.conn.make_hello(mac(999), "init"))
        await node.raw(data)
        error = await node.closed_with_error()
        return error.code, error.message


def test_each_bad_input_gets_its_error_and_good_sessions_go_on(perceus: Instance, tmp_path: Path) -> None:
    import_vnfs(perceus, tmp_path, filler=30)
    header = frame_header(length=2)
    bad_crc = header + b"\0\0" + struct.pack(">I", zlib.crc32(header + b"\0\0") ^ 1)

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path, max_idle=0.5)) as server:
            port = server.port
            bad = [
                bad_node(port, b"GET / HTTP/1.0\r\n\r\n"),
                bad_node(port, frame_header(version=2, length=0)),
                bad_node(port, frame_header(type_=0x42)),
                bad_node(port, frame_header(length=(1 << 20) + 1)),
                bad_node(port, bad_crc),
                bad_node(port, encode_frame(1, b"\x01\x00\x01")),  # a truncated HELLO
                bad_node(port, encode_frame(0x0F, b"\0\0")),  # BYE before HELLO
                bad_node(port, b""),  # silent: timed out
            ]
            good = [boot(port, mac(i)) for i in range(8)]
            results = await asyncio.gather(*bad, *good)
            return results[: len(bad)], results[len(bad) :]

    errors, goods = run(scenario())
    codes = [code for code, _ in errors]
    assert codes == [
        ErrorCode.BAD_MAGIC,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.UNKNOWN_TYPE,
        ErrorCode.TOO_LARGE,
        ErrorCode.BAD_CRC,
        ErrorCode.MALFORMED,
        ErrorCode.UNEXPECTED,
        ErrorCode.TIMEOUT,
    ], errors
    assert "supported versions: 1" in errors[1][1] and "state HELLO" in errors[7][1]
    assert all(out.error is None and len(out.image) == out.offer.image_size for out in goods)
    assert sorted(out.assign.name for out in goods) == [f"n{i:04d}" for i in range(8)]


def test_request_out_of_range_and_a_node_that_vanishes(perceus: Instance, tmp_path: Path) -> None:
    import_vnfs(perceus, tmp_path)

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            async with Node(server.port, mac(1)) as node:
                out = await node.boot(fetch=False, bye=False)
                await node.send_unchecked(ImageRequest(ObjectKind.KERNEL, out.offer.kernel_size + 1, 0))
                error = await node.closed_with_error()
            async with Node(server.port, mac(2)) as node:
                await node.boot(fetch=False, bye=False)  # then closes mid-session
            after = await boot(server.port, mac(3))
            return error, after, server.status()

    error, after, status = run(scenario())
    assert error.code == ErrorCode.BAD_RANGE and "KERNEL" in error.message
    assert after.error is None and after.kernel
    assert status["sessions"] == [] or all(s["nodeid"] != mac(2) for s in status["sessions"])


def test_too_many_sessions_are_refused_quickly(perceus: Instance, tmp_path: Path) -> None:
    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path, max_sessions=1)) as server:
            async with Node(server.port, mac(1)):  # holds the only slot, silent
                async with Node(server.port, mac(2)) as second:
                    busy = await second.closed_with_error()
            return busy, server.totals["refused_busy"]

    busy, refused = run(scenario())
    assert busy.code == ErrorCode.REFUSED and "busy" in busy.message and refused == 1
