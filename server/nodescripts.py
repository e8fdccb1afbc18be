"""Nodescript assembly: the shell script perceusd sends a node at each check-in.

Layers, lowest first (only directories that exist take part)::

    $STATEDIR/vnfs/<V>/nodescripts/<state>/    the VNFS capsule's own scripts
    $STATEDIR/nodescripts/<state>/vnfs/<V>/
    $STATEDIR/nodescripts/<state>/all/
    $STATEDIR/nodescripts/<state>/group/<G>/
    $STATEDIR/nodescripts/<state>/node/<N>/

As in the original, a file in a later layer replaces a file of the same basename in an
earlier one, and the survivors are sent sorted by basename (so ``05-early`` in ``node/``
runs before ``10-net`` in ``all/``). The capsule's scripts are the lowest layer so a site
overrides one by putting a file of the same name in any site layer, without touching the
imported VNFS. Only the check-in's own state is read: an ``init`` check-in never sees
``ready`` scripts.

What counts as a nodescript: regular files only. Directories, FIFOs, devices and dangling
symlinks are ignored (the original skipped directories too), as are hidden files
(``.name``) and editor or package-manager leftovers (``name~``, ``*.rpmsave``,
``*.rpmnew``, ``*.rpmorig``, ``*.dpkg-*``). An ignored entry does not override anything.

Symlinks: followed only while they stay inside the state directory, because that is how
nodescripts are activated (the original linked a capsule's scripts into
``<state>/vnfs/<V>/``, and modules link their scripts from ``$STATEDIR/modules``). A
symlink, or a layer directory, whose target lies outside the state directory is never
followed: the assembly is refused with a PerceusError naming it, so a node never boots
with a silently different script set. Node, group, VNFS and state names become path
components and are refused if they could escape (``/``, ``..``, whitespace, control
characters).

Parts: a file with any execute bit runs ON THE MASTER (argv[0] = its resolved path; a file
without ``#!`` runs under /bin/sh), with exactly the environment of
:meth:`NodeContext.environment`, its own directory as cwd, stdin on /dev/null and its own
session and process group; its stdout becomes the part. Any other file is sent as it is,
byte for byte. Each part is preceded by a ``# perceus nodescript part: <path>`` comment
line and ends with a newline. When an executable finishes, whatever it left running in
its process group is killed: generation must not leave processes behind on the master.

Generation fails with a PerceusError naming the part when an executable exits non-zero
(the status and the tail of its stderr are in the message), when the whole assembly
outlives ``timeout`` seconds (the running part's process group is killed), or when the
script would exceed ``max_bytes``. A failed generation sends nothing.

On the node: the header exports the variables above (shell-quoted; not PATH, the node
keeps its own) and, at DEBUG >= 5, turns on ``set -x``. The parts then run in one shell,
in sequence, WITHOUT ``set -e``, exactly as the original ran them: a failing command does
not stop the rest, and a part that must stop provisioning says ``exit 1`` (which, the
parts being one script, ends the whole nodescript). Adding ``set -e`` would change the
meaning of scripts sites already have.

perceusd passes ``destdir`` (a per-session staging directory, or a function making it on
first use: master-side parts see it as DESTDIR, with PERCEUS_SYSCONFDIR, and what they
leave there becomes the node's overlay), ``skip`` (parts to leave out: secret modules for
unauthenticated nodes) and ``extra_env`` (more variables for master-side parts). None of
these is exported to the node.

``assemble_async`` does the work (perceusd is asyncio); ``assemble`` runs it to completion
for synchronous callers and must not be called from inside a running event loop.
"""

import asyncio
import errno
import logging
import os
import re
import shlex
import signal
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from perceus.server import netinfo
from perceus.server.config import Settings
from perceus.server.db.model import Node
from perceus.server.errors import PerceusError
from perceus.server.paths import Paths

log = logging.getLogger(__name__)

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# The variables a nodescript sees, in the original's order.
VARIABLES = (
    "STATE",
    "NODENAME",
    "VNFS",
    "ENABLED",
    "DEBUG",
    "GROUPNAME",
    "NODEID",
    "IPADDR",
    "STATEDIR",
    "VNFSMASTER",
    "VNFSMETHOD",
    "VNFSPREFIX",
)
DEBUG_TRACE_LEVEL = 5
STDERR_TAIL = 1024
_CHUNK = 64 << 10
# A name used as one path component: no separator, whitespace or control characters.
_COMPONENT = re.compile(r"[^\x00-\x20\x7f/]{1,255}")
_BACKUP_SUFFIXES = ("~", ".rpmsave", ".rpmnew", ".rpmorig")


@dataclass(frozen=True)
class NodeContext:
    """Everything about one check-in that decides which scripts run and what they see."""

    state: str
    nodename: str
    nodeid: str
    vnfs: str
    enabled: int
    debug: int
    groupname: str
    ipaddr: str
    statedir: Path
    vnfsmaster: str
    vnfsmethod: str
    vnfsprefix: str

    @classmethod
    def from_node(cls, node: Node, state: str, settings: Settings, ipaddr: str) -> "NodeContext":
        """The context of ``node`` checking in at ``state`` from ``ipaddr`` (the original left IPADDR empty).

        An empty ``vnfs transfer master`` means the address of ``master network device``,
        as perceus.conf documents; empty if that device has no address.
        """
        conf = settings.perceus
        master = conf.get("vnfs transfer master") or netinfo.ipv4_address(conf.get("master network device"))
        return cls(
            state=state,
            nodename=node.hostname,
            nodeid=node.nodeid,
            vnfs=node.vnfs,
            enabled=int(node.enabled),
            debug=int(node.debug),
            groupname=node.group,
            ipaddr=ipaddr,
            statedir=settings.paths.statedir,
            vnfsmaster=master or "",
            vnfsmethod=conf.get("vnfs transfer method"),
            vnfsprefix=conf.get("vnfs transfer prefix"),
        )

    def variables(self) -> dict[str, str]:
        """The nodescript variables alone, as the node's header exports them."""
        values = {
            "STATE": self.state,
            "NODENAME": self.nodename,
            "VNFS": self.vnfs,
            "ENABLED": str(self.enabled),
            "DEBUG": str(self.debug),
            "GROUPNAME": self.groupname,
            "NODEID": self.nodeid,
            "IPADDR": self.ipaddr,
            "STATEDIR": str(self.statedir),
            "VNFSMASTER": self.vnfsmaster,
            "VNFSMETHOD": self.vnfsmethod,
            "VNFSPREFIX": self.vnfsprefix,
        }
        for name, value in values.items():
            if "\0" in value:
                raise PerceusError(f"{name} contains a NUL byte", self.nodename)
        return values

    def environment(self) -> dict[str, str]:
        """The complete environment of a master-side executable: nothing of perceusd's leaks in."""
        return {**self.variables(), "PATH": PATH}


def _component(value: str, what: str, ctx: NodeContext) -> str:
    if not _COMPONENT.fullmatch(value) or value in (".", ".."):
        raise PerceusError(f"{what} {value!r} cannot name a nodescript directory", ctx.nodename or ctx.nodeid)
    return value


def _inside(path: Path, root: Path) -> Path:
    """``path`` with every symlink resolved; refused if that leads outside ``root`` (resolved)."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise PerceusError(f"cannot resolve nodescript path: {exc}", str(path)) from exc
    if not resolved.is_relative_to(root):
        raise PerceusError("nodescript path leads outside the state directory", str(path))
    return resolved


# ---- caches: hundreds of nodes check in at once, and the directories rarely change ----
#
# A directory's listing (and that it lies inside the state directory) is kept while its
# (device, inode, mtime, ctime) stays the same, but never for a directory changed in the last
# RACY_SECONDS (a change within the same clock tick would not show in its mtime). Symlinked
# entries are checked again at every use (their targets change without the directory).

RACY_SECONDS = 2.0
_CACHE_SIZE = 4096
_Signature = tuple[int, int, int, int]
_Listing = tuple[tuple[str, Path, bool], ...]
_listings: "OrderedDict[tuple[str, str], tuple[_Signature, _Listing]]" = OrderedDict()
_inside_dirs: "OrderedDict[tuple[str, str], _Signature]" = OrderedDict()
_roots: dict[str, tuple[tuple[int, int], Path]] = {}


def _dir_signature(path: Path) -> _Signature | None:
    """(device, inode, mtime, ctime) of a directory (symlinks followed); None if it is not one."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISDIR(info.st_mode):
        return None
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)


def _cacheable(signature: _Signature) -> bool:
    return time.time_ns() - max(signature[2], signature[3]) > RACY_SECONDS * 1e9


def _remember(cache: OrderedDict, key: tuple, value: object) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


def _state_root(statedir: Path) -> Path:
    """The resolved state directory, resolved again only when the path leads elsewhere."""
    key = str(statedir)
    try:
        info = os.stat(statedir)
        ident = (info.st_dev, info.st_ino)
    except OSError:
        return Path(statedir).resolve()
    found = _roots.get(key)
    if found is not None and found[0] == ident:
        return found[1]
    root = Path(statedir).resolve()
    if len(_roots) > _CACHE_SIZE:
        _roots.clear()
    _roots[key] = (ident, root)
    return root


def clear_caches() -> None:
    """Forget every cached directory listing (tests; never needed for correctness)."""
    _listings.clear()
    _inside_dirs.clear()
    _roots.clear()


def layers(nodescripts_dir: Path, vnfs_dir: Path, ctx: NodeContext) -> list[Path]:
    """The existing nodescript directories for this check-in, lowest (overridden first) first."""
    state = _component(ctx.state, "state", ctx)
    node = _component(ctx.nodename, "node name", ctx)
    base = Path(nodescripts_dir) / state
    candidates = []
    if ctx.vnfs:
        vnfs = _component(ctx.vnfs, "VNFS name", ctx)
        candidates += [Path(vnfs_dir) / vnfs / "nodescripts" / state, base / "vnfs" / vnfs]
    candidates.append(base / "all")
    if ctx.groupname:
        candidates.append(base / "group" / _component(ctx.groupname, "group name", ctx))
    candidates.append(base / "node" / node)
    root = _state_root(ctx.statedir)
    found = []
    for candidate in candidates:
        signature = _dir_signature(candidate)
        if signature is None:
            continue
        key = (str(candidate), str(root))
        if _inside_dirs.get(key) != signature:
            _inside(candidate, root)
            _remember(_inside_dirs, key, signature)
        found.append(candidate)
    return found


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith(_BACKUP_SUFFIXES) or ".dpkg-" in name


def _listing(layer: Path, root: Path) -> _Listing:
    """A layer's candidate nodescripts, sorted by name: (name, path, is a symlink). Regular
    files are final; symlinks are checked at use. Cached (see above)."""
    signature = _dir_signature(layer)
    key = (str(layer), str(root))
    cached = _listings.get(key)
    if cached is not None and signature is not None and cached[0] == signature:
        _listings.move_to_end(key)
        return cached[1]
    try:
        entries = sorted(os.scandir(layer), key=lambda entry: entry.name)
    except OSError as exc:
        raise PerceusError(f"cannot read nodescript directory: {exc.strerror}", str(layer)) from exc
    found = []
    for entry in entries:
        if _ignored(entry.name):
            continue
        path = Path(layer) / entry.name
        if entry.is_symlink():
            found.append((entry.name, path, True))
            continue
        resolved = _inside(path, root)
        try:
            mode = resolved.stat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode):
            found.append((entry.name, path, False))
    listing = tuple(found)
    if signature is not None and _cacheable(signature):
        _remember(_listings, key, (signature, listing))
    return listing


def collect(layers: Sequence[Path], root: Path) -> list[Path]:
    """The nodescripts of ``layers``: later layers override earlier by basename; sorted by basename.

    ``root`` is the state directory: no symlink is followed out of it (PerceusError).
    """
    root = _state_root(Path(root))
    chosen: dict[str, Path] = {}
    for layer in layers:
        for name, path, symlink in _listing(layer, root):
            if symlink:
                resolved = _inside(path, root)
                try:
                    mode = resolved.stat().st_mode
                except OSError:
                    log.warning("ignoring dangling nodescript symlink %s", path)
                    continue
                if not stat.S_ISREG(mode):
                    continue
            chosen[name] = path
    return [chosen[name] for name in sorted(chosen)]


def plan(
    ctx: NodeContext, nodescripts_dir: Path, vnfs_dir: Path, skip: Callable[[Path], bool] | None = None
) -> list[Path]:
    """The parts of this check-in's nodescript, in the order the node runs them.

    ``skip(resolved_path)`` leaves a part out (and it overrides nothing): perceusd uses it
    to keep secret modules from nodes that did not prove the site key.
    """
    parts = collect(layers(nodescripts_dir, vnfs_dir, ctx), ctx.statedir)
    if skip is None:
        return parts
    root = _state_root(ctx.statedir)
    return [path for path in parts if not skip(_inside(path, root))]


def _printable(path: Path) -> bytes:
    """A path fit for one comment line: anything unprintable escaped, so a name cannot inject code."""
    return "".join(
        ch if ch.isprintable() and ch != "\\" else ch.encode("unicode_escape", "backslashreplace").decode()
        for ch in os.fsdecode(os.fsencode(path))
    ).encode("utf-8", "backslashreplace")


def header(ctx: NodeContext) -> bytes:
    """The script's opening: interpreter line, the exported variables and, when debugging, ``set -x``."""
    lines = ["#!/bin/sh", "# perceus nodescript"]
    lines += [f"{name}={shlex.quote(value)}; export {name}" for name, value in ctx.variables().items()]
    if ctx.debug >= DEBUG_TRACE_LEVEL:
        lines.append("set -x")
    return ("\n".join(lines) + "\n").encode()


class _Budget:
    """The shared bounds of one assembly: time left and bytes left."""

    def __init__(self, timeout: float, max_bytes: int) -> None:
        self.timeout = timeout
        self.deadline = asyncio.get_running_loop().time() + timeout
        self.bytes_left = max_bytes
        self.max_bytes = max_bytes

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    def timed_out(self, where: Path) -> PerceusError:
        return PerceusError(f"nodescript generation timed out after {self.timeout:g} s", str(where))

    def too_big(self, where: Path) -> PerceusError:
        return PerceusError(f"nodescript larger than {self.max_bytes} bytes", str(where))

    def take(self, size: int, where: Path) -> None:
        if size > self.bytes_left:
            raise self.too_big(where)
        self.bytes_left -= size


def _open_part(path: Path, root: Path) -> tuple[int, Path, os.stat_result]:
    """Open a part for reading without following a symlink swapped in since it was collected."""
    resolved = _inside(path, root)
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PerceusError(f"cannot open nodescript: {exc.strerror}", str(path)) from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise PerceusError("nodescript is no longer a regular file", str(path))
    return fd, resolved, info


def _read_part(fd: int, path: Path, budget: _Budget) -> bytes:
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(budget.bytes_left + 1)
    budget.take(len(data), path)
    return data


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the part is its own session: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass


async def _spawn(argv: list[str], cwd: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


async def _tail(stream: asyncio.StreamReader, keep: int) -> bytes:
    tail = bytearray()
    while chunk := await stream.read(_CHUNK):
        tail += chunk
        del tail[:-keep]
    return bytes(tail)


async def _outputs(proc: asyncio.subprocess.Process, path: Path, budget: _Budget) -> tuple[bytes, bytes, int]:
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.ensure_future(_tail(proc.stderr, STDERR_TAIL))
    try:
        out = bytearray()
        while chunk := await proc.stdout.read(_CHUNK):
            out += chunk
            if len(out) > budget.bytes_left:
                raise budget.too_big(path)
        err = await errors
        status = await proc.wait()
    finally:
        errors.cancel()
    return bytes(out), err, status


def _describe_failure(status: int, err: bytes) -> str:
    if status < 0:
        try:
            what = f"killed by {signal.Signals(-status).name}"
        except ValueError:
            what = f"killed by signal {-status}"
    else:
        what = f"exited with status {status}"
    lines = [line.strip() for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
    return f"nodescript {what}" + (f": {' | '.join(lines)}" if lines else "")


async def _run_part(path: Path, resolved: Path, env: dict[str, str], budget: _Budget) -> bytes:
    if budget.remaining() <= 0:
        raise budget.timed_out(path)
    try:
        try:
            proc = await _spawn([str(resolved)], resolved.parent, env)
        except OSError as exc:
            if exc.errno != errno.ENOEXEC:
                raise
            proc = await _spawn(["/bin/sh", str(resolved)], resolved.parent, env)  # no #! line
    except OSError as exc:
        raise PerceusError(f"cannot run nodescript: {exc.strerror or exc}", str(path)) from exc
    try:
        out, err, status = await asyncio.wait_for(_outputs(proc, path, budget), max(budget.remaining(), 0))
    except TimeoutError:
        raise budget.timed_out(path) from None
    finally:
        _kill_group(proc)  # on success its leftovers, on failure the whole part
        await asyncio.shield(proc.wait())
    if status != 0:
        raise PerceusError(_describe_failure(status, err), str(path))
    budget.take(len(out), path)
    return out


class Assembly(NamedTuple):
    """An assembled nodescript and the parts it holds (none: the header alone, nothing to run)."""

    script: bytes
    parts: tuple[Path, ...]


def master_environment(
    ctx: NodeContext, destdir: Path | None = None, extra_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What a master-side part runs with: the node's variables, plus DESTDIR (the node's
    overlay staging directory) and PERCEUS_SYSCONFDIR when perceusd gives a ``destdir``,
    plus ``extra_env``. None of these extras is exported to the node."""
    env = ctx.environment()
    if destdir is not None:
        env["DESTDIR"] = str(destdir)
        env["PERCEUS_SYSCONFDIR"] = str(Paths.from_environment().sysconfdir)
    for name, value in (extra_env or {}).items():
        if "\0" in name or "=" in name or not name or "\0" in value:
            raise PerceusError(f"bad environment variable {name!r}", ctx.nodename or ctx.nodeid)
        env[name] = value
    return env


async def assemble_parts_async(
    ctx: NodeContext,
    nodescripts_dir: Path,
    vnfs_dir: Path,
    *,
    timeout: float = 30.0,
    max_bytes: int = 4 << 20,
    destdir: Path | Callable[[], Path] | None = None,
    skip: Callable[[Path], bool] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Assembly:
    """The nodescript for this check-in and which parts went in (perceusd announces a SCRIPT
    only when there is at least one), built without blocking perceusd's event loop.

    ``destdir``: the session's empty overlay staging directory, DESTDIR to master-side
    parts (what they leave there reaches the node's root); it may also be a function that
    makes it, called once just before the first master-side part runs and never when none
    does (perceusd makes no directory for the many check-ins without one).
    ``skip(resolved_path)``: parts to leave out; ``extra_env``: more variables for
    master-side parts only."""
    budget = _Budget(timeout, max_bytes)
    root = _state_root(ctx.statedir)
    if not callable(destdir):
        env: dict[str, str] | None = master_environment(ctx, destdir, extra_env)
    else:
        master_environment(ctx, None, extra_env)  # refuse bad variables before anything runs
        env = None
    parts = plan(ctx, nodescripts_dir, vnfs_dir, skip)
    script = bytearray(header(ctx))
    budget.take(len(script), Path(nodescripts_dir))
    for path in parts:
        marker = b"# perceus nodescript part: " + _printable(path) + b"\n"
        budget.take(len(marker), path)
        fd, resolved, info = _open_part(path, root)
        if info.st_mode & 0o111:
            os.close(fd)
            if env is None:
                assert callable(destdir)
                env = master_environment(ctx, destdir(), extra_env)
            body = await _run_part(path, resolved, env, budget)
        else:
            body = _read_part(fd, path, budget)
        if body and not body.endswith(b"\n"):
            budget.take(1, path)
            body += b"\n"
        script += marker + body
    return Assembly(bytes(script), tuple(parts))


async def assemble_async(ctx: NodeContext, nodescripts_dir: Path, vnfs_dir: Path, **options: Any) -> bytes:
    """The nodescript for this check-in, built without blocking perceusd's event loop;
    ``options`` as :func:`assemble_parts_async` takes them."""
    return (await assemble_parts_async(ctx, nodescripts_dir, vnfs_dir, **options)).script


def assemble(ctx: NodeContext, nodescripts_dir: Path, vnfs_dir: Path, **options: Any) -> bytes:
    """The nodescript for this check-in, for callers without an event loop (the CLI, tests)."""
    return asyncio.run(assemble_async(ctx, nodescripts_dir, vnfs_dir, **options))
