"""A throwaway lab for end-to-end node tests: QEMU machines on a bridge in a network namespace.

    with Lab(tmp_path) as lab:  # or the ``lab`` fixture of tests/e2e/conftest.py
        lab.popen(["dnsmasq", "--keep-in-foreground", "-C", str(conf)])
        node = lab.qemu("n0", mac="52:54:00:12:34:56", boot="pxe")
        node.wait_for(r"MARKER", timeout=300)

A lab is a fresh namespace ``pcl-<pid>-<n>`` holding a bridge ``br0`` with ``lab.address``
(``10.<x>.<y>.1/24``, derived from the pid and ``n`` so parallel runs differ; never in
10.251/16 or 10.252/16, which other tests use) and ``lo``. Nothing joins it to the root
namespace, so all traffic stays inside. Each node gets a tap device in the namespace,
enslaved to ``br0``, and a QEMU started inside the namespace with software emulation only
(``-accel tcg -cpu max``: KVM hangs on these machines) and its serial console in a file.

On exit, even after a failure or Ctrl-C, every process the lab started (and anything else
left in the namespace: only ours can be there) is killed, then the taps, the bridge and the
namespace are deleted. Labs whose test process died without cleaning up (SIGKILL) are
reaped when the next lab starts. Every wait is bounded.
"""

import ipaddress
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from perceus.common import newc

COMMAND_TIMEOUT = 30
STOP_TIMEOUT = 10
QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
BRIDGE = "br0"
NAME_PREFIX = "pcl-"
# 10.64.0.0 - 10.250.255.0: 187 * 256 /24s, clear of 10.251/16 and 10.252/16
FIRST_OCTET, OCTETS = 64, 187

_counter = 0


def _run(
    args: Sequence[str], check: bool = True, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _kill_group(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process's group (each lab process leads its own), SIGKILL if it lingers."""
    if proc.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
    try:  # reap the leader and whatever of its group outlived it
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def _kill_namespace_processes(name: str) -> None:
    """SIGKILL whatever still runs in the namespace (only processes we started can be there)."""
    for _ in range(5):
        pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
        if not pids:
            return
        for each in pids:
            try:
                os.kill(int(each), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.2)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_labs() -> None:
    """Delete the namespaces of labs whose test process is gone (it was SIGKILLed)."""
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        fields = line.split()
        match = re.fullmatch(rf"{NAME_PREFIX}(\d+)-\d+", fields[0]) if fields else None
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            _kill_namespace_processes(fields[0])
            _run(["ip", "netns", "del", fields[0]], check=False)


def read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_text(
    path: Path,
    pattern: str | re.Pattern,
    timeout: float,
    start: int = 0,
    proc: subprocess.Popen | None = None,
    failure: Callable[[str], AssertionError] | None = None,
) -> re.Match:
    """Poll a growing file (a console, a daemon's log) until ``pattern`` matches after offset
    ``start``; the match. AssertionError after ``timeout`` s, or at once once ``proc`` (the
    writer) has exited without the match; ``failure(what)`` makes it, else the file's last
    40 lines are shown."""
    regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
    deadline = time.monotonic() + timeout
    while True:
        exited = proc is not None and proc.poll() is not None
        match = regex.search(read_text(path), start)
        if match:
            return match
        if exited or time.monotonic() > deadline:
            what = f"no {regex.pattern!r} in {path.name} " + (
                f"when its writer exited ({proc.returncode})"
                if exited and proc is not None
                else f"within {timeout} s"
            )
            if failure is not None:
                raise failure(what)
            tail = "\n".join(read_text(path).splitlines()[-40:])
            raise AssertionError(f"{what}\n--- last 40 lines of {path}:\n{tail}")
        time.sleep(0.2)


class Node:
    """One QEMU machine of a lab. ``console_log`` holds its serial console."""

    def __init__(self, lab: "Lab", name: str, mac: str, tap: str, console_log: Path, command: list[str]):
        self.lab = lab
        self.name = name
        self.mac = mac
        self.tap = tap
        self.console_log = console_log
        self.command = command
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self) -> "Node":
        self.console_log.write_bytes(b"")
        self.started = time.monotonic()
        self.proc = self.lab.popen(self.command, output=self.console_log.with_suffix(".qemu.log"))
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def console(self) -> str:
        return read_text(self.console_log)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.console().splitlines()[-lines:])

    def _failure(self, what: str) -> AssertionError:
        qemu_log = self.console_log.with_suffix(".qemu.log")
        qemu = qemu_log.read_text(errors="replace").strip() if qemu_log.exists() else ""
        status = "running" if self.running else f"exited with {self.returncode}"
        return AssertionError(
            f"node {self.name} ({self.mac}): {what} (QEMU {status}, "
            f"{time.monotonic() - self.started:.0f} s after start)\n"
            + (f"--- QEMU said:\n{qemu[-2000:]}\n" if qemu else "")
            + f"--- last 40 console lines ({self.console_log}):\n{self.tail(40)}"
        )

    def wait_for(self, pattern: str | re.Pattern, timeout: float = 300, start: int = 0) -> re.Match:
        """Poll the console from offset ``start`` until ``pattern`` (multiline) matches.

        Fails at once when QEMU has exited without it, else after ``timeout`` seconds; the
        AssertionError carries the last 40 console lines. The match's ``end()`` is a console
        offset: pass it as ``start`` to wait for what comes next.
        """
        return wait_for_text(
            self.console_log, pattern, timeout, start=start, proc=self.proc, failure=self._failure
        )

    def wait_exit(self, timeout: float = 120) -> int:
        """Wait for QEMU to exit by itself (guest power-off with -no-reboot); its status."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self._failure(f"QEMU still running after {timeout} s") from None

    def type(self, text: str) -> None:
        """Send keystrokes to the serial console (nodes started with ``console_input=True``)."""
        sock_path = self.console_log.with_suffix(".sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(COMMAND_TIMEOUT)
            sock.connect(str(sock_path))
            sock.sendall(text.encode())
            time.sleep(0.5)  # let QEMU take the bytes before the connection closes

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)


class Lab:
    """A network namespace with a bridge, daemons and QEMU nodes; see the module docstring."""

    def __init__(self, path: Path):
        global _counter
        _counter += 1
        self.path = Path(path)
        pid = os.getpid()
        self.name = f"{NAME_PREFIX}{pid}-{_counter}"
        index = (pid * 7 + _counter) % (OCTETS * 256)
        self.subnet = ipaddress.ip_network(f"10.{FIRST_OCTET + index // 256}.{index % 256}.0/24")
        self.address = str(self.subnet.network_address + 1)
        octets = self.subnet.network_address.packed
        self.subnet6 = ipaddress.ip_network(f"fd00:{octets[1]:x}:{octets[2]:x}::/64")
        self.address6 = str(self.subnet6.network_address + 1)
        self.bridge = BRIDGE
        self.procs: list[subprocess.Popen] = []
        self.nodes: list[Node] = []
        self.taps: list[str] = []
        self._created = False

    # -- addresses -------------------------------------------------------------

    def host(self, n: int) -> str:
        """The subnet's ``n``-th address (1 is the bridge's)."""
        return str(self.subnet.network_address + n)

    @property
    def dhcp_range(self) -> tuple[str, str]:
        """A range clear of the bridge's address, for dnsmasq's dhcp-range."""
        return self.host(100), self.host(199)

    # -- lifetime --------------------------------------------------------------

    def __enter__(self) -> "Lab":
        reap_stale_labs()
        self.path.mkdir(parents=True, exist_ok=True)
        _run(["ip", "netns", "del", self.name], check=False)  # a leftover of a recycled pid
        try:
            _run(["ip", "netns", "add", self.name])
            self._created = True
            self.ip("link", "set", "lo", "up")
            self.ip("link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
            self.ip("addr", "add", f"{self.address}/{self.subnet.prefixlen}", "dev", BRIDGE)
            self.ip("addr", "add", f"{self.address6}/64", "dev", BRIDGE, "nodad")
            self.ip("link", "set", BRIDGE, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill everything, delete taps, bridge and namespace. Safe to call twice; each step
        runs even if an earlier one failed."""
        steps = [node.stop for node in self.nodes]
        steps += [lambda proc=proc: _kill_group(proc) for proc in reversed(self.procs)]
        if self._created:
            steps.append(lambda: _kill_namespace_processes(self.name))
            steps += [lambda tap=tap: self.ip("link", "del", tap, check=False) for tap in self.taps]
            steps.append(lambda: self.ip("link", "del", BRIDGE, check=False))
            steps.append(lambda: _run(["ip", "netns", "del", self.name]))
        errors = []
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep tearing down; report at the end
                errors.append(exc)
        self.procs.clear()
        self._created = False
        if errors:
            raise RuntimeError(f"lab {self.name} teardown: {errors}")

    # -- commands inside the namespace -------------------------------------------

    def exec(self, args: Sequence[str]) -> list[str]:
        """``args`` prefixed to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *map(str, args)]

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(self.exec(["ip", *args]), check=check)

    def run(
        self, args: Sequence[str], check: bool = True, timeout: float = COMMAND_TIMEOUT, **kwargs
    ) -> subprocess.CompletedProcess:
        """Run a command inside the namespace to completion (text output captured)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.exec(args), check=check, timeout=timeout, **kwargs)

    def popen(self, args: Sequence[str], output: Path | None = None, **kwargs) -> subprocess.Popen:
        """Start a daemon inside the namespace, in its own process group; killed at exit.

        stdout and stderr go to ``output`` if given, else to ``<path>/<program>-<n>.log``.
        """
        if output is None:
            output = self.path / f"{Path(str(args[0])).name}-{len(self.procs)}.log"
        with open(output, "ab") as out:
            kwargs.setdefault("stdin", subprocess.DEVNULL)
            kwargs.setdefault("stdout", out)
            kwargs.setdefault("stderr", subprocess.STDOUT)
            proc = subprocess.Popen(self.exec(args), start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    # -- nodes -----------------------------------------------------------------

    def qemu(
        self,
        name: str,
        mac: str,
        boot: str = "pxe",
        memory: int = 768,
        nic: str = "virtio-net-pci",
        no_reboot: bool = True,
        kernel: Path | None = None,
        initrd: Path | None = None,
        append: str = "",
        fat: Path | None = None,
        smp: int = 1,
        extra: Iterable[str] = (),
        start: bool = True,
        console_input: bool = False,
    ) -> Node:
        """A QEMU machine on the bridge, started (unless ``start=False``: then ``node.start()``).

        ``boot``: ``"pxe"`` boots the NIC's iPXE ROM (SeaBIOS, ``-boot n``); ``"kernel"``
        boots ``kernel``/``initrd``/``append`` directly (the NIC is still there); ``"uefi"``
        runs OVMF (code read-only, a private copy of the variables) and, if ``fat`` is given,
        that directory as a FAT drive booted first (``EFI/BOOT/BOOTX64.EFI``), the NIC next.
        ``console_input``: the console is also a socket, so :meth:`Node.type` can type on it.
        """
        if boot not in ("pxe", "kernel", "uefi"):
            raise ValueError(f"boot must be pxe, kernel or uefi, not {boot!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or any(n.name == name for n in self.nodes):
            raise ValueError(f"bad or duplicate node name {name!r}")
        tap = f"tap{len(self.taps)}"
        self.ip("tuntap", "add", "dev", tap, "mode", "tap")
        self.taps.append(tap)
        self.ip("link", "set", tap, "master", BRIDGE)
        self.ip("link", "set", tap, "up")

        console = self.path / f"{name}.console.log"
        command = [
            QEMU,
            "-name", name,
            "-accel", "tcg",
            "-cpu", "max",
            "-smp", str(smp),
            "-m", str(memory),
            "-nographic",  # unlike -display none, makes SeaBIOS copy iPXE's screen to the serial port
            "-vga", "none",
            "-monitor", "none",
            "-chardev",
            f"socket,id=console,path={console.with_suffix('.sock')},server=on,wait=off,logfile={console}"
            if console_input
            else f"file,id=console,path={console}",
            "-serial", "chardev:console",
            "-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
        ]  # fmt: skip
        if no_reboot:
            command.append("-no-reboot")
        if boot == "pxe":
            command += ["-device", f"{nic},netdev=net0,mac={mac}", "-boot", "n"]
        elif boot == "kernel":
            if kernel is None:
                raise ValueError('boot="kernel" needs kernel=')
            command += ["-device", f"{nic},netdev=net0,mac={mac}", "-kernel", str(kernel)]
            if initrd is not None:
                command += ["-initrd", str(initrd)]
            if append:
                command += ["-append", append]
        else:
            if not OVMF_CODE.is_file():
                raise RuntimeError(f"{OVMF_CODE} is missing: install Debian's ovmf package")
            variables = self.path / f"{name}.OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, variables)
            command += [
                "-machine", "q35",
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
            ]  # fmt: skip
            nic_boot = 0
            if fat is not None:
                command += [
                    "-drive", f"if=none,id=fat,format=raw,readonly=on,file=fat:{fat}",
                    "-device", "virtio-blk-pci,drive=fat,bootindex=0",
                ]  # fmt: skip
                nic_boot = 1
            command += ["-device", f"{nic},netdev=net0,mac={mac},bootindex={nic_boot}"]
        command += list(extra)

        node = Node(self, name, mac, tap, console, command)
        self.nodes.append(node)
        return node.start() if start else node


# -- a tiny busybox initramfs -----------------------------------------------------


def busybox_initramfs(path: Path, init: str, files: dict[str, bytes] | None = None) -> Path:
    """A zstd-compressed newc cpio at ``path``: static busybox as /bin/busybox (/bin/sh links
    to it), /dev/console, /proc, /sys, /tmp, /init = ``init`` (a script) and ``files`` (path:
    bytes, mode 0755). The cpio is written in Python (no root, no mknod), then ``zstd -19``."""
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = []
    for d in ("bin", "dev", "proc", "sys", "tmp"):
        entries.append((d, stat.S_IFDIR | 0o755, b"", (0, 0)))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, Path("/bin/busybox").read_bytes(), (0, 0)))
    entries.append(("bin/sh", stat.S_IFLNK | 0o777, b"busybox", (0, 0)))
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)))
    entries.append(("init", stat.S_IFREG | 0o755, init.encode(), (0, 0)))
    for name, data in (files or {}).items():
        parts = name.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if all(e[0] != d for e in entries):
                entries.append((d, stat.S_IFDIR | 0o755, b"", (0, 0)))
        entries.append(("/".join(parts), stat.S_IFREG | 0o755, data, (0, 0)))
    archive = bytearray()
    for ino, (name, mode, data, rdev) in enumerate(entries, 1):
        newc.write_entry(archive, name, mode=mode, data=data, ino=ino, rdevmajor=rdev[0], rdevminor=rdev[1])
    newc.write_trailer(archive)
    subprocess.run(
        ["zstd", "-q", "-19", "-f", "-o", str(path)], input=archive, check=True, timeout=COMMAND_TIMEOUT
    )
    return path
