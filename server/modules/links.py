"""Activation: symlinks from the nodescript layers into a module's scripts, and the activate hook.

Module ``M`` is active at ``init/group/io`` when ``$STATEDIR/nodescripts/init/group/io/``
holds, for each of M's ``init`` scripts, a symlink of the same basename pointing at
``$STATEDIR/modules/M/nodescripts/init/<script>``. The links are relative (the state tree
can move) and nodescripts.py follows them because they stay inside the state directory.
Which module a link belongs to is read back from where it points, so no other record
exists that could disagree with what perceusd actually assembles.
"""

import errno
import os
import signal
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from perceus.server.errors import PerceusError
from perceus.server.modules.layout import NAME_RE, NODESCRIPTS, SCOPES, Activation, Module
from perceus.server.paths import Paths

HOOK_TIMEOUT = 60.0
HOOK_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_TAIL = 600


@dataclass(frozen=True)
class Link:
    """One activation symlink and what it points at."""

    path: Path
    activation: Activation
    module: str  # the module directory it points into
    state: str  # the module's script state it points at (normally activation.state)
    script: str


def _subdirs(path: Path) -> Iterator[str]:
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if NAME_RE.fullmatch(entry.name) and entry.is_dir():
            yield entry.name


def layer_dirs(paths: Paths) -> list[tuple[Activation, Path]]:
    """Every existing nodescript layer directory, as the activation it stands for."""
    found = []
    base = paths.nodescripts_dir
    for state in _subdirs(base):
        if (base / state / "all").is_dir():
            found.append((Activation(state, "all"), base / state / "all"))
        for scope in SCOPES[1:]:
            for name in _subdirs(base / state / scope):
                found.append((Activation(state, scope, name), base / state / scope / name))
    return found


def _module_of(link: Path, modules_root: Path) -> tuple[str, str, str] | None:
    """(module, state, script) when ``link`` points at ``modules/<M>/nodescripts/<state>/<script>``."""
    try:
        rel = Path(os.path.realpath(link)).relative_to(modules_root)
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) != 4 or parts[1] != NODESCRIPTS or parts[0].startswith("."):
        return None
    return parts[0], parts[2], parts[3]


def scan(paths: Paths) -> list[Link]:
    """Every module activation link in the state tree (dangling ones included)."""
    modules_root = Path(os.path.realpath(paths.modules_dir))
    links = []
    for activation, directory in layer_dirs(paths):
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if not entry.is_symlink():
                continue
            owner = _module_of(Path(entry.path), modules_root)
            if owner is not None:
                links.append(Link(Path(entry.path), activation, *owner))
    return links


def _target(link_dir: Path, script: Path) -> str:
    """The relative symlink text from a layer directory (which may not exist yet) to a script."""
    return os.path.relpath(os.path.realpath(script), os.path.realpath(link_dir))


def _check_inside(directory: Path, statedir: Path) -> None:
    if not Path(os.path.realpath(directory)).is_relative_to(os.path.realpath(statedir)):
        raise PerceusError("the nodescript directory leads outside the state directory", str(directory))


def plan_links(paths: Paths, module: Module, activations: Iterable[Activation]) -> list[tuple[Path, str]]:
    """The (link, target) pairs activation must create; refuses conflicts and unknown states.

    Links already in place (pointing at the same script) are left out, which is what makes
    activation idempotent.
    """
    modules_root = Path(os.path.realpath(paths.modules_dir))
    todo = []
    for activation in activations:
        scripts = module.scripts(activation.state)
        if not scripts:
            have = ", ".join(module.script_states()) or "none"
            raise PerceusError(
                f"module '{module.name}' has no scripts for state '{activation.state}' (it has: {have})"
            )
        directory = activation.directory(paths.nodescripts_dir)
        _check_inside(directory, paths.statedir)
        for script in scripts:
            link = directory / script.name
            if link.is_symlink() or link.exists():
                owner = _module_of(link, modules_root) if link.is_symlink() else None
                if owner == (module.name, activation.state, script.name):
                    continue
                whose = f"module '{owner[0]}'" if owner else "not a module link"
                raise PerceusError(f"{activation}/{script.name} already exists ({whose})", str(link))
            todo.append((link, _target(directory, script)))
    return todo


def create_links(todo: list[tuple[Path, str]]) -> None:
    """Create every link or, on any failure, none (links and directories made are undone)."""
    made: list[Path] = []
    made_dirs: list[Path] = []
    try:
        for link, target in todo:
            missing = [p for p in (link.parent, *link.parent.parents) if not p.exists()]
            for directory in reversed(missing):
                directory.mkdir(mode=0o755)
                made_dirs.append(directory)
            os.symlink(target, link)
            made.append(link)
    except BaseException as exc:
        for link in made:
            link.unlink(missing_ok=True)
        for directory in reversed(made_dirs):
            try:
                directory.rmdir()
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise PerceusError(f"cannot create link: {exc.strerror}", str(exc.filename or "")) from None
        raise


def remove_links(links: Iterable[Link]) -> int:
    """Remove exactly these symlinks (their directories stay); returns how many went."""
    count = 0
    for link in links:
        try:
            link.path.unlink()
            count += 1
        except FileNotFoundError:
            pass
    return count


def resync(paths: Paths, module: Module, warn) -> None:
    """After a module is replaced: drop links to scripts it no longer has, link its new ones."""
    mine = [link for link in scan(paths) if link.module == module.name]
    remove_links(link for link in mine if not link.path.exists())
    for activation in sorted({link.activation for link in mine}):
        try:
            create_links(plan_links(paths, module, [activation]))
        except PerceusError as exc:
            warn(f"perceus: warning: {exc.what}; '{module.name}' is no longer complete at {activation}")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_hook(paths: Paths, module: Module, activations: Iterable[Activation], timeout: float) -> str:
    """Run the module's ``activate`` executable on the master; returns its output.

    It sees PATH, PERCEUS_SYSCONFDIR, PERCEUS_STATEDIR, STATEDIR, MODULE, MODULEDIR and
    MODULE_STATES (the activations, space separated), runs in the module's directory in
    its own session, and is killed (with anything it started) after ``timeout`` seconds.
    """
    hook = module.hook
    if hook is None:
        return ""
    env = {
        "PATH": HOOK_PATH,
        "PERCEUS_SYSCONFDIR": str(paths.sysconfdir),
        "PERCEUS_STATEDIR": str(paths.statedir),
        "STATEDIR": str(paths.statedir),
        "MODULE": module.name,
        "MODULEDIR": str(module.path),
        "MODULE_STATES": " ".join(str(a) for a in activations),
    }
    options = dict(
        cwd=module.path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            proc = subprocess.Popen([str(hook)], **options)
        except OSError as exc:
            if exc.errno != errno.ENOEXEC:
                raise
            proc = subprocess.Popen(["/bin/sh", str(hook)], **options)  # no #! line
    except OSError as exc:
        raise PerceusError(f"cannot run the activate hook: {exc.strerror}", str(hook)) from None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        raise PerceusError(f"the activate hook timed out after {timeout:g} s", str(hook)) from None
    finally:
        _kill_group(proc.pid)
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        tail = " | ".join(line.strip() for line in text.splitlines() if line.strip())[-_TAIL:]
        raise PerceusError(
            f"the activate hook exited with status {proc.returncode}" + (f": {tail}" if tail else ""),
            str(hook),
        )
    return text
