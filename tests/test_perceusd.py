"""perceusd end to end: check-ins, names, WAIT, scripts, overlay, image transfer, resume."""

import asyncio
import stat
import time
from pathlib import Path

from perceus.server.daemon import serve
from perceus.stage1.protocol import Bye, ErrorCode, Follows, ObjectKind

from tests.support.instance import Instance
from tests.support.perceusd import (
    KERNEL,
    VNFS,
    Node,
    add_script,
    boot,
    import_vnfs,
    mac,
    options,
    overlay_entries,
    run,
    settings_of,
    sha256,
    wait_until,
)


def node_row(instance: Instance, nodeid: str) -> tuple | None:
    rows = instance.sql("SELECT hostname, status, ipaddr, lastcontact FROM nodes WHERE nodeid = ?", nodeid)
    return rows[0] if rows else None


def test_full_boot_streams_image_overlay_and_kernel(perceus: Instance, tmp_path: Path) -> None:
    import_vnfs(perceus, tmp_path)

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            return await boot(server.port, mac(1))

    out = run(scenario())
    assert out.error is None, out.error
    assert (out.assign.name, out.assign.vnfs, out.assign.follows) == ("n0000", VNFS, Follows.IMAGE)
    offer = out.offer
    image = (perceus.statedir / "vnfs" / VNFS / "image").read_bytes()
    assert out.image == image and sha256(out.image) == offer.image_sha256 == sha256(image)
    assert sum(c.csize for c in offer.chunks) == len(image)
    assert out.kernel == KERNEL and sha256(out.kernel) == offer.kernel_sha256
    assert sha256(out.overlay) == offer.overlay_sha256 and len(out.overlay) == offer.overlay_size
    assert offer.kernel_args == "quiet x=1"
    hostname, status, ipaddr, lastcontact = node_row(perceus, mac(1))
    assert (hostname, status, ipaddr) == ("n0000", "init", "127.0.0.1")
    assert abs(lastcontact - time.time()) < 60


def test_fifty_concurrent_unknown_nodes_get_distinct_names_in_order(
    perceus: Instance, tmp_path: Path
) -> None:
    import_vnfs(perceus, tmp_path)

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            return await asyncio.gather(*(boot(server.port, mac(i), fetch=False) for i in range(50)))

    outcomes = run(scenario())
    names = [out.assign.name for out in outcomes]
    assert sorted(names) == [f"n{i:04d}" for i in range(50)]
    rows = perceus.sql("SELECT nodeid, hostname FROM nodes")
    assert len(rows) == 50 and {dict(rows)[mac(i)] for i in range(50)} == set(names)
    assert all(dict(rows)[mac(i)] == names[i] for i in range(50))


def test_wait_for_no_vnfs_disabled_and_not_imported(perceus: Instance, tmp_path: Path) -> None:
    perceus.write_conf("perceus.conf", (perceus.sysconfdir / "perceus.conf").read_text() + "node retry = 7\n")

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            no_vnfs = await boot(server.port, mac(1))
            perceus.ok("node", "set", "vnfs", "gone-1.0", "n0000")
            not_imported = await boot(server.port, mac(1))
            perceus.ok("node", "set", "enabled", "0", "n0000")
            disabled = await boot(server.port, mac(1))
            disabled_ready = await boot(server.port, mac(1), state="ready")
            return no_vnfs, not_imported, disabled, disabled_ready

    no_vnfs, not_imported, disabled, disabled_ready = run(scenario())
    assert (no_vnfs.wait.seconds, no_vnfs.wait.reason) == (7, "no VNFS assigned")
    assert not_imported.wait.reason == "VNFS 'gone-1.0' is not imported"
    assert disabled.wait.reason == "node is disabled" and disabled_ready.wait.reason == "node is disabled"
    assert node_row(perceus, mac(1))[:3] == ("n0000", "ready", "127.0.0.1")


def test_ready_checkin_updates_status_and_unknown_nodes_are_refused(
    perceus: Instance, tmp_path: Path
) -> None:
    import_vnfs(perceus, tmp_path)
    perceus.ok("node", "add", mac(5), "ready5")
    perceus.sql(
        "UPDATE nodes SET status = 'old', ipaddr = '10.9.9.9', lastcontact = 1 WHERE nodeid = ?", mac(5)
    )
    add_script(perceus, "ready/all/10-hello", "echo ready $NODENAME\n")

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            ready = await boot(server.port, mac(5), state="ready")
            await wait_until(lambda: node_row(perceus, mac(5))[1] == "ready", "the ready check-in")
            unknown = await boot(server.port, mac(6), state="ready")
            return ready, unknown

    ready, unknown = run(scenario())
    assert (ready.assign.name, ready.assign.vnfs, ready.assign.follows) == ("ready5", VNFS, Follows.SCRIPT)
    assert b"echo ready $NODENAME" in ready.script and ready.offer is None
    _, status, ipaddr, lastcontact = node_row(perceus, mac(5))
    assert (status, ipaddr) == ("ready", "127.0.0.1") and lastcontact > 1
    assert unknown.error.code == ErrorCode.REFUSED
    assert unknown.error.message == "unknown node: check in with state init first"
    assert node_row(perceus, mac(6)) is None


def test_script_environment_and_destdir_files_reach_the_overlay(perceus: Instance, tmp_path: Path) -> None:
    import_vnfs(perceus, tmp_path)
    add_script(perceus, "init/all/10-node", 'echo "node side $IPADDR"\n')
    add_script(
        perceus,
        "init/all/20-master",
        "#!/bin/sh\n"
        'mkdir -p "$DESTDIR/etc/app" "$DESTDIR/root/.ssh" "$DESTDIR/opt/new"\n'
        'chmod 0750 "$DESTDIR/opt/new"\n'
        'echo "made for $NODENAME at $IPADDR" > "$DESTDIR/etc/app/conf"\n'
        'chmod 0640 "$DESTDIR/etc/app/conf"\n'
        'echo key > "$DESTDIR/root/.ssh/authorized_keys"\n'
        'ln -s /etc/app/conf "$DESTDIR/etc/app/link"\n'
        'echo "echo sysconf=$PERCEUS_SYSCONFDIR"\n',
        executable=True,
    )

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            return await boot(server.port, mac(2))

    out = run(scenario())
    assert out.assign.follows == Follows.SCRIPT | Follows.IMAGE
    script = out.script.decode()
    assert "IPADDR=127.0.0.1; export IPADDR" in script and "NODENAME=n0000; export NODENAME" in script
    assert "DESTDIR" not in script.split("# perceus nodescript part:")[0]  # never exported to the node
    assert f"echo sysconf={perceus.sysconfdir}" in script
    entries = overlay_entries(out.overlay)
    assert entries["etc/app/conf"].data == b"made for n0000 at 127.0.0.1\n"
    assert stat.S_IMODE(entries["etc/app/conf"].mode) == 0o640
    assert entries["etc/app/link"].data == b"/etc/app/conf" and stat.S_ISLNK(entries["etc/app/link"].mode)
    assert stat.S_ISDIR(entries["opt/new"].mode) and stat.S_IMODE(entries["opt/new"].mode) == 0o750
    assert entries["root/.ssh/authorized_keys"].data == b"key\n"
    assert "root" not in entries and "etc" not in entries  # the image has them: modes stay the image's
    assert all(e.uid == 0 and e.gid == 0 for e in entries.values())
    conf = entries["etc/perceus/node.conf"].data.decode()
    assert 'NODENAME="n0000"' in conf and f'NODEID="{mac(2)}"' in conf and f'VNFS="{VNFS}"' in conf
    assert f'VNFS_SHA256="{out.offer.image_sha256}"' in conf and 'PROVISIOND_INTERVAL="300"' in conf
    assert 'MASTERS="127.0.0.1:' in conf
    assert stat.S_IMODE(entries["etc/ssh/ssh_host_ed25519_key"].mode) == 0o600  # an open site: every node
    assert stat.S_IMODE(entries["etc/ssh/ssh_host_ed25519_key.pub"].mode) == 0o644
    assert not list(Path("/tmp").glob("perceusd.*/etc/app/conf"))  # the staging directory is gone


def test_script_failure_on_the_node_and_on_the_master(perceus: Instance, tmp_path: Path) -> None:
    import_vnfs(perceus, tmp_path)
    add_script(perceus, "init/all/10-node", "exit 3\n")

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            node_failed = await boot(server.port, mac(3), status=3)
            add_script(
                perceus, "init/node/n0000/20-broken", "#!/bin/sh\necho nope >&2\nexit 1\n", executable=True
            )
            master_failed = await boot(server.port, mac(3))
            other = await boot(server.port, mac(4))
            return node_failed, master_failed, other

    node_failed, master_failed, other = run(scenario())
    assert node_failed.error.code == ErrorCode.REFUSED
    assert node_failed.error.message == "nodescript failed with status 3" and node_failed.offer is None
    assert master_failed.assign is None and master_failed.error.code == ErrorCode.INTERNAL
    assert "exited with status 1: nope" in master_failed.error.message
    assert other.error is None and other.assign.name == "n0001"


def test_resume_from_an_offset_in_the_same_and_a_new_session(perceus: Instance, tmp_path: Path) -> None:
    import_vnfs(perceus, tmp_path, filler=20)
    image = (perceus.statedir / "vnfs" / VNFS / "image").read_bytes()
    half = len(image) // 2 + 3

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            first = await boot(server.port, mac(7), fetch=False, bye=False)
            async with Node(server.port, mac(7)) as node:
                out = await node.boot(fetch=False, bye=False)
                assert out.offer.image_sha256 == first.offer.image_sha256
                head = await node.fetch(ObjectKind.IMAGE, 0, half)
                tail = await node.fetch(ObjectKind.IMAGE, half)
                again = await node.fetch(ObjectKind.IMAGE, 100, 50)
                kernel_tail = await node.fetch(ObjectKind.KERNEL, len(KERNEL) - 10)
                empty = await node.fetch(ObjectKind.KERNEL, len(KERNEL))
                await node.send(Bye("simulated"))
            return head, tail, again, kernel_tail, empty

    head, tail, again, kernel_tail, empty = run(scenario())
    assert head + tail == image and again == image[100:150]
    assert kernel_tail == KERNEL[-10:] and empty == b""
