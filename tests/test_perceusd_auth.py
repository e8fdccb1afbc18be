"""Site key: who gets served, and who gets secret module parts and the SSH host keys."""

import json
import os
from pathlib import Path

import pytest

from perceus.server import sitekey
from perceus.server.daemon import serve
from perceus.server.errors import PerceusError
from perceus.server.paths import Paths
from perceus.stage1.protocol import AuthChallenge, AuthResponse, ErrorCode

from tests.support.instance import Instance
from tests.support.perceusd import (
    Node,
    add_script,
    boot,
    import_vnfs,
    mac,
    options,
    overlay_entries,
    perceusd_process,
    run,
    settings_of,
)

KEY = b"our site key, 32 bytes long!!!!!"


def write_key(instance: Instance, data: bytes = KEY, mode: int = 0o600) -> Path:
    path = instance.sysconfdir / "site.key"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def set_auth(instance: Instance, value: str) -> None:
    conf = instance.sysconfdir / "perceus.conf"
    conf.write_text(conf.read_text() + f"node auth = {value}\n")


def secret_module(instance: Instance) -> None:
    """A hand-made secret module with an init part, activated for every node, beside a plain part."""
    module = instance.statedir / "modules" / "secretmod"
    (module / "nodescripts" / "init").mkdir(parents=True)
    info = {"name": "secretmod", "version": "1.0", "description": "t", "states": ["init/all"], "secret": True}
    (module / "module.json").write_text(json.dumps(info))
    (module / "nodescripts" / "init" / "50-secret").write_text("echo the secret part\n")
    link = instance.statedir / "nodescripts" / "init" / "all" / "50-secret"
    link.symlink_to(module / "nodescripts" / "init" / "50-secret")
    add_script(instance, "init/all/10-public", "echo the public part\n")


def test_required_auth_refuses_keyless_and_wrong_keys(perceus: Instance, tmp_path: Path) -> None:
    import_vnfs(perceus, tmp_path)
    write_key(perceus)
    set_auth(perceus, "required")

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            keyless = await boot(server.port, mac(1))
            wrong = await boot(server.port, mac(2), site_key=b"x" * 32)
            right = await boot(server.port, mac(3), site_key=KEY)
            async with Node(server.port, mac(4)) as forger:  # a made-up tag: the master refuses it
                await forger.send(forger.conn.make_hello(mac(4), "init"))
                assert isinstance(await forger.event(), AuthChallenge)
                await forger.send(AuthResponse(os.urandom(32)))
                forged = await forger.closed_with_error()
            return keyless, wrong, right, forged

    keyless, wrong, right, forged = run(scenario())
    assert forged.code == ErrorCode.AUTH_FAILED and "does not hold this site key" in forged.message
    assert keyless.error.code == ErrorCode.AUTH_REQUIRED and keyless.assign is None
    assert wrong.error.code == ErrorCode.AUTH_FAILED and wrong.assign is None  # the node rejects our proof
    assert right.error is None and right.assign.name == "n0000"  # refused nodes were never added
    assert [row[0] for row in perceus.sql("SELECT nodeid FROM nodes")] == [mac(3)]


def test_secrets_only_to_authenticated_nodes(perceus: Instance, tmp_path: Path) -> None:
    import_vnfs(perceus, tmp_path)
    write_key(perceus)
    secret_module(perceus)

    async def scenario():
        async with serve(settings_of(perceus), options(tmp_path)) as server:
            return await boot(server.port, mac(1)), await boot(server.port, mac(2), site_key=KEY)

    keyless, keyed = run(scenario())
    assert b"the public part" in keyless.script and b"the secret part" not in keyless.script
    assert b"the public part" in keyed.script and b"the secret part" in keyed.script
    assert not any(name.startswith("etc/ssh/") for name in overlay_entries(keyless.overlay))
    assert "etc/ssh/ssh_host_ed25519_key" in overlay_entries(keyed.overlay)


@pytest.mark.parametrize(
    ("data", "mode", "message"),
    [
        (KEY, 0o640, "readable by others"),
        (b"short", 0o600, "has 5 bytes"),
        (b"x" * 5000, 0o600, "more than 4096"),
    ],
)
def test_unusable_site_keys_are_refused(tmp_path: Path, data: bytes, mode: int, message: str) -> None:
    (tmp_path / "site.key").write_bytes(data)
    (tmp_path / "site.key").chmod(mode)
    with pytest.raises(PerceusError, match=message):
        sitekey.load(Paths(tmp_path, tmp_path))


def test_no_site_key_is_none(tmp_path: Path) -> None:
    assert sitekey.load(Paths(tmp_path, tmp_path)) is None
    os.symlink("/etc/passwd", tmp_path / "site.key")
    with pytest.raises(PerceusError, match="cannot open"):
        sitekey.load(Paths(tmp_path, tmp_path))


def test_required_auth_without_a_key_stops_perceusd_at_start(perceus: Instance, tmp_path: Path) -> None:
    set_auth(perceus, "required")
    proc = perceusd_process(perceus, tmp_path, "--port", "0", "--bind", "127.0.0.1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("perceusd: error: node auth = required, but there is no site key")
    )
