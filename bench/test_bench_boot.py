"""N simulated nodes booting from perceusd, side by side with nginx serving the same image.

For each N in 1, 32, 128, 512 a fresh perceus instance (empty database) serves one VNFS
whose image is 64 MiB of incompressible data. Each round runs, in alternation so machine
load hits both alike:

* perceus: ``perceusd --foreground`` and ``perceus-sim --nodes N --discard --json``: every
  node checks in (and is added, named and recorded), runs its nodescript, downloads the
  image chunk by chunk verifying each chunk's sha256, the overlay and the kernel, and
  checks in ``ready`` once;
* nginx: Debian's nginx (``sendfile on``) serving the same image file, and
  ``python -m perceus.bench.httpget`` making N concurrent GETs, each hashed with sha256.

Both clients keep no bytes and use every core (the simulator runs one process per core,
the HTTP client one thread per connection). Throughput is bytes received / wall seconds
of the whole run, so perceus pays for its check-ins, scripts and database writes and
nginx for nothing but the transfer. The ratios are medians over the rounds; perceusd's
peak RSS is read from /proc (VmHWM) as it exits. Nothing asserts on timing except that
every node succeeds: the figures are printed at the end (bench/conftest.py).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perceus.server import control

BIN = Path(sys.executable).parent
MiB = 1 << 20
IMAGE_MIB = 64
ROUNDS = int(os.environ.get("PERCEUS_BENCH_ROUNDS", "0"))  # 0: 5 rounds up to N = 32, then 2
SIZES = (1, 32, 128, 512)
WORKERS = max(1, min(4, os.cpu_count() or 1))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

NGINX_CONF = """daemon off;
worker_processes auto;
user root;  # the benchmark's temporary directories are private to root
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp; fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
    server {{ listen 127.0.0.1:{port}; root {www}; }}
}}
"""


def _env(root: Path) -> dict:
    env = dict(os.environ)
    env.update(
        PERCEUS_SYSCONFDIR=str(root / "etc"),
        PERCEUS_STATEDIR=str(root / "state"),
        PERCEUS_RUNDIR=str(root / "run"),
        HOME=str(root / "home"),
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    return env


def _perceus(env: dict, *args: str) -> str:
    proc = subprocess.run([str(BIN / "perceus"), "-y", *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"perceus {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="session")
def capsule(tmp_path_factory) -> Path:
    """A VNFS capsule whose image is 64 MiB of random bytes in 4 MiB files (so 16 chunks).

    No kernel: nginx serves the image alone, so perceus moves the same payload (plus each
    node's small overlay)."""
    root = tmp_path_factory.mktemp("capsule")
    tree = root / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("ID=bench\nVERSION_ID=1\n")
    (tree / "data").mkdir()
    for i in range(IMAGE_MIB // 4):
        (tree / "data" / f"blob{i:02d}").write_bytes(os.urandom(4 * MiB))
    env = _env(root / "packer")
    out = root / "bench-1-1.stateless.x86_64.vnfs"
    _perceus(env, "capsule", "pack", str(tree), str(out), "--no-kernel", "--arch", "x86_64")
    return out


def _instance(root: Path, capsule: Path) -> dict:
    env = _env(root)
    for sub in ("run", "home"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    _perceus(env, "init", "--master-device", "lo", "--transfer-master", "127.0.0.1")
    _perceus(env, "vnfs", "import", str(capsule), "--name", "bench")
    defaults = root / "etc" / "defaults.conf"
    defaults.write_text(defaults.read_text().replace("Vnfs Name = ", "Vnfs Name = bench"))
    return env


class Perceusd:
    """perceusd in the foreground on an ephemeral port, logging to a file; peak RSS read as it stops."""

    def __init__(self, env: dict, log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "perceusd"), "--foreground", "--bind", "127.0.0.1", "--port", "0"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        self.port = self._port()

    def _port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if match := re.search(r"listening on [\d.]+:(\d+)", self.log.read_text(errors="replace")):
                return int(match.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"perceusd did not start: {self.log.read_text(errors='replace')}")

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _run_perceus(root: Path, capsule: Path, nodes: int) -> dict:
    env = _instance(root, capsule)
    daemon = Perceusd(env, root / "perceusd.log")
    try:
        argv = [str(BIN / "perceus-sim"), "--master", f"127.0.0.1:{daemon.port}"]
        argv += ["--nodes", str(nodes)]
        argv += ["--json", "--discard", "--workers", str(min(WORKERS, nodes)), "--timeout", "900"]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200)
        rss = daemon.peak_rss_mb()
        master = control.query(root / "run" / "perceusd.sock")["perceusd"]
    finally:
        daemon.stop()
    summary = json.loads(proc.stdout)
    summary["perceusd_rss_mb"] = rss
    summary["master_p50_ms"], summary["master_p99_ms"] = master["checkin_p50_ms"], master["checkin_p99_ms"]
    with sqlite3.connect(root / "state" / "database" / "perceus.db") as db:
        summary["db_ready"] = db.execute("SELECT count(*) FROM nodes WHERE status = 'ready'").fetchone()[0]
    return summary


def _run_nginx(root: Path, image: Path, sha256: str, nodes: int, port: int) -> dict:
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    www = root / "www"
    www.mkdir(exist_ok=True)
    link = www / "image"
    if not link.exists():
        os.link(image, link) if image.stat().st_dev == www.stat().st_dev else shutil.copy(image, link)
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=root, www=www, port=port))
    server = subprocess.Popen([NGINX, "-c", str(conf), "-e", str(root / "error.log")])
    try:
        deadline = time.monotonic() + 10
        while not (root / "nginx.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        argv = [sys.executable, "-m", "perceus.bench.httpget", "--url", f"http://127.0.0.1:{port}/image"]
        argv += ["--clients", str(nodes), "--sha256", sha256]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    finally:
        server.send_signal(signal.SIGQUIT)
        server.wait(30)
    return json.loads(proc.stdout)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def image(capsule, tmp_path_factory) -> tuple[Path, str]:
    """The imported VNFS image file nginx serves, and its sha256."""
    root = tmp_path_factory.mktemp("image")
    _instance(root / "instance", capsule)
    path = root / "image"
    shutil.copy(root / "instance" / "state" / "vnfs" / "bench" / "image", path)
    shutil.rmtree(root / "instance")
    with open(path, "rb") as handle:
        return path, hashlib.file_digest(handle, "sha256").hexdigest()


@pytest.mark.parametrize("nodes", SIZES)
def test_boot_side_by_side(nodes, capsule, image, tmp_path, record_property, benchmark):
    ours, theirs = [], []

    def run_nginx() -> None:  # pedantic's setup: untimed by pytest-benchmark, timed by the client
        result = _run_nginx(tmp_path / "nginx", image[0], image[1], nodes, _free_port())
        assert result["failed"] == 0, result["failures"]
        theirs.append(result)

    def run_perceus() -> None:
        root = tmp_path / f"perceus{len(ours)}"
        summary = _run_perceus(root, capsule, nodes)
        shutil.rmtree(root)
        assert summary["failed"] == 0, summary["failures"]
        assert summary["ok"] == nodes and summary["db_ready"] == nodes
        ours.append(summary)

    benchmark.pedantic(run_perceus, setup=run_nginx, rounds=ROUNDS or (5 if nodes <= 32 else 2))
    mbps = statistics.median(s["mb_per_s"] for s in ours)
    ngx = statistics.median(r["mb_per_s"] for r in theirs)
    wall = statistics.median(s["wall_s"] for s in ours)
    p50 = statistics.median(s["checkin_p50_ms"] for s in ours)
    p99 = statistics.median(s["checkin_p99_ms"] for s in ours)
    master_p99 = statistics.median(s["master_p99_ms"] for s in ours)
    rate = statistics.median(s["checkins"] / s["wall_s"] for s in ours)
    rss = max(s["perceusd_rss_mb"] for s in ours)
    line = (
        f"boot N={nodes:>3}: perceus {mbps:6.0f} MB/s vs nginx {ngx:6.0f} MB/s = {mbps / ngx:.2f}x; "
        f"wall {wall:6.2f} s ({wall / nodes * 1000:5.1f} ms/node); check-in p50 {p50:5.1f} / "
        f"p99 {p99:6.1f} ms (master's share p99 {master_p99:5.1f} ms); {rate:6.1f} check-ins/s; "
        f"perceusd peak RSS {rss:.0f} MB"
    )
    record_property("ratio_line", line)
    print(line)
