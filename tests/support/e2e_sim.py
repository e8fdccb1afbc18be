"""End-to-end helpers: a real perceusd process and the real node programs (no fakes).

* :func:`pack_vnfs` packs a small tree of random files (several image chunks) and a kernel;
* :class:`Perceusd` runs ``perceusd --foreground --bind 127.0.0.1 --port 0`` for an
  instance, collects its log lines in a thread and is always stopped (``with``);
* :func:`perceus_sim` / :func:`stage1_sim` run ``perceus-sim`` and
  ``perceus-stage1 --simulate`` as child processes with bounded time;
* :func:`overlay_files` reads an overlay (one zstd frame of one cpio newc archive).
"""

import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard

from perceus.common import newc

from tests.support.instance import BIN, Instance

MiB = 1 << 20
VNFS = "e2e"
STEP = 60.0  # bound of any single wait for a process or a log line (never reached when all works)


def pack_vnfs(
    instance: Instance, work: Path, *, seed: str = "a", files: int = 6, size: int = 3 * MiB // 2
) -> Path:
    """A capsule whose image holds ``files`` random files (so several 4 MiB chunks) and a kernel."""
    tree = work / f"tree-{seed}"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text(f'ID=e2e\nVERSION_ID="{seed}"\n')
    (tree / "etc" / "motd").write_text(f"image {seed}\n")
    (tree / "root").mkdir(mode=0o700)
    os.chmod(tree / "root", 0o700)
    (tree / "data").mkdir()
    for i in range(files):
        (tree / "data" / f"blob{i:02d}").write_bytes(os.urandom(size))
    kernel = work / f"vmlinuz-{seed}"
    kernel.write_bytes(f"kernel {seed}\n".encode() * 4096)
    capsule = work / f"e2e-{seed}-1.stateless.x86_64.vnfs"
    instance.ok("capsule", "pack", str(tree), str(capsule), "--kernel", str(kernel), "--arch", "x86_64")
    return capsule


def import_vnfs(instance: Instance, capsule: Path, name: str = VNFS, *, default: bool = True) -> None:
    """Import ``capsule`` as ``name``; with ``default`` new nodes get it (defaults.conf Vnfs Name)."""
    instance.ok("vnfs", "import", str(capsule), "--name", name)
    if default:
        conf = instance.sysconfdir / "defaults.conf"
        text = conf.read_text()
        assert re.search(r"(?m)^Vnfs Name\s*=", text), text
        conf.write_text(re.sub(r"(?m)^Vnfs Name\s*=.*$", f"Vnfs Name = {name}", text))


def manifest_rootfs(instance: Instance, name: str = VNFS) -> dict:
    """The rootfs member of an imported VNFS's manifest (sha256, chunks, ...)."""
    manifest = json.loads((instance.statedir / "vnfs" / name / "manifest.json").read_text())
    return next(m for m in manifest["members"] if m["name"] == "rootfs")


def set_conf(instance: Instance, key: str, value: str) -> None:
    """Set ``key = value`` in perceus.conf (replacing the line if there is one)."""
    path = instance.sysconfdir / "perceus.conf"
    text = path.read_text()
    pattern = re.compile(rf"(?m)^\s*{re.escape(key)}\s*=.*$")
    line = f"{key} = {value}"
    text = pattern.sub(line, text) if pattern.search(text) else text.rstrip("\n") + f"\n{line}\n"
    path.write_text(text)


class Perceusd:
    """``perceusd --foreground`` on 127.0.0.1 and a free port; its stderr lines in :attr:`lines`."""

    def __init__(self, instance: Instance, rundir: Path) -> None:
        rundir.mkdir(parents=True, exist_ok=True)
        self.env = dict(instance.env, PERCEUS_RUNDIR=str(rundir))
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [str(BIN / "perceusd"), "--foreground", "--bind", "127.0.0.1", "--port", "0"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.port = int(self.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        except BaseException:
            self.stop()
            raise
        self.master = f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # EOF marker: perceusd is gone
            self._cond.notify_all()

    def matching(self, pattern: str) -> list[re.Match]:
        with self._cond:
            return [m for line in self.lines if (m := re.search(pattern, line))]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = STEP) -> re.Match:
        """The ``count``-th log line matching ``pattern`` (bounded wait)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for line in self.lines if (m := re.search(pattern, line))]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                gone = self.proc.poll() is not None and self.lines and self.lines[-1] == ""
                if left <= 0 or gone:
                    raise AssertionError(f"perceusd never said {pattern!r} ({count}x):\n" + self.log())
                self._cond.wait(min(left, 0.5))

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._reader.join(10)
        return self.proc.returncode

    def __enter__(self) -> "Perceusd":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Ran:
    status: int
    out: str
    err: str


def _run(argv: list[str], env: dict, timeout: float) -> Ran:
    proc = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def perceus_sim(master: Perceusd, *args: str, timeout: float = 240.0) -> Ran:
    """``perceus-sim --master ... ARGS``."""
    return _run([str(BIN / "perceus-sim"), "--master", master.master, *args], master.env, timeout)


def stage1_sim(master: Perceusd, simdir: Path, *args: str, timeout: float = 120.0) -> Ran:
    """``perceus-stage1 --simulate SIMDIR --master ... ARGS`` (one simulated node)."""
    argv = [str(BIN / "perceus-stage1"), "--simulate", str(simdir), "--master", master.master, *args]
    return _run(argv, master.env, timeout)


@dataclass
class File:
    mode: int
    data: bytes


def overlay_files(path: Path) -> dict[str, File]:
    """An overlay's entries by path (without a leading ``./`` or ``/``): mode and content."""
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    entries = {}
    for entry in newc.iter_entries(io.BytesIO(raw)):
        name = entry.name.decode()
        while name.startswith(("./", "/")):
            name = name.removeprefix(".").removeprefix("/")
        entries[name] = File(entry.mode, entry.data)
    return entries


def shell_vars(text: str) -> dict[str, str]:
    """``KEY="value"`` lines (node.conf) as a dict."""
    return {m.group(1): m.group(2) for m in re.finditer(r'(?m)^([A-Z_0-9]+)="([^"]*)"$', text)}
