"""Installed modules on the master: import a ``.pmod``, pack one, install the built-ins, delete.

Every change is built beside the target under ``$STATEDIR/modules/.<something>`` and
renamed into place (a replaced module is swapped in with one ``renameat2`` exchange
where the kernel has it), so perceusd sees the old module or the new one, never half of
one. Changes take ``$STATEDIR/modules/.lock`` so two commands cannot interleave.
"""

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from perceus import capsule
from perceus.capsule.format import MEMBER_RE
from perceus.common.atomicfile import fsync_dir, replace_tree
from perceus.server.errors import PerceusError
from perceus.server.modules import links as linkops
from perceus.server.modules.layout import MODULE_JSON, NAME_RE, NODESCRIPTS, Module, check_name
from perceus.server.paths import Paths

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data" / "modules"


class ModuleStore:
    """The modules of one master: ``$STATEDIR/modules/<name>/``."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.root = paths.modules_dir

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Installed module names (hidden work directories are not modules)."""
        if not self.root.is_dir():
            return []
        return sorted(
            e.name
            for e in os.scandir(self.root)
            if NAME_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
        )

    def get(self, name: str) -> Module:
        return Module.load(self.path_of(name))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise changes to modules and their activation links."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- import ----------------------------------------------------------------------------

    def import_capsule(self, path: Path, force: bool, warn: Callable[[str], None]) -> Module:
        """Install the module in a ``.pmod``: every byte checked, all of it or nothing."""
        if not Path(path).is_file():
            raise PerceusError("no such file", str(path))
        manifest = capsule.verify(path)
        if manifest.kind != "module":
            raise PerceusError(
                f"not a module but a {manifest.kind} capsule (use perceus vnfs import)", str(path)
            )
        _check_members(manifest, str(path))
        name = check_name(manifest.name)
        if (self.root / name).exists() and not force:
            raise PerceusError(f"module '{name}' is already imported (give --force to replace it)")
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".import", dir=self.root))
        try:
            capsule.unpack(path, work / "m")
            module = Module.load(work / "m")
            if module.info.name != name or module.info.version != manifest.version:
                raise PerceusError(
                    f"{MODULE_JSON} says {module.info.name} {module.info.version}, "
                    f"the capsule {name} {manifest.version}",
                    str(path),
                )
            with self.locked():
                target = self.root / name
                if target.exists() and not force:
                    raise PerceusError(f"module '{name}' is already imported (give --force to replace it)")
                replace_tree(work / "m", target)
                installed = Module.load(target)
                linkops.resync(self.paths, installed, warn)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return installed

    # -- built-ins -------------------------------------------------------------------------

    def install_builtins(self, source: Path = BUILTIN_DIR) -> list[str]:
        """Copy the modules shipped with perceus that are not installed yet (never activated)."""
        installed = []
        if not source.is_dir():
            return installed
        with self.locked():
            for entry in sorted(source.iterdir()):
                if (
                    not NAME_RE.fullmatch(entry.name)
                    or not entry.is_dir()
                    or (self.root / entry.name).exists()
                ):
                    continue
                work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".install", dir=self.root))
                try:
                    shutil.copytree(entry, work / "m", symlinks=False, ignore=_skip_junk)
                    _fix_modes(work / "m")
                    Module.load(work / "m")
                    os.chmod(work / "m", 0o755)
                    os.rename(work / "m", self.root / entry.name)
                    fsync_dir(self.root)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                installed.append(entry.name)
        return installed

    # -- delete ----------------------------------------------------------------------------

    def path_of(self, name: str) -> Path:
        """An installed module's directory, without reading it (a broken module can be deleted)."""
        check_name(name)
        path = self.root / name
        if not path.is_dir() or path.is_symlink():
            raise PerceusError(f"no module named '{name}' (see perceus module list)")
        return path

    def remove(self, name: str) -> None:
        """Deactivate module ``name`` everywhere, then remove its directory (renamed away first)."""
        with self.locked():
            linkops.remove_links(link for link in linkops.scan(self.paths) if link.module == name)
            gone = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".delete", dir=self.root))
            os.rename(self.root / name, gone / "m")
            fsync_dir(self.root)
            shutil.rmtree(gone)


def _skip_junk(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(".") or n.endswith("~") or n == "__pycache__"]


def _fix_modes(tree: Path) -> None:
    """Scripts with a ``#!`` line are executable, whatever an installer did to the bits."""
    for directory, _, files in os.walk(tree):
        for name in files:
            path = Path(directory) / name
            with path.open("rb") as handle:
                executable = handle.read(2) == b"#!"
            path.chmod(0o755 if executable else 0o644)


def _check_members(manifest: capsule.Manifest, source: str) -> None:
    """A module carries module.json, nodescripts/<state>/<script>, activate and its own files."""
    names = {m.name for m in manifest.members}
    if MODULE_JSON not in names:
        raise PerceusError(f"the module has no {MODULE_JSON}", source)
    for member in manifest.members:
        if member.name in ("rootfs", "kernel"):
            raise PerceusError(f"a module carries no {member.name}", source)
        parts = member.name.split("/")
        if parts[0] == NODESCRIPTS and len(parts) != 3:
            raise PerceusError(f"member {member.name!r} is not nodescripts/<state>/<script>", source)


def pack(source: Path, out: Path, force: bool) -> capsule.Manifest:
    """Pack a module directory (module.json, nodescripts/, activate, its files) into a .pmod."""
    source = Path(source)
    module = Module.load(source)
    if not module.script_states():
        raise PerceusError("the module has no nodescripts/<state>/<script>", str(source))
    files: dict[str, Path] = {}
    for directory, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(names):
            path = Path(directory) / name
            rel = path.relative_to(source).as_posix()
            if name.startswith(".") or name.endswith("~") or rel.startswith(f"{NODESCRIPTS}/"):
                continue
            if path.is_symlink() or not path.is_file():
                raise PerceusError("not a regular file (modules carry no links or devices)", str(path))
            if not MEMBER_RE.fullmatch(rel):
                raise PerceusError(f"file name {rel!r} cannot be a capsule member", str(path))
            files[rel] = path
    meta = capsule.Meta(module.name, module.info.version, "1", None, "noarch", "none", kind="module")
    return capsule.pack(None, out, meta, files=files, nodescripts=source / NODESCRIPTS, overwrite=force)
