"""The built-in modules: each master-side script run as perceusd runs it, then its shell run as a node would.

Master side: the script runs as a subprocess with exactly the nodescript environment
(NodeContext.environment) plus DESTDIR (a temp overlay staging directory) and
PERCEUS_SYSCONFDIR. Node side: the printed shell runs under ``sh`` and, when present,
``busybox sh``, with DESTDIR, PERCEUS_REQUEST and PERCEUS_PROC in a temp directory.
"""

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from perceus.server.modules import BUILTIN_DIR
from perceus.server.nodescripts import NodeContext

SHELLS = [["sh"]] + ([["/bin/busybox", "sh"]] if os.path.exists("/bin/busybox") else [])
SHELL_IDS = [" ".join(shell) for shell in SHELLS]
SHA_A = "a" * 64
SHA_B = "b" * 64


def script(module: str, state: str = "init") -> Path:
    (path,) = (BUILTIN_DIR / module / "nodescripts" / state).iterdir()
    return path


@dataclasses.dataclass
class Master:
    """One master: its sysconfdir, statedir and the context of the node checking in."""

    root: Path
    ctx: NodeContext

    @property
    def sysconfdir(self) -> Path:
        return self.root / "etc"

    def config(self, rel: str, text: str) -> Path:
        path = self.sysconfdir / "modules" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def run(self, module: str, state: str = "init", destdir: bool = True, **ctx) -> tuple[Path, "Ran"]:
        """Run the module's script for ``state`` as perceusd does; returns (DESTDIR, result)."""
        context = dataclasses.replace(self.ctx, state=state, **ctx)
        overlay = self.root / f"overlay-{len(list(self.root.glob('overlay-*')))}"
        overlay.mkdir()
        env = context.environment()
        if destdir:
            env |= {"DESTDIR": str(overlay), "PERCEUS_SYSCONFDIR": str(self.sysconfdir)}
        path = script(module, state)
        proc = subprocess.run(
            [str(path)],
            cwd=path.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        return overlay, Ran(proc.returncode, proc.stdout, proc.stderr, context)


@dataclasses.dataclass
class Ran:
    status: int
    out: str
    err: str
    ctx: NodeContext


@pytest.fixture
def master(tmp_path: Path) -> Master:
    statedir = tmp_path / "var"
    statedir.mkdir()
    (tmp_path / "etc").mkdir()
    ctx = NodeContext(
        state="init",
        nodename="n0005",
        nodeid="00:11:22:33:44:55",
        vnfs="centos-7.1",
        enabled=1,
        debug=0,
        groupname="compute",
        ipaddr="10.0.0.5",
        statedir=statedir,
        vnfsmaster="10.0.0.1",
        vnfsmethod="http",
        vnfsprefix="",
    )
    return Master(tmp_path, ctx)


@dataclasses.dataclass
class Node:
    """Where the node's side runs: its DESTDIR root, request file and fake /proc."""

    root: Path

    @property
    def dest(self) -> Path:
        return self.root / "dest"

    @property
    def request(self) -> Path:
        return self.root / "request"

    @property
    def proc(self) -> Path:
        return self.root / "proc"

    @property
    def log(self) -> Path:
        return self.root / "calls.log"

    def process(self, pid: int, uid: int) -> None:
        path = self.proc / str(pid) / "status"
        path.parent.mkdir(parents=True)
        path.write_text(
            f"Name:\tx\nState:\tS (sleeping)\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n"
        )

    def run(
        self, shell: list[str], text: str, ran: Ran, mode: str = "simulate"
    ) -> subprocess.CompletedProcess:
        """Run ``text`` as the node would. hostname and modprobe are shell functions that only log:
        the tests run as root, and busybox sh would run its own applets whatever PATH says."""
        fakes = "".join(f'{c}() {{ echo "{c} $*" >> "{self.log}"; }}\n' for c in ("hostname", "modprobe"))
        env = {
            **ran.ctx.variables(),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "DESTDIR": str(self.dest),
            "PERCEUS_MODE": mode,
            "PERCEUS_REQUEST": str(self.request),
            "PERCEUS_PROC": str(self.proc),
        }
        return subprocess.run(
            [*shell, "-c", fakes + text],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def node(tmp_path: Path) -> Node:
    root = tmp_path / "node"
    for sub in ("dest", "proc"):
        (root / sub).mkdir(parents=True)
    (root / "request").write_text("")
    return Node(root)


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


# -- hostname ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
def test_hostname(master: Master, node: Node, shell: list[str]) -> None:
    overlay, ran = master.run("hostname")
    assert ran.status == 0, ran.err
    assert files(overlay) == {"etc/hostname": "n0005\n"}
    assert (overlay / "etc/hostname").stat().st_mode & 0o777 == 0o644
    assert 'hostname "$NODENAME"' in ran.out and "etc/hostname" not in ran.out  # the overlay carries it

    assert node.run(shell, ran.out, ran, mode="initramfs").returncode == 0
    assert node.log.read_text() == "hostname n0005\n"
    node.log.unlink()
    assert node.run(shell, ran.out, ran, mode="simulate").returncode == 0
    assert not node.log.exists()  # the simulator runs on the master: never rename it

    _, ran = master.run("hostname", destdir=False)  # no overlay: the node writes the file itself
    assert node.run(shell, ran.out, ran).returncode == 0
    assert (node.dest / "etc/hostname").read_text() == "n0005\n"

    _, ran = master.run("hostname", state="ready", nodename="n0006")  # a renamed node, while it runs
    assert node.run(shell, ran.out, ran, mode="provisiond").returncode == 0
    assert (node.dest / "etc/hostname").read_text() == "n0006\n"
    assert node.log.read_text() == "hostname n0006\n"


# -- masterauth, passwdfile, groupfile ---------------------------------------------------------

PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:$6$salt$hash:1000:1000:Alice:/home/alice:/bin/sh\n"
GROUP = "root:x:0:\nusers:x:100:alice\n"


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
def test_masterauth(master: Master, node: Node, tmp_path: Path, shell: list[str]) -> None:
    (tmp_path / "passwd").write_text(PASSWD)
    (tmp_path / "group").write_text("# a comment\n" + GROUP)
    master.config(
        "masterauth/config", f"# where from\npasswd = {tmp_path / 'passwd'}\ngroup={tmp_path / 'group'}\n"
    )
    expected_passwd = PASSWD.replace("$6$salt$hash", "x")  # never a password hash, never shadow

    overlay, ran = master.run("masterauth")
    assert ran.status == 0, ran.err
    assert files(overlay) == {"etc/group": GROUP, "etc/passwd": expected_passwd}
    assert ran.out == ""  # at init the overlay carries the files

    (node.dest / "etc").mkdir()
    (node.dest / "etc/passwd").write_text("stale:x:1:1::/:/bin/false\n")
    _, ran = master.run("masterauth", state="ready")
    assert ran.status == 0, ran.err
    result = node.run(shell, ran.out, ran, mode="provisiond")
    assert result.returncode == 0, result.stderr
    assert files(node.dest) == {"etc/group": GROUP, "etc/passwd": expected_passwd}
    assert (node.dest / "etc/passwd").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "config, passwd, message",
    [
        ("shadow = /etc/shadow\n", PASSWD, "config:1: expected 'passwd = /PATH'"),
        ("passwd = relative\n", PASSWD, "config:1: expected"),
        ("", "root:x:0:0\n", "passwd:1: not an entry of 7 fields"),
        ("", "", "has no entries"),
    ],
)
def test_masterauth_refuses_bad_sources(
    master: Master, tmp_path: Path, config: str, passwd: str, message: str
) -> None:
    (tmp_path / "passwd").write_text(passwd)
    (tmp_path / "group").write_text(GROUP)
    master.config(
        "masterauth/config", f"passwd = {tmp_path / 'passwd'}\ngroup = {tmp_path / 'group'}\n" + config
    )
    if "config:1" in message:
        master.config("masterauth/config", config)
    _, ran = master.run("masterauth")
    assert ran.status == 1 and message in ran.err and ran.err.startswith("masterauth: ")


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
@pytest.mark.parametrize("module, target, fields", [("passwdfile", "passwd", 7), ("groupfile", "group", 4)])
def test_table_files_are_assembled_in_order(
    master: Master, node: Node, shell: list[str], module: str, target: str, fields: int
) -> None:
    def entry(name: str) -> str:
        return ":".join([name] + ["x"] * (fields - 1))

    master.config(f"{module}/all", f"# everyone\n{entry('root')}\n\n")
    master.config(f"{module}/vnfs/centos-7.1", entry("fromvnfs") + "\n")
    master.config(f"{module}/group/compute", entry("fromgroup") + "\n")
    master.config(f"{module}/node/n0005", entry("fromnode") + "\n")
    master.config(f"{module}/node/n0006", entry("othernode") + "\n")
    master.config(f"{module}/group/io", entry("othergroup") + "\n")
    wanted = "".join(entry(n) + "\n" for n in ("root", "fromvnfs", "fromgroup", "fromnode"))

    overlay, ran = master.run(module)
    assert ran.status == 0, ran.err
    assert files(overlay) == {f"etc/{target}": wanted} and ran.out == ""

    _, ran = master.run(module, state="ready")
    result = node.run(shell, ran.out, ran, mode="provisiond")
    assert result.returncode == 0, result.stderr
    assert files(node.dest) == {f"etc/{target}": wanted}

    _, ran = master.run(module, nodename="n0100", groupname="", vnfs="")
    assert ran.status == 0 and files(_) == {f"etc/{target}": entry("root") + "\n"}


@pytest.mark.parametrize("module", ["passwdfile", "groupfile"])
def test_table_files_refuse_mistakes(master: Master, module: str) -> None:
    _, ran = master.run(module)
    assert ran.status == 1 and "no entries for n0005" in ran.err
    bad = master.config(f"{module}/node/n0005", "# fine\nnot-an-entry\n")
    master.config(
        f"{module}/all", "root:x:0:0:root:/root:/bin/sh\n" if module == "passwdfile" else "root:x:0:\n"
    )
    _, ran = master.run(module)
    assert ran.status == 1 and f"{bad}:2: not an entry" in ran.err


def test_activate_hooks_make_their_configuration(master: Master) -> None:
    for module, made in (
        ("passwdfile", "passwdfile/all"),
        ("groupfile", "groupfile/all"),
        ("ipaddr", "ipaddr"),
        ("modprobe", "modprobe"),
    ):
        env = {"PATH": "/usr/bin:/bin", "PERCEUS_SYSCONFDIR": str(master.sysconfdir)}
        hook = BUILTIN_DIR / module / "activate"
        first = subprocess.run([str(hook)], env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0 and "Created" in first.stdout, first.stderr
        path = master.sysconfdir / "modules" / made
        path.write_text(path.read_text() + "# edited\n")
        again = subprocess.run([str(hook)], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and again.stdout == "" and path.read_text().endswith("# edited\n")
    # the seeded files are valid configuration: the modules accept them as they are
    for module in ("passwdfile", "groupfile", "ipaddr", "modprobe"):
        _, ran = master.run(module)
        assert ran.status == 0, ran.err


# -- ipaddr ------------------------------------------------------------------------------------

IPADDR = """\
# static addresses
n0000                 eth0:10.0.0.10/24/10.0.0.1   eth1:dhcp
n00[01-03,05]         eth0:10.0.1.1/255.255.255.0  ib0:fd00::5/64/fd00::1
n*                    eth0:dhcp
"""


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
def test_ipaddr(master: Master, node: Node, shell: list[str]) -> None:
    conf = master.config("ipaddr", IPADDR)
    overlay, ran = master.run("ipaddr")
    assert ran.status == 0, ran.err
    found = files(overlay)
    assert found["etc/perceus/ipaddr"] == "eth0 10.0.1.1 24 -\nib0 fd00::5 64 fd00::1\n"
    assert found["etc/network/interfaces.d/perceus-ipaddr"] == (
        f"# written by perceus module ipaddr from {conf}:3\n"
        "\nauto eth0\niface eth0 inet static\n    address 10.0.1.1\n    netmask 255.255.255.0\n"
        "\nauto ib0\niface ib0 inet6 static\n    address fd00::5\n    netmask 64\n    gateway fd00::1\n"
    )

    overlay, ran = master.run("ipaddr", nodename="n0000", state="ready")
    assert files(overlay)["etc/perceus/ipaddr"] == "eth0 10.0.0.10 24 10.0.0.1\neth1 dhcp - -\n"
    result = node.run(shell, ran.out, ran, mode="provisiond")
    assert result.returncode == 0, result.stderr
    assert files(node.dest) == files(overlay)

    overlay, ran = master.run("ipaddr", nodename="n0004")  # not in [01-03,05]: the glob line
    assert files(overlay)["etc/perceus/ipaddr"] == "eth0 dhcp - -\n"
    overlay, ran = master.run("ipaddr", nodename="io1")
    assert ran.status == 0 and files(overlay) == {} and "no entry for io1" in ran.out


@pytest.mark.parametrize(
    "line, message",
    [
        ("n0000", "expected PATTERN DEVICE"),
        ("n0000 eth0", "is not DEVICE:ADDRESS"),
        ("n0000 eth0:10.0.0.1", "give ADDRESS/NETMASK"),
        ("n0000 eth0:10.0.0.300/24", "does not appear to be"),
        ("n0000 eth0:10.0.0.1/255.0.255.0", "10.0.0.1/255.0.255.0"),
        ("n0000 eth0:10.0.0.1/24/fd00::1", "not of the address's family"),
        ("n0000 eth0:dhcp eth0:dhcp", "a device appears twice"),
        ("n[1-2 eth0:dhcp", "'[' without ']'"),
        ("n[2-1] eth0:dhcp", "reversed range"),
        ("n[1-2][3-4] eth0:dhcp", "two bracket groups"),
        ("bad/dev eth0:dhcp extra/0:dhcp", "is not DEVICE:ADDRESS"),
    ],
)
def test_ipaddr_refuses_bad_lines(master: Master, line: str, message: str) -> None:
    conf = master.config("ipaddr", f"# fine\nio1 eth0:dhcp\n{line}\n")
    overlay, ran = master.run("ipaddr", nodename="io1")  # a bad line anywhere fails every node
    assert ran.status == 1, ran.out
    assert ran.err.startswith(f"ipaddr: {conf}:3: ") and message in ran.err, ran.err
    assert files(overlay) == {}


# -- modprobe ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
def test_modprobe(master: Master, node: Node, shell: list[str]) -> None:
    master.config(
        "modprobe", "*  ipmi_si\nn00[00-09]  e1000e InterruptThrottleRate=3000 debug\nio*  ib_ipoib\n"
    )
    overlay, ran = master.run("modprobe")
    assert ran.status == 0, ran.err
    assert files(overlay) == {
        "etc/modules-load.d/perceus.conf": "ipmi_si\ne1000e\n",
        "etc/modprobe.d/perceus.conf": "options e1000e InterruptThrottleRate=3000 debug\n",
    }
    result = node.run(shell, ran.out, ran, mode="initramfs")
    assert result.returncode == 0, result.stderr
    assert node.log.read_text() == "modprobe ipmi_si\nmodprobe e1000e InterruptThrottleRate=3000 debug\n"
    node.log.unlink()
    assert node.run(shell, ran.out, ran, mode="simulate").returncode == 0
    assert not node.log.exists()  # never load modules into the master that simulates

    _, ran = master.run("modprobe", state="ready", nodename="io7")
    node.run(shell, ran.out, ran, mode="provisiond")
    assert files(node.dest) == {"etc/modules-load.d/perceus.conf": "ipmi_si\nib_ipoib\n"}
    assert node.log.read_text() == "modprobe ipmi_si\nmodprobe ib_ipoib\n"


@pytest.mark.parametrize(
    "line, message",
    [("n0005", "expected PATTERN MODULE"), ("n0005 bad/mod", "not a kernel module name"), ("n[ x", "'['")],
)
def test_modprobe_refuses_bad_lines(master: Master, line: str, message: str) -> None:
    conf = master.config("modprobe", f"\n{line}\n")
    _, ran = master.run("modprobe")
    assert ran.status == 1 and ran.err.startswith(f"modprobe: {conf}:2: ") and message in ran.err


def test_modprobe_without_configuration(master: Master) -> None:
    overlay, ran = master.run("modprobe")
    assert ran.status == 0 and files(overlay) == {} and ran.out.startswith("#")


# -- syncnodes ---------------------------------------------------------------------------------


def vnfs_manifest(master: Master, name: str, sha: str) -> None:
    path = master.ctx.statedir / "vnfs" / name / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(f'{{"kind": "vnfs", "members": [{{"name": "rootfs", "sha256": "{sha}"}}]}}')


def node_conf(node: Node, vnfs: str, sha: str) -> None:
    path = node.dest / "etc/perceus/node.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'NODENAME="n0005"\nNODEID="00:11:22:33:44:55"\nVNFS="{vnfs}"\nVNFS_SHA256="{sha}"\n')


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
def test_syncnodes(master: Master, node: Node, shell: list[str]) -> None:
    vnfs_manifest(master, "centos-7.1", SHA_B)
    _, ran = master.run("syncnodes", state="ready")
    assert ran.status == 0, ran.err
    assert SHA_B in ran.out and "reboot" not in ran.out.replace("reprovision", "")

    node_conf(node, "centos-7.1", SHA_B)
    node.process(1, 0)
    result = node.run(shell, ran.out, ran, mode="provisiond")
    assert "is current" in result.stdout and node.request.read_text() == ""

    node_conf(node, "centos-7.1", SHA_A)  # the image was rebuilt since the node booted
    node.process(200, 65534)
    node.process(300, 999)
    result = node.run(shell, ran.out, ran, mode="provisiond")
    assert result.returncode == 0, result.stderr
    assert node.request.read_text() == "reprovision\n" and "reprovisioning" in result.stdout

    node.request.write_text("")
    node.process(400, 1000)  # somebody is logged in
    result = node.run(shell, ran.out, ran, mode="provisiond")
    assert node.request.read_text() == "" and "1 user processes run: not reprovisioning" in result.stdout

    (node.proc / "400" / "status").unlink()
    node_conf(node, "other-vnfs", SHA_B)  # the node was moved to another VNFS
    result = node.run(shell, ran.out, ran, mode="provisiond")
    assert node.request.read_text() == "reprovision\n"


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
def test_syncnodes_does_nothing_when_it_cannot_tell(master: Master, node: Node, shell: list[str]) -> None:
    _, ran = master.run("syncnodes", state="ready")  # the master has no such VNFS
    assert ran.status == 0 and "has no image on the master" in ran.out
    node_conf(node, "centos-7.1", SHA_A)
    assert "has no image" in node.run(shell, ran.out, ran).stdout and node.request.read_text() == ""

    vnfs_manifest(master, "centos-7.1", SHA_B)
    _, ran = master.run("syncnodes", state="ready")
    (node.dest / "etc/perceus/node.conf").unlink()
    result = node.run(shell, ran.out, ran)
    assert "cannot tell which VNFS" in result.stderr and node.request.read_text() == ""

    node_conf(node, "", "")
    result = node.run(shell, ran.out, ran)
    assert "nothing to compare" in result.stderr and node.request.read_text() == ""

    _, ran = master.run("syncnodes", state="ready", vnfs="")
    assert "no VNFS assigned" in ran.out
