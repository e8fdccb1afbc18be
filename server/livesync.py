"""``perceus vnfs livesync NAME [NODES]`` (guide 4.3.7): push VNFS changes to running nodes.

rsync over ssh from the VNFS working tree to each node's live root, honouring the
VNFS ``livesync.skip`` list and its hybridize list, a bounded number of nodes at once.
One node's failure or hang never stops the others: every rsync runs in its own process
group with a deadline, and its outcome is reported per node.

Flags, chosen for a root filesystem that is in use (see :func:`rsync_command`):
``-aH --numeric-ids`` copies owners by number (the VNFS's uids, not the master's names);
``-x`` keeps rsync on one filesystem on both ends, so ``--delete`` never walks into
the node's NFS or other mounts; ``--delete --delete-delay --delay-updates`` removes stale
files only after the new ones are in place and renames updates in at the end, closer to
atomic; never ``--inplace`` (running binaries and mapped libraries would be rewritten
under the processes using them). No ``-X``/``-A``: the cpio images nodes boot from carry
neither, so a livesync adds nothing a reboot would not have.

Excluded from transfer *and* protected from deletion (rsync never deletes what an
exclude matches unless ``--delete-excluded``, which is never used): ``/proc /sys /dev
/run /tmp``, the state directory mount, every hybridized path (on nodes those are
symlinks into the NFS mount; in the working tree real directories) and every skip entry.
Skip entries are names or partial names, as the guide describes them: each becomes the
rsync pattern ``ENTRY*``, so ``/etc/ssh/ssh_host_`` covers every host key and
``/etc/passwd`` its ``passwd-`` backup too (skipping a little more is the safe side). An
entry without a leading ``/`` matches at any depth (``resolv.conf``); with one it is
anchored at the root; ``*``, ``?`` and ``[...]`` work as in the shell; an entry ending in
``/`` names directories only and is used as written.
"""

import os
import re
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple

from perceus.server import listfile
from perceus.server.db import Node
from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.paths import DEFAULT_STATEDIR

# Never synchronised, whatever the skip list says: kernel, runtime and state trees.
ALWAYS_EXCLUDED = ("/proc", "/sys", "/dev", "/run", "/tmp")
# ssh defaults; options the caller passes come first and win (ssh keeps the first value).
SSH_DEFAULTS = tuple(
    arg
    for option in ("BatchMode=yes", "ConnectTimeout=10", "ServerAliveInterval=15", "ServerAliveCountMax=3")
    for arg in ("-o", option)
)
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.%A-Za-z]*")
# An --itemize-changes line: YXcstpoguax (Y update type, X file type), or a deletion.
_ITEM = re.compile(r"([<>ch.][fdLDS][ .+?a-zA-Z]{9} |\*deleting )")
_RSYNC_OK = {0: "", 24: " (some source files vanished during the transfer)"}


class SyncResult(NamedTuple):
    """One node's outcome: status is ``ok``, ``failed`` or ``timeout``."""

    status: str
    message: str


def parse_skip(text: str, source: str) -> list[str]:
    """The entries of a ``livesync.skip`` file: one name, partial name or path a line.

    Blank lines and ``#`` comments are ignored. Entries are passed to rsync as exclude
    patterns, so characters rsync would read as filter-rule syntax (a lone ``!``, a
    ``+ ``/``- `` prefix) and control characters are refused with ``source:line``.
    """
    entries: list[str] = []
    for line, where in listfile.entries(text, source, "a file name or path"):
        if line == "!" or line[:2] in ("+ ", "- ") or line.startswith(("+,", "-,")):
            raise PerceusError(f"filter rules are not allowed, list names or paths: {line!r}", where)
        if line.strip("/") == "":
            raise PerceusError("skipping '/' would skip everything", where)
        if line not in entries:
            entries.append(line)
    return entries


def skip_pattern(entry: str) -> str:
    """The rsync exclude pattern for one skip entry: the name, or any name it begins."""
    return entry if entry.endswith(("/", "*")) else entry + "*"


def _check_host(host: str) -> str:
    """The host as rsync's remote spec wants it; refuses anything ssh could read as an option."""
    if not host or len(host) > 253 or not _HOST.fullmatch(host):
        raise InvalidRequest(f"not a node address: {host!r}")
    return f"[{host}]" if ":" in host else host


def _check_remote_root(remote_root: str) -> None:
    if not remote_root.startswith("/") or any(ord(ch) < 32 for ch in remote_root):
        raise InvalidRequest(f"remote root must be an absolute path: {remote_root!r}")


def _check_ssh_options(options: Sequence[str]) -> None:
    for option in options:
        if any(ch in option for ch in "'\"\n\r\0"):
            raise InvalidRequest(f"ssh option with quotes or newlines: {option!r}")


def rsync_command(
    source_root: Path,
    target_host: str,
    skip: Sequence[str],
    hybridized: Sequence[str],
    *,
    ssh_options: Sequence[str] = (),
    dry_run: bool = False,
    remote_root: str = "/",
    statedir_mount: str = DEFAULT_STATEDIR,
    io_timeout: int = 60,
    rsync: str = "rsync",
) -> list[str]:
    """The rsync argument list that makes ``target_host:remote_root`` match ``source_root``.

    ``hybridized`` are the hybridize entries (globs allowed) and, ideally, the resolved
    paths :func:`perceus.server.hybridize.matches` found (through in-tree symlinks such
    as ``lib -> usr/lib``); all are anchored at the root. ``skip`` are the
    ``livesync.skip`` entries. ``io_timeout`` bounds rsync's silence on the wire.
    """
    host = _check_host(target_host)
    _check_remote_root(remote_root)
    _check_ssh_options(ssh_options)
    ssh = shlex.join(["ssh", *ssh_options, *SSH_DEFAULTS])
    excludes: list[str] = []
    # hybridize.matches() gives relative paths: anchor them, or they would match at any depth
    anchored = ["/" + path.lstrip("/") for path in (statedir_mount, *hybridized)]
    for pattern in (*ALWAYS_EXCLUDED, *anchored, *map(skip_pattern, skip)):
        if pattern and pattern not in excludes:
            excludes.append(pattern)
    command = [
        rsync,
        "-aHx",
        "--numeric-ids",
        "--delete",
        "--delete-delay",
        "--delay-updates",
        "--itemize-changes",
        f"--timeout={max(1, int(io_timeout))}",
        "-e",
        ssh,
    ]
    if dry_run:
        command.append("--dry-run")
    command += [f"--exclude={pattern}" for pattern in excludes]
    remote = remote_root.rstrip("/") + "/"
    command += [f"{Path(source_root)}/", f"{host}:{remote}"]
    return command


def node_targets(nodes: Iterable[Node]) -> list[tuple[str, str]]:
    """``(hostname, address)`` per node: the address perceusd last saw, else the hostname."""
    return [(node.hostname, node.ipaddr or node.hostname) for node in nodes]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reason(text: str) -> str:
    """The root cause from rsync's stderr: the first line that is not rsync's own epilogue
    (ssh's "Connection refused" comes before rsync's "connection unexpectedly closed")."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    epilogue = ("rsync error:", "rsync: connection unexpectedly closed")
    causes = [line for line in lines if not line.startswith(epilogue)]
    if not causes:
        return (lines[-1] if lines else "no output")[:300]
    more = f" (+{len(causes) - 1} more)" if len(causes) > 1 else ""
    return causes[0][:300] + more


class _Processes:
    """The rsync processes running now, so an interruption can kill every one of them.

    Each rsync has its own session (so a per-node kill takes its ssh along), which also
    means a Ctrl-C at the terminal never reaches it: :meth:`cancel` does that job.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen] = set()
        self.cancelled = False

    def start(self, command: list[str]) -> subprocess.Popen | None:
        with self.lock:
            if self.cancelled:
                return None
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,  # rsync and its ssh share a group we can kill as one
            )
            self.running.add(proc)
            return proc

    def finished(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.running.discard(proc)

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            for proc in self.running:
                _kill_group(proc)


def _sync_one(processes: _Processes, command: list[str], timeout: float, dry_run: bool) -> SyncResult:
    try:
        proc = processes.start(command)
    except OSError as exc:
        return SyncResult("failed", f"cannot run {command[0]}: {exc.strerror}")
    if proc is None:
        return SyncResult("failed", "not started: livesync was interrupted")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        return SyncResult("timeout", f"no result after {timeout:g} s; rsync and ssh were killed")
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise
    finally:
        processes.finished(proc)
    if proc.returncode in _RSYNC_OK:
        lines = [line for line in out.splitlines() if line.strip()]
        changes = sum(1 for line in lines if _ITEM.match(line))
        notes = [line.strip() for line in lines if not _ITEM.match(line)]
        verb = "would change" if dry_run else "changed"
        plural = "s" if changes != 1 else ""
        message = f"{verb} {changes} item{plural}{_RSYNC_OK[proc.returncode]}"
        if notes:  # e.g. "cannot delete non-empty directory: var/log" (it holds skipped files)
            message += f"; {len(notes)} note{'s' if len(notes) != 1 else ''}: {notes[0][:200]}"
        return SyncResult("ok", message)
    if proc.returncode < 0:
        return SyncResult("failed", f"rsync killed by signal {-proc.returncode}")
    return SyncResult("failed", f"rsync exit {proc.returncode}: {_reason(err)}")


def livesync(
    source_root: Path,
    nodes: Sequence[tuple[str, str]],
    skip: Sequence[str],
    hybridized: Sequence[str],
    *,
    ssh_options: Sequence[str] = (),
    parallel: int = 8,
    dry_run: bool = False,
    timeout: float = 600.0,
    remote_root: str = "/",
    statedir_mount: str = DEFAULT_STATEDIR,
    rsync: str = "rsync",
    progress: Callable[[str, SyncResult], None] | None = None,
) -> dict[str, SyncResult]:
    """Synchronise every node's live root with ``source_root``; the outcome per hostname.

    ``nodes`` are ``(hostname, address)`` pairs (see :func:`node_targets`); at most
    ``parallel`` run at once, each killed after ``timeout`` seconds. A node whose address
    is unusable fails alone. ``progress`` is called (from a worker thread) as each node
    finishes, so the CLI can print results as they come.
    """
    source = Path(source_root)
    if not source.is_dir():
        raise PerceusError("VNFS tree not found", str(source))
    if source.resolve() == Path("/"):
        raise InvalidRequest("refusing to synchronise the master's own root filesystem to nodes", str(source))
    if parallel < 1 or timeout <= 0:
        raise InvalidRequest("parallel must be >= 1 and timeout > 0")
    _check_ssh_options(ssh_options)
    _check_remote_root(remote_root)
    io_timeout = max(1, min(int(timeout), 300))
    results: dict[str, SyncResult] = {}
    jobs: dict[str, list[str]] = {}
    for hostname, address in nodes:
        if hostname in results or hostname in jobs:
            continue
        try:
            _check_host(address or hostname)
        except InvalidRequest as exc:  # a bad address in the database fails that node alone
            results[hostname] = SyncResult("failed", exc.what)
            if progress:
                progress(hostname, results[hostname])
            continue
        jobs[hostname] = rsync_command(
            source,
            address or hostname,
            skip,
            hybridized,
            ssh_options=ssh_options,
            dry_run=dry_run,
            remote_root=remote_root,
            statedir_mount=statedir_mount,
            io_timeout=io_timeout,
            rsync=rsync,
        )

    processes = _Processes()

    def run(hostname: str) -> tuple[str, SyncResult]:
        try:
            result = _sync_one(processes, jobs[hostname], timeout, dry_run)
        except Exception as exc:  # one node's trouble is reported, never spread
            result = SyncResult("failed", f"{type(exc).__name__}: {exc}")
        if progress:
            progress(hostname, result)
        return hostname, result

    if jobs:
        pool = ThreadPoolExecutor(max_workers=min(parallel, len(jobs)), thread_name_prefix="livesync")
        try:
            for future in as_completed([pool.submit(run, hostname) for hostname in jobs]):
                hostname, result = future.result()
                results[hostname] = result
        except BaseException:  # Ctrl-C, or the progress callback failed: stop every node
            processes.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
    return {hostname: results[hostname] for hostname, _ in nodes if hostname in results}
