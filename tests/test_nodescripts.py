"""Nodescript assembly: layer order, overrides, the environment, bounds and refusals."""

import asyncio
import dataclasses
import os
import subprocess
import time
from pathlib import Path

import pytest

from perceus.server import nodescripts
from perceus.server.config import Settings
from perceus.server.db.model import Node
from perceus.server.errors import PerceusError
from perceus.server.nodescripts import NodeContext, assemble, assemble_async, collect, layers
from perceus.server.paths import Paths

MARK = b"# perceus nodescript part: "


@dataclasses.dataclass
class Tree:
    """A throwaway state directory with its nodescripts and vnfs trees."""

    statedir: Path
    ctx: NodeContext

    @property
    def nodescripts(self) -> Path:
        return self.statedir / "nodescripts"

    @property
    def vnfs(self) -> Path:
        return self.statedir / "vnfs"

    def put(self, rel: str, text: str | bytes, executable: bool = False) -> Path:
        path = self.statedir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        path.chmod(0o755 if executable else 0o644)
        return path

    def layers(self, ctx: NodeContext | None = None) -> list[Path]:
        return layers(self.nodescripts, self.vnfs, ctx or self.ctx)

    def names(self, ctx: NodeContext | None = None) -> list[str]:
        return [path.name for path in collect(self.layers(ctx), self.statedir)]

    def assemble(self, ctx: NodeContext | None = None, **kwargs) -> bytes:
        return assemble(ctx or self.ctx, self.nodescripts, self.vnfs, **kwargs)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    statedir = tmp_path / "state"
    (statedir / "nodescripts").mkdir(parents=True)
    (statedir / "vnfs").mkdir()
    ctx = NodeContext(
        state="init",
        nodename="n0001",
        nodeid="52:54:00:12:34:56",
        vnfs="centos",
        enabled=1,
        debug=0,
        groupname="compute",
        ipaddr="10.0.0.17",
        statedir=statedir,
        vnfsmaster="10.0.0.1",
        vnfsmethod="nfs",
        vnfsprefix="",
    )
    return Tree(statedir, ctx)


def parts(script: bytes) -> list[tuple[str, bytes]]:
    """(source path, body) of each part of an assembled script."""
    chunks = script.split(MARK)[1:]
    result = []
    for chunk in chunks:
        source, _, body = chunk.partition(b"\n")
        result.append((source.decode(), body))
    return result


def body_of(script: bytes, name: str) -> bytes:
    (body,) = [body for source, body in parts(script) if Path(source).name == name]
    return body


# --- order and overrides ---------------------------------------------------------------


def test_layers_in_override_order(tree: Tree) -> None:
    for rel in (
        "vnfs/centos/nodescripts/init",
        "nodescripts/init/vnfs/centos",
        "nodescripts/init/all",
        "nodescripts/init/group/compute",
        "nodescripts/init/node/n0001",
        "nodescripts/init/group/other",
        "nodescripts/init/node/n0002",
        "nodescripts/init/vnfs/debian",
    ):
        (tree.statedir / rel).mkdir(parents=True)
    assert [p.relative_to(tree.statedir).as_posix() for p in tree.layers()] == [
        "vnfs/centos/nodescripts/init",
        "nodescripts/init/vnfs/centos",
        "nodescripts/init/all",
        "nodescripts/init/group/compute",
        "nodescripts/init/node/n0001",
    ]


def test_only_existing_layers(tree: Tree) -> None:
    (tree.nodescripts / "init" / "all").mkdir(parents=True)
    assert tree.layers() == [tree.nodescripts / "init" / "all"]
    no_vnfs_no_group = dataclasses.replace(tree.ctx, vnfs="", groupname="")
    assert tree.layers(no_vnfs_no_group) == [tree.nodescripts / "init" / "all"]


def test_later_layer_overrides_by_basename_and_sorts(tree: Tree) -> None:
    tree.put("vnfs/centos/nodescripts/init/20-mount", "capsule mount\n")
    tree.put("vnfs/centos/nodescripts/init/90-boot", "capsule boot\n")
    tree.put("nodescripts/init/vnfs/centos/90-boot", "site boot\n")
    tree.put("nodescripts/init/all/10-net", "all net\n")
    tree.put("nodescripts/init/all/30-hosts", "all hosts\n")
    tree.put("nodescripts/init/group/compute/10-net", "group net\n")
    tree.put("nodescripts/init/group/compute/30-hosts", "group hosts\n")
    tree.put("nodescripts/init/node/n0001/05-early", "node early\n")
    tree.put("nodescripts/init/node/n0001/30-hosts", "node hosts\n")
    assert tree.names() == ["05-early", "10-net", "20-mount", "30-hosts", "90-boot"]
    script = tree.assemble()
    assert [(Path(source).relative_to(tree.statedir).as_posix(), body) for source, body in parts(script)] == [
        ("nodescripts/init/node/n0001/05-early", b"node early\n"),
        ("nodescripts/init/group/compute/10-net", b"group net\n"),
        ("vnfs/centos/nodescripts/init/20-mount", b"capsule mount\n"),
        ("nodescripts/init/node/n0001/30-hosts", b"node hosts\n"),
        ("nodescripts/init/vnfs/centos/90-boot", b"site boot\n"),
    ]


def test_other_nodes_groups_and_states_are_not_seen(tree: Tree) -> None:
    tree.put("nodescripts/init/all/10-init", "init\n")
    tree.put("nodescripts/ready/all/10-ready", "ready\n")
    tree.put("nodescripts/init/node/n0002/20-other-node", "x\n")
    tree.put("nodescripts/init/group/other/20-other-group", "x\n")
    tree.put("nodescripts/init/vnfs/debian/20-other-vnfs", "x\n")
    tree.put("vnfs/centos/nodescripts/ready/20-capsule-ready", "x\n")
    assert tree.names() == ["10-init"]
    assert b"ready" not in tree.assemble()
    ready = dataclasses.replace(tree.ctx, state="ready")
    assert tree.names(ready) == ["10-ready", "20-capsule-ready"]


def test_hidden_backups_and_directories_are_ignored(tree: Tree) -> None:
    for name in (
        ".hidden",
        "10-net~",
        "10-net.rpmsave",
        "10-net.rpmnew",
        "10-net.dpkg-old",
        "10-net.dpkg-dist",
    ):
        tree.put(f"nodescripts/init/node/n0001/{name}", "ignored\n")
    tree.put("nodescripts/init/all/10-net", "kept\n")
    (tree.nodescripts / "init" / "node" / "n0001" / "10-net").mkdir()  # a directory overrides nothing
    os.mkfifo(tree.nodescripts / "init" / "all" / "20-fifo")
    assert tree.names() == ["10-net"]
    assert body_of(tree.assemble(), "10-net") == b"kept\n"


def test_a_file_name_cannot_inject_into_the_part_comment(tree: Tree) -> None:
    tree.put("nodescripts/init/all/10-evil\nreboot", "echo fine\n")
    script = tree.assemble()
    assert b"\nreboot\n" not in script
    assert b"10-evil\\nreboot\necho fine\n" in script


# --- parts ------------------------------------------------------------------------------


def test_plain_files_are_sent_verbatim(tree: Tree) -> None:
    raw = b"echo 'caf\xc3\xa9' \\\n  \x01\xff\n\n"
    tree.put("nodescripts/init/all/10-raw", raw)
    tree.put("nodescripts/init/all/20-no-newline", "echo last")
    script = tree.assemble()
    assert body_of(script, "10-raw") == raw
    assert script.endswith(b"20-no-newline\necho last\n")


def test_executables_run_with_exactly_the_documented_environment(tree: Tree, monkeypatch) -> None:
    monkeypatch.setenv("PERCEUSD_SECRET", "leak")
    script_dir = tree.nodescripts / "init" / "group" / "compute"
    tree.put(
        "nodescripts/init/group/compute/10-env",
        '#!/bin/sh\nenv | sort\necho "cwd=$(pwd -P)"\necho "stdin=$(readlink /proc/$$/fd/0)"\n',
        executable=True,
    )
    out = body_of(tree.assemble(), "10-env").decode().splitlines()
    env = dict(line.split("=", 1) for line in out if "=" in line and not line.startswith(("cwd=", "stdin=")))
    assert env.pop("PWD") == str(script_dir)  # dash's own addition: the cwd it started in
    assert env == {
        "STATE": "init",
        "NODENAME": "n0001",
        "VNFS": "centos",
        "ENABLED": "1",
        "DEBUG": "0",
        "GROUPNAME": "compute",
        "NODEID": "52:54:00:12:34:56",
        "IPADDR": "10.0.0.17",
        "STATEDIR": str(tree.statedir),
        "VNFSMASTER": "10.0.0.1",
        "VNFSMETHOD": "nfs",
        "VNFSPREFIX": "",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    assert f"cwd={script_dir.resolve()}" in out
    assert "stdin=/dev/null" in out


def test_environment_method_is_exact(tree: Tree) -> None:
    assert sorted(tree.ctx.environment()) == sorted([*nodescripts.VARIABLES, "PATH"])


def test_executable_without_interpreter_line_runs_under_sh(tree: Tree) -> None:
    tree.put("nodescripts/init/all/10-bare", 'echo "echo hello $NODENAME"\n', executable=True)
    assert body_of(tree.assemble(), "10-bare") == b"echo hello n0001\n"


def test_header_exports_quoted_variables_and_the_script_runs(tree: Tree, tmp_path: Path) -> None:
    ctx = dataclasses.replace(tree.ctx, vnfsprefix="it's $(not run) `x`\nline2")
    tree.put("nodescripts/init/all/10-show", 'printf "%s|%s|%s\\n" "$NODENAME" "$IPADDR" "$VNFSPREFIX"\n')
    tree.put(
        "nodescripts/init/all/20-gen", "#!/bin/sh\necho 'echo generated for $NODENAME'\n", executable=True
    )
    script = tree.assemble(ctx)
    assert script.startswith(b"#!/bin/sh\n")
    assert b"set -x" not in script and b"set -e" not in script
    path = tmp_path / "run.sh"
    path.write_bytes(script)
    proc = subprocess.run(["/bin/sh", str(path)], capture_output=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"n0001|10.0.0.17|it's $(not run) `x`\nline2\ngenerated for n0001\n"


def test_a_failing_command_on_the_node_does_not_stop_later_parts(tree: Tree, tmp_path: Path) -> None:
    tree.put("nodescripts/init/all/10-fails", "false\necho after-false\n")
    tree.put("nodescripts/init/all/20-next", "echo next-part\n")
    path = tmp_path / "run.sh"
    path.write_bytes(tree.assemble())
    proc = subprocess.run(["/bin/sh", str(path)], capture_output=True)
    assert proc.stdout == b"after-false\nnext-part\n"


def test_debug_5_adds_set_x(tree: Tree) -> None:
    tree.put("nodescripts/init/all/10-x", "echo x\n")
    assert b"\nset -x\n" not in tree.assemble(dataclasses.replace(tree.ctx, debug=4))
    script = tree.assemble(dataclasses.replace(tree.ctx, debug=5))
    header, _, _ = script.partition(MARK)
    assert header.endswith(b"\nset -x\n")


# --- failures ---------------------------------------------------------------------------


def test_failing_executable_names_file_status_and_stderr(tree: Tree) -> None:
    path = tree.put("nodescripts/init/all/20-bad", "#!/bin/sh\necho partial\necho boom >&2\nexit 3\n", True)
    with pytest.raises(PerceusError) as info:
        tree.assemble()
    assert info.value.where == str(path)
    assert "status 3" in info.value.what
    assert "boom" in info.value.what


def test_stderr_in_the_error_is_a_bounded_tail(tree: Tree) -> None:
    tree.put(
        "nodescripts/init/all/20-noisy",
        "#!/bin/sh\ni=0\n"
        "while [ $i -lt 5000 ]; do echo noise-$i >&2; i=$((i+1)); done\n"
        "echo last-words >&2\nexit 1\n",
        executable=True,
    )
    with pytest.raises(PerceusError) as info:
        tree.assemble()
    assert "last-words" in info.value.what
    assert "noise-0 " not in info.value.what
    assert len(info.value.what) < 2 * nodescripts.STDERR_TAIL


def _gone(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X")  # dead, waiting only to be reaped by whoever inherited it


def _wait_gone(pid: int) -> bool:
    for _ in range(200):  # SIGKILL is prompt; this only bounds a wait, it measures nothing
        if _gone(pid):
            return True
        time.sleep(0.05)
    return _gone(pid)


def test_timeout_kills_the_part_and_its_children(tree: Tree, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    path = tree.put(
        "nodescripts/init/all/30-slow",
        f"#!/bin/sh\nsleep 300 &\necho $$ $! > {pids}\nsleep 300\n",
        executable=True,
    )
    tree.put("nodescripts/init/all/40-never", "#!/bin/sh\ntouch never-ran\n", executable=True)
    with pytest.raises(PerceusError) as info:
        tree.assemble(timeout=1)
    assert info.value.what == "nodescript generation timed out after 1 s"
    assert info.value.where == str(path)
    shell, child = (int(pid) for pid in pids.read_text().split())
    assert _wait_gone(shell)
    assert _wait_gone(child)
    assert not (path.parent / "never-ran").exists()


def test_leftover_background_processes_are_killed(tree: Tree, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    tree.put(
        "nodescripts/init/all/10-daemonizes",
        f"#!/bin/sh\nsleep 300 >/dev/null 2>&1 &\necho $! > {pidfile}\necho done\n",
        executable=True,
    )
    assert body_of(tree.assemble(), "10-daemonizes") == b"done\n"
    assert _wait_gone(int(pidfile.read_text()))


def test_output_over_max_bytes(tree: Tree) -> None:
    path = tree.put("nodescripts/init/all/10-big", "#!/bin/sh\nhead -c 200000 /dev/zero\n", executable=True)
    with pytest.raises(PerceusError) as info:
        tree.assemble(max_bytes=100_000)
    assert info.value.where == str(path)
    assert "larger than 100000 bytes" in info.value.what


def test_plain_files_count_against_max_bytes(tree: Tree) -> None:
    path = tree.put("nodescripts/init/all/10-big", b"#" * 5000)
    with pytest.raises(PerceusError, match="larger than 4096 bytes") as info:
        tree.assemble(max_bytes=4096)
    assert info.value.where == str(path)


@pytest.mark.parametrize(
    "field, value",
    [
        ("groupname", "../../../etc"),
        ("groupname", ".."),
        ("groupname", "a/b"),
        ("vnfs", "../x"),
        ("nodename", ".."),
        ("state", "../init"),
        ("state", "init\nrm -rf /"),
        ("state", ""),
    ],
)
def test_names_that_could_escape_are_refused(tree: Tree, field: str, value: str) -> None:
    (tree.statedir / "etc").mkdir()
    (tree.statedir / "etc" / "10-escaped").write_text("escaped\n")
    ctx = dataclasses.replace(tree.ctx, **{field: value})
    with pytest.raises(PerceusError, match="cannot name a nodescript directory"):
        tree.layers(ctx)
    with pytest.raises(PerceusError, match="cannot name a nodescript directory"):
        tree.assemble(ctx)


def test_symlink_inside_the_state_directory_is_followed(tree: Tree) -> None:
    module = tree.put("modules/hostname/nodescript", '#!/bin/sh\necho "echo $(basename $(pwd))"\n', True)
    link = tree.nodescripts / "init" / "all" / "10-hostname"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(module, link.parent))
    assert tree.names() == ["10-hostname"]
    script = tree.assemble()
    assert parts(script) == [(str(link), b"echo hostname\n")]  # named by its link, run in its own dir


def test_symlink_out_of_the_state_directory_is_refused(tree: Tree, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("secret\n")
    tree.put("nodescripts/init/all/10-net", "net\n")
    link = tree.nodescripts / "init" / "all" / "20-passwd"
    link.symlink_to(outside)
    with pytest.raises(PerceusError, match="outside the state directory") as info:
        tree.assemble()
    assert info.value.where == str(link)
    with pytest.raises(PerceusError, match="outside the state directory"):
        tree.names()


def test_symlinked_layer_directory_out_of_the_state_directory_is_refused(tree: Tree, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "10-x").write_text("x\n")
    (tree.nodescripts / "init" / "group").mkdir(parents=True)
    (tree.nodescripts / "init" / "group" / "compute").symlink_to(elsewhere)
    with pytest.raises(PerceusError, match="outside the state directory"):
        tree.layers()


def test_dangling_symlink_is_ignored(tree: Tree) -> None:
    tree.put("nodescripts/init/all/10-net", "net\n")
    (tree.nodescripts / "init" / "all" / "20-removed-module").symlink_to("../../../modules/gone/nodescript")
    assert tree.names() == ["10-net"]


def test_cancelling_the_async_assembly_kills_the_running_part(tree: Tree, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    tree.put(
        "nodescripts/init/all/10-slow",
        f"#!/bin/sh\necho $$ > {pidfile}.tmp\nmv {pidfile}.tmp {pidfile}\nsleep 300\n",
        True,
    )

    async def start_then_cancel() -> int:
        task = asyncio.ensure_future(assemble_async(tree.ctx, tree.nodescripts, tree.vnfs))
        while not pidfile.exists():  # bounded by pytest's own patience, not asserted on
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(pidfile.read_text())

    assert _wait_gone(asyncio.run(start_then_cancel()))


# --- async and construction -------------------------------------------------------------


def test_async_gives_identical_output(tree: Tree) -> None:
    tree.put("vnfs/centos/nodescripts/init/20-mount", "mount\n")
    tree.put("nodescripts/init/all/10-gen", '#!/bin/sh\necho "echo $NODENAME $IPADDR"\n', executable=True)
    tree.put("nodescripts/init/node/n0001/30-plain", "plain\n")
    sync = tree.assemble()

    async def both() -> list[bytes]:
        ctxs = [tree.ctx, tree.ctx]
        return await asyncio.gather(*(assemble_async(c, tree.nodescripts, tree.vnfs) for c in ctxs))

    assert asyncio.run(both()) == [sync, sync]


def test_from_node(tree: Tree, tmp_path: Path) -> None:
    sysconf = tmp_path / "etc"
    sysconf.mkdir()
    (sysconf / "perceus.conf").write_text(
        "vnfs transfer master = 10.9.9.9\nvnfs transfer method = http\nvnfs transfer prefix = /srv/p\n"
    )
    settings = Settings.load(Paths(sysconfdir=sysconf, statedir=tree.statedir))
    node = Node(
        nodeid="52:54:00:AA:BB:CC",
        hostname="n0042",
        group="gpu",
        vnfs="rocky",
        enabled=0,
        debug=2,
        desc="",
        status="init",
        ipaddr="10.0.0.5",
        lastcontact=None,
        created=0,
        updated=0,
    )
    ctx = NodeContext.from_node(node, "ready", settings, "10.0.0.42")
    assert ctx.environment() == {
        "STATE": "ready",
        "NODENAME": "n0042",
        "VNFS": "rocky",
        "ENABLED": "0",
        "DEBUG": "2",
        "GROUPNAME": "gpu",
        "NODEID": "52:54:00:AA:BB:CC",
        "IPADDR": "10.0.0.42",
        "STATEDIR": str(tree.statedir),
        "VNFSMASTER": "10.9.9.9",
        "VNFSMETHOD": "http",
        "VNFSPREFIX": "/srv/p",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    (sysconf / "perceus.conf").write_text("master network device = lo\n")
    settings = Settings.load(Paths(sysconfdir=sysconf, statedir=tree.statedir))
    ctx = NodeContext.from_node(node, "init", settings, "10.0.0.42")
    assert ctx.vnfsmaster == "127.0.0.1"  # empty transfer master: the master device's address
    assert ctx.vnfsmethod == "nfs"
