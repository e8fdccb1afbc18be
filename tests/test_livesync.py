"""perceus vnfs livesync: the rsync command, and real rsync over ssh into a network namespace."""

import os
import shlex
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from perceus.server.db import Node
from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.livesync import livesync, node_targets, parse_skip, rsync_command

from tests.support.netns import Namespace, SshServer, namespace, sshd

VNFS = "debian-12-1.stateless.x86_64"
HYBRID = f"/var/lib/perceus/vnfs/{VNFS}/hybrid"
SKIP = """\
# This file specifies which files should be skipped when a livesync is done.
/etc/resolv.conf
*.keep

/etc/passwd
/etc/ssh/ssh_host_
"""
HYBRIDIZE = ["/usr/share/doc", "/usr/lib/*/locale"]


# --- the skip list and the command line ---


def test_parse_skip() -> None:
    assert parse_skip(SKIP, "livesync.skip") == [
        "/etc/resolv.conf",
        "*.keep",
        "/etc/passwd",
        "/etc/ssh/ssh_host_",
    ]
    assert parse_skip("  resolv.conf  \nresolv.conf\n", "s") == ["resolv.conf"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("!", "filter rules"),
        ("- /etc", "filter rules"),
        ("+ /etc", "filter rules"),
        ("/", "skip everything"),
        ("//", "skip everything"),
        ("a\tb", "not a file name"),
    ],
)
def test_parse_skip_refuses_with_source_and_line(line: str, message: str) -> None:
    with pytest.raises(PerceusError, match=message) as info:
        parse_skip(f"/etc/passwd\n# comment\n{line}\n", "/etc/perceus/vnfs/x/livesync.skip")
    assert info.value.where == "/etc/perceus/vnfs/x/livesync.skip:3"


def test_rsync_command_flags_and_excludes() -> None:
    command = rsync_command(
        Path("/vnfs/rootfs"),
        "n0001",
        ["/etc/resolv.conf", "*.keep"],
        HYBRIDIZE,
        ssh_options=["-p", "2222", "-o", "ConnectTimeout=3"],
        dry_run=False,
    )
    assert command[0] == "rsync"
    for flag in ("-aHx", "--numeric-ids", "--delete", "--delete-delay", "--delay-updates"):
        assert flag in command
    assert "--inplace" not in command and "--delete-excluded" not in command and "--dry-run" not in command
    assert command[-2:] == ["/vnfs/rootfs/", "n0001:/"]
    excludes = [arg.removeprefix("--exclude=") for arg in command if arg.startswith("--exclude=")]
    assert excludes == [
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/tmp",
        "/var/lib/perceus",
        "/usr/share/doc",
        "/usr/lib/*/locale",
        "/etc/resolv.conf*",  # skip entries are names or partial names: a prefix
        "*.keep*",
    ]
    ssh = shlex.split(command[command.index("-e") + 1])
    assert ssh[:5] == ["ssh", "-p", "2222", "-o", "ConnectTimeout=3"]  # the caller's options come first
    assert "BatchMode=yes" in ssh


def test_hybridized_paths_are_anchored() -> None:
    command = rsync_command(Path("/v"), "n1", [], ["usr/lib/x86_64-linux-gnu/locale", "/usr/share/doc"])
    excludes = [arg.removeprefix("--exclude=") for arg in command if arg.startswith("--exclude=")]
    assert excludes[-2:] == ["/usr/lib/x86_64-linux-gnu/locale", "/usr/share/doc"]


def test_rsync_command_dry_run_remote_root_and_ipv6() -> None:
    command = rsync_command(
        Path("/vnfs/rootfs/"), "fd00::5", [], [], ssh_options=[], dry_run=True, remote_root="/srv/node/"
    )
    assert "--dry-run" in command
    assert command[-1] == "[fd00::5]:/srv/node/"


@pytest.mark.parametrize(
    "host", ["-oProxyCommand=touch /tmp/x", "", "a b", "host;reboot", "user@host", "a/b"]
)
def test_rsync_command_refuses_hosts_ssh_could_misread(host: str) -> None:
    with pytest.raises(InvalidRequest, match="not a node address"):
        rsync_command(Path("/vnfs"), host, [], [], ssh_options=[], dry_run=False)


def test_rsync_command_refuses_bad_options_and_roots() -> None:
    with pytest.raises(InvalidRequest, match="ssh option"):
        rsync_command(Path("/vnfs"), "n1", [], [], ssh_options=["-o", "ProxyCommand='x'"], dry_run=False)
    with pytest.raises(InvalidRequest, match="remote root"):
        rsync_command(Path("/vnfs"), "n1", [], [], ssh_options=[], dry_run=False, remote_root="relative")


def test_node_targets_prefer_the_address_perceusd_saw() -> None:
    def node(hostname: str, ipaddr: str) -> Node:
        return Node("00:00:00:00:00:01", hostname, "g", VNFS, 1, 0, "", "ready", ipaddr, None, 0, 0)

    assert node_targets([node("n0000", "10.0.0.5"), node("n0001", "")]) == [
        ("n0000", "10.0.0.5"),
        ("n0001", "n0001"),
    ]


def test_livesync_refuses_a_missing_tree_and_the_masters_root(tmp_path: Path) -> None:
    with pytest.raises(PerceusError, match="VNFS tree not found"):
        livesync(tmp_path / "missing", [("n1", "10.0.0.1")], [], [], timeout=5)
    with pytest.raises(InvalidRequest, match="master's own root"):
        livesync(Path("/"), [("n1", "10.0.0.1")], [], [], timeout=5)


# --- bounded parallelism and outcomes, with a stand-in rsync ---

FAKE_RSYNC = """\
import os, sys, time
state = os.environ["FAKE_STATE"]
me = os.path.join(state, "running", str(os.getpid()))
os.mkdir(me)
with open(os.path.join(state, "log"), "a") as log:
    log.write(f"{len(os.listdir(os.path.join(state, 'running')))} {sys.argv[-1]}\\n")
time.sleep(0.2)
os.rmdir(me)
host = sys.argv[-1].split(":")[0]
if host.startswith("sleep"):
    os.makedirs(os.path.join(state, "pids"), exist_ok=True)
    with open(os.path.join(state, "pids", host), "w") as pid:
        pid.write(str(os.getpid()))
    time.sleep(120)
if host == "fast":  # finishes once both sleepers are surely running
    deadline = time.monotonic() + 30
    while len(os.listdir(os.path.join(state, "pids"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
if host == "vanished":
    print(">f+++++++++ a"); sys.exit(24)
if host == "partial":
    print("rsync: [receiver] mkstemp failed: Read-only file system (30)", file=sys.stderr)
    print("rsync error: some files/attrs were not transferred (code 23)", file=sys.stderr)
    sys.exit(23)
if host == "killed":
    os.kill(os.getpid(), 9)
print(">f+++++++++ a\\n>f.st...... b\\n*deleting   c")
"""


@pytest.fixture
def fake_rsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    (state / "running").mkdir(parents=True)
    script = tmp_path / "rsync"
    script.write_text(f"#!{sys.executable}\n{FAKE_RSYNC}")
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_STATE", str(state))
    return script


def test_at_most_parallel_nodes_run_at_once(tmp_path: Path, fake_rsync: Path) -> None:
    (tmp_path / "vnfs").mkdir()
    nodes = [(f"n{i}", f"10.0.0.{i}") for i in range(7)]
    seen = []
    results = livesync(
        tmp_path / "vnfs",
        nodes,
        [],
        [],
        parallel=2,
        timeout=60,
        rsync=str(fake_rsync),
        progress=lambda host, result: seen.append(host),
    )
    assert list(results) == [host for host, _ in nodes]
    assert all(result == ("ok", "changed 3 items") for result in results.values())
    assert sorted(seen) == sorted(host for host, _ in nodes)
    log = (tmp_path / "state/log").read_text().splitlines()
    assert len(log) == 7
    assert max(int(line.split()[0]) for line in log) <= 2
    assert list((tmp_path / "state/running").iterdir()) == []


def test_each_outcome_is_reported_per_node(tmp_path: Path, fake_rsync: Path) -> None:
    (tmp_path / "vnfs").mkdir()
    nodes = [
        ("n1", "10.0.0.1"),
        ("n2", "vanished"),
        ("n3", "partial"),
        ("n4", "killed"),
        ("n5", "-oProxyCommand=x"),  # a hostile address in the database fails that node alone
        ("n6", ""),  # no address yet: the hostname is used
        ("n1", "10.0.0.9"),  # a node named twice is synced once
    ]
    results = livesync(tmp_path / "vnfs", nodes, [], [], dry_run=True, timeout=60, rsync=str(fake_rsync))
    assert results == {
        "n1": ("ok", "would change 3 items"),
        "n2": ("ok", "would change 1 item (some source files vanished during the transfer)"),
        "n3": ("failed", "rsync exit 23: rsync: [receiver] mkstemp failed: Read-only file system (30)"),
        "n4": ("failed", "rsync killed by signal 9"),
        "n5": ("failed", "not a node address: '-oProxyCommand=x'"),
        "n6": ("ok", "would change 3 items"),
    }
    hosts = [line.split()[1] for line in (tmp_path / "state/log").read_text().splitlines()]
    assert sorted(hosts) == sorted(["10.0.0.1:/", "vanished:/", "partial:/", "killed:/", "n6:/"])


def test_an_interruption_stops_every_node(tmp_path: Path, fake_rsync: Path) -> None:
    """rsyncs run in their own sessions, out of Ctrl-C's reach: livesync kills them itself."""
    (tmp_path / "vnfs").mkdir()
    (tmp_path / "state/pids").mkdir()

    def progress(host: str, result: object) -> None:
        raise BrokenPipeError("the terminal went away")

    nodes = [("s1", "sleep1"), ("s2", "sleep2"), ("f", "fast")]
    with pytest.raises(BrokenPipeError):
        livesync(
            tmp_path / "vnfs",
            nodes,
            [],
            [],
            parallel=3,
            timeout=300,
            rsync=str(fake_rsync),
            progress=progress,
        )
    pids = [int(path.read_text()) for path in (tmp_path / "state/pids").iterdir()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_missing_rsync_fails_each_node(tmp_path: Path) -> None:
    (tmp_path / "vnfs").mkdir()
    results = livesync(
        tmp_path / "vnfs", [("n1", "10.0.0.1")], [], [], timeout=5, rsync=str(tmp_path / "none")
    )
    assert results["n1"].status == "failed" and "cannot run" in results["n1"].message


# --- the real thing: rsync over ssh to an sshd in a network namespace ---


@pytest.fixture(scope="module")
def node_ns() -> Iterator[Namespace]:
    with namespace("l") as ns:
        yield ns


@pytest.fixture(scope="module")
def server(node_ns: Namespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with sshd(node_ns, tmp_path_factory.mktemp("sshd")) as running:
        yield running


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def vnfs_tree(root: Path) -> Path:
    """The VNFS working tree on the master."""
    write(root / "etc/hostname", "vnfs\n")
    write(root / "etc/motd", "new motd\n")
    write(root / "etc/resolv.conf", "nameserver 10.0.0.1\n")
    write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    write(root / "usr/bin/tool", "#!/bin/sh\necho v2\n", 0o755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-alias")
    write(root / "usr/share/doc/pkg/README", "documentation\n")
    write(root / "usr/lib/x86_64-linux-gnu/locale/C.utf8/LC_CTYPE", "ctype\n")
    write(root / "usr/lib/x86_64-linux-gnu/libfoo.so.1", "lib v2\n")
    write(root / "opt/app/data", "owned by 4321\n")
    os.chown(root / "opt/app/data", 4321, 4321)  # no such user on the master: must stay numeric
    (root / "usr/bin/foo").symlink_to("tool")
    write(root / "var/lib/perceus/from-vnfs", "must not reach the node\n")
    write(root / "tmp/from-vnfs", "must not reach the node\n")
    (root / "proc").mkdir()
    write(root / "etc/site.keep", "vnfs version of a skipped name\n")
    write(root / "etc/ssh/sshd_config", "PermitRootLogin prohibit-password\n")
    write(root / "etc/ssh/ssh_host_rsa_key", "the VNFS's key: must not replace the node's\n", 0o600)
    return root


def live_root(root: Path) -> Path:
    """A running node's root filesystem, as booted from an earlier image."""
    write(root / "etc/hostname", "old\n")
    write(root / "etc/motd", "old motd\n")
    write(root / "etc/resolv.conf", "nameserver 192.168.1.1  # from the node's DHCP\n")
    write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\ncluster:x:5000:5000::/home/c:/bin/sh\n")
    write(root / "etc/stale.conf", "gone from the VNFS\n")
    write(root / "usr/bin/tool", "#!/bin/sh\necho v1\n", 0o755)
    write(root / "usr/bin/old-tool", "removed in the VNFS\n", 0o755)
    (root / "usr/share").mkdir(parents=True)
    (root / "usr/share/doc").symlink_to(f"{HYBRID}/usr/share/doc")
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu/locale").symlink_to(f"{HYBRID}/usr/lib/x86_64-linux-gnu/locale")
    write(root / "var/lib/perceus/mounted", "the NFS mount of the state directory\n")
    write(root / "tmp/session", "a user's temporary file\n")
    write(root / "run/sshd.pid", "1234\n")
    write(root / "proc/cpuinfo", "not really proc\n")
    write(root / "var/log/site.keep", "a node-local file under a skipped name\n")
    write(root / "etc/site.keep", "node version of a skipped name\n")
    write(root / "etc/ssh/ssh_host_ed25519_key", "the node's own host key\n", 0o600)
    write(root / "etc/ssh/ssh_host_rsa_key", "the node's own rsa key\n", 0o600)
    for dirpath, dirnames, filenames in os.walk(root):  # booted from an image built long ago
        for name in dirnames + filenames:
            os.utime(Path(dirpath, name), (1_000_000_000, 1_000_000_000), follow_symlinks=False)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            content = (
                os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
            )
            out[str(path.relative_to(root))] = (
                stat.S_IFMT(info.st_mode),
                stat.S_IMODE(info.st_mode),
                info.st_uid,
                content,
            )
    return out


@pytest.mark.netns
def test_livesync_over_ssh(server: SshServer, node_ns: Namespace, tmp_path: Path) -> None:
    source = vnfs_tree(tmp_path / "vnfs")
    node = live_root(tmp_path / "node")
    skip = parse_skip(SKIP, "livesync.skip")
    before = snapshot(node)

    dry = livesync(
        source,
        [("n0000", server.address)],
        skip,
        HYBRIDIZE,
        ssh_options=server.ssh_options,
        dry_run=True,
        timeout=120,
        remote_root=str(node),
    )
    assert dry["n0000"].status == "ok", (dry, server.log.read_text())
    assert dry["n0000"].message.startswith("would change ")
    assert snapshot(node) == before  # a dry run touches nothing

    results = livesync(
        source,
        [("n0000", server.address), ("n0001", node_ns.spare_address)],  # n0001: nothing listens there
        skip,
        HYBRIDIZE,
        ssh_options=server.ssh_options,
        parallel=2,
        timeout=120,
        remote_root=str(node),
    )
    assert results["n0000"].status == "ok", (results, server.log.read_text())
    assert results["n0001"].status == "failed"
    assert "Connection refused" in results["n0001"].message

    # changed files arrive, with modes, numeric owners, hard links and symlinks
    assert (node / "etc/hostname").read_text() == "vnfs\n"
    assert (node / "etc/motd").read_text() == "new motd\n"
    assert (node / "usr/bin/tool").read_text() == "#!/bin/sh\necho v2\n"
    assert stat.S_IMODE((node / "usr/bin/tool").stat().st_mode) == 0o755
    assert (node / "usr/bin/tool").stat().st_ino == (node / "usr/bin/tool-alias").stat().st_ino
    assert os.readlink(node / "usr/bin/foo") == "tool"
    assert (node / "usr/lib/x86_64-linux-gnu/libfoo.so.1").read_text() == "lib v2\n"
    data = (node / "opt/app/data").stat()
    assert (data.st_uid, data.st_gid) == (4321, 4321)
    # files gone from the VNFS are deleted
    assert not (node / "etc/stale.conf").exists()
    assert not (node / "usr/bin/old-tool").exists()
    # skipped files are neither transferred nor deleted
    assert (node / "etc/resolv.conf").read_text() == "nameserver 192.168.1.1  # from the node's DHCP\n"
    assert "cluster:x:5000" in (node / "etc/passwd").read_text()
    assert (node / "etc/site.keep").read_text() == "node version of a skipped name\n"
    assert (node / "var/log/site.keep").exists()
    assert (node / "etc/ssh/sshd_config").exists()  # a partial name: only the host keys are skipped
    assert (node / "etc/ssh/ssh_host_ed25519_key").read_text() == "the node's own host key\n"
    assert (node / "etc/ssh/ssh_host_rsa_key").read_text() == "the node's own rsa key\n"
    # hybridized paths stay symlinks into the NFS mount
    assert os.readlink(node / "usr/share/doc") == f"{HYBRID}/usr/share/doc"
    assert (
        os.readlink(node / "usr/lib/x86_64-linux-gnu/locale") == f"{HYBRID}/usr/lib/x86_64-linux-gnu/locale"
    )
    # kernel, runtime and state trees are left alone both ways
    assert (node / "var/lib/perceus/mounted").exists() and not (node / "var/lib/perceus/from-vnfs").exists()
    assert (node / "tmp/session").exists() and not (node / "tmp/from-vnfs").exists()
    assert (node / "run/sshd.pid").exists()
    assert (node / "proc/cpuinfo").exists()
    # no rsync leftovers from --delay-updates
    assert not [p for p in node.rglob(".~tmp~")]

    again = livesync(
        source,
        [("n0000", server.address)],
        skip,
        HYBRIDIZE,
        ssh_options=server.ssh_options,
        timeout=120,
        remote_root=str(node),
    )
    # a second sync finds nothing to do; var/log stays because it holds a skipped file
    assert again == {"n0000": ("ok", "changed 0 items; 1 note: cannot delete non-empty directory: var/log")}


@pytest.mark.netns
def test_a_node_that_hangs_is_killed_at_its_deadline(
    server: SshServer, node_ns: Namespace, tmp_path: Path
) -> None:
    """A peer that accepts the connection and never speaks: livesync's own timeout ends it."""
    source = vnfs_tree(tmp_path / "vnfs")
    silent = socket.create_server(
        (node_ns.host_address, server.port)
    )  # our own address, in the root namespace
    try:
        options = [*server.ssh_options, "-o", "ConnectTimeout=120"]  # ssh would wait longer than we do
        results = livesync(
            source,
            [("n0002", node_ns.host_address)],
            [],
            [],
            ssh_options=options,
            timeout=2,
            remote_root=str(tmp_path / "node"),
        )
        assert results["n0002"].status == "timeout"
        assert "killed" in results["n0002"].message
        silent.settimeout(30)
        connection, _ = silent.accept()
        with connection:
            connection.settimeout(30)
            assert connection.recv(4096).startswith(b"SSH-")  # ssh's greeting, then
            assert connection.recv(4096) == b""  # the killed ssh's end of stream
    finally:
        silent.close()
