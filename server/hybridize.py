"""Hybridization (guide 4.3.4/4.3.5): keep rarely used parts of a VNFS off the nodes' RAM.

At image build, every path the VNFS ``hybridize`` file names (globs allowed) becomes a
symlink in the image, pointing into the master's state directory as the nodes see it
over a read-only NFS mount, and the image's ``etc/fstab`` gets that mount line.

Layout (master side / node side)::

    <statedir>/vnfs/<NAME>/hybrid/<relpath>            real content, staged by stage()
                                                       (``hybrid`` links to the current
                                                       ``hybrid.<token>``: see vnfs.py)
    <mount_point>/vnfs/<NAME>/hybrid/<relpath>         what the image's symlink names
    <master>:<statedir>/vnfs <mount_point>/vnfs nfs ro,nolock,soft 0 0   the line in etc/fstab

Only ``<statedir>/vnfs`` is mounted on the nodes, never the whole state directory: the
node database and the SSH host keys live beside it.

``mount_point`` defaults to the master's own state directory path, as in the original.
The content is copied (hard-linked where it can be) into ``hybrid/`` rather than linked
straight into the working tree, so editing a mounted VNFS changes nothing the running
nodes see until the image is rebuilt.

A build runs: :func:`parse_hybridize` on the file, :func:`plan` on the working tree,
:func:`ensure_mount_point` so the image has the mount point directory, :func:`stage`
before the new image is published, then the image packer with plan's two maps.
Hybridizing the state directory (or anything holding it) is refused: the symlinks
would point into a mount that hides them. So is ``/etc/fstab``, which carries the mount.
"""

import errno
import fnmatch
import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from perceus.common.atomicfile import replace_tree, sync_filesystem
from perceus.imagefmt.tree import resolve_in_root
from perceus.server import listfile
from perceus.server.errors import PerceusError
from perceus.server.paths import DEFAULT_STATEDIR

NFS_OPTIONS = "ro,nolock,soft"
_MAGIC = frozenset("*?[")
_OCTAL = frozenset("01234567")
# Paths that must stay local whatever the state directory: the mount itself is read from here.
_KEEP_LOCAL = ("/etc/fstab",)


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part and part != "."]


def _normal(path: str) -> str:
    """``/a//b/./c/`` as ``/a/b/c``; no ``..`` handling (callers refuse it first)."""
    return "/" + "/".join(_components(path))


def _covers(pattern: str, path: str) -> bool:
    """Whether a match of ``pattern`` could be ``path`` itself or one of its ancestors."""
    pat, parts = _components(pattern), _components(path)
    return len(pat) <= len(parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pat, strict=False))


def _inside(pattern: str, path: str) -> bool:
    """Whether every match of ``pattern`` lies strictly below ``path``."""
    pat, parts = _components(pattern), _components(path)
    return len(pat) > len(parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pat, strict=False))


def parse_hybridize(text: str, source: str, *, statedirs: Iterable[str] = ()) -> list[str]:
    """The paths and globs a ``hybridize`` file lists, absolute inside the VNFS.

    One entry a line; blank lines and lines starting with ``#`` are ignored. Relative
    entries, ``..``, control characters, and entries equal to, holding or inside a state
    directory (``/var/lib/perceus`` always, plus ``statedirs``: the master's and the
    nodes' mount point) are refused with ``source:line``, as is ``/etc/fstab``.
    """
    protected = sorted({_normal(str(d)) for d in (DEFAULT_STATEDIR, *statedirs) if str(d).startswith("/")})
    entries: list[str] = []
    for line, where in listfile.entries(text, source, "a path"):
        if not line.startswith("/"):
            raise PerceusError(f"hybridize entries are absolute paths inside the VNFS: {line!r}", where)
        if ".." in line.split("/"):
            raise PerceusError(f"'..' is not allowed in hybridize entries: {line!r}", where)
        entry = _normal(line)
        if entry == "/":
            raise PerceusError("refusing to hybridize the whole root filesystem", where)
        for statedir in protected:
            if _covers(entry, statedir):
                raise PerceusError(
                    f"refusing to hybridize {entry!r}: it holds the state directory {statedir}", where
                )
            if _inside(entry, statedir):
                raise PerceusError(
                    f"refusing to hybridize {entry!r}: it is inside the state directory {statedir}, "
                    "which the nodes mount over it",
                    where,
                )
        for keep in _KEEP_LOCAL:
            if _covers(entry, keep):
                raise PerceusError(f"refusing to hybridize {entry!r}: {keep} must stay local", where)
        if entry not in entries:
            entries.append(entry)
    return entries


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _glob_component(name: str, pattern: str) -> bool:
    """Shell glob for one name: wildcards do not match a leading dot unless the pattern has it."""
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def matches(root: Path, patterns: Iterable[str]) -> list[str]:
    """The entries of the tree the patterns name, as relative paths without symlinks in them.

    Directory components that are symlinks inside the tree are resolved chroot-style
    (``/lib/*/locale`` finds ``usr/lib/x86_64-linux-gnu/locale`` when ``lib`` links to
    ``usr/lib``); a match that is itself a symlink is left local (hybridizing a symlink
    saves nothing and a relative one would break). Entries below another match are
    dropped, since their ancestor already carries them. Sorted.
    """
    root = Path(root)
    found: set[str] = set()
    for pattern in patterns:
        parts = _components(pattern)
        current = [""]
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            following: list[str] = []
            for rel in current:
                directory = root / rel if rel else root
                if _MAGIC.intersection(part):
                    try:
                        names = sorted(n for n in os.listdir(directory) if _glob_component(n, part))
                    except OSError:
                        continue
                else:
                    names = [part]
                for name in names:
                    child = f"{rel}/{name}" if rel else name
                    info = _lstat(root / child)
                    if info is None:
                        continue
                    if stat.S_ISLNK(info.st_mode):
                        if last:
                            continue
                        resolved = resolve_in_root(root, child)
                        if resolved is not None and (root / resolved).is_dir():
                            following.append(resolved)
                    elif last or stat.S_ISDIR(info.st_mode):
                        following.append(child)
            current = following
        found.update(rel for rel in current if rel)
    ordered = sorted(found)
    kept: list[str] = []
    for rel in ordered:
        if not any(rel.startswith(parent + "/") for parent in kept):
            kept.append(rel)
    return kept


def _fstab_escape(field: str) -> str:
    """fstab(5) fields escape space, tab, newline and backslash as octal."""
    return "".join(f"\\{ord(ch):03o}" if ch in " \t\n\\" else ch for ch in field)


def _fstab_unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and set(field[i + 1 : i + 4]) <= _OCTAL:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def fstab_line(master: str, statedir: str, mount_point: str) -> str:
    """The NFS line that mounts the master's VNFS directory where the symlinks point."""
    host = f"[{master}]" if ":" in master else master
    return f"{host}:{_fstab_escape(statedir)} {_fstab_escape(mount_point)} nfs {NFS_OPTIONS} 0 0"


def fstab_with_mount(fstab: str, master: str, statedir: str, mount_point: str) -> str:
    """``fstab`` with the state directory mount added, unless something already mounts there.

    An existing entry for ``mount_point`` or a directory above it (other than ``/``) wins
    (the guide lets sites switch to another
    filesystem by editing it), so the line is never duplicated or overridden.
    """
    wanted = _normal(mount_point)
    for raw in fstab.splitlines():
        fields = raw.split()
        if len(fields) >= 2 and not fields[0].startswith("#"):
            existing = _normal(_fstab_unescape(fields[1]))
            if existing == wanted or (existing != "/" and wanted.startswith(existing + "/")):
                return fstab
    prefix = fstab if not fstab or fstab.endswith("\n") else fstab + "\n"
    return prefix + fstab_line(master, statedir, mount_point) + "\n"


def _check_name(vnfs_name: str) -> None:
    if not vnfs_name or "/" in vnfs_name or vnfs_name in (".", "..") or "\0" in vnfs_name:
        raise PerceusError(f"not a VNFS name: {vnfs_name!r}")


def plan(
    root: Path,
    patterns: list[str],
    statedir: str,
    mount_point: str | None = None,
    *,
    vnfs_name: str,
    master: str,
) -> tuple[dict[str, str], dict[str, bytes]]:
    """What the image packer changes: ``(symlink_over, replace_files)``.

    ``symlink_over`` maps each hybridized relative path (no leading ``/``) to the symlink
    target ``<mount_point>/vnfs/<vnfs_name>/hybrid/<relpath>``; ``replace_files`` holds
    ``etc/fstab`` with the mount line added when anything is hybridized and the tree's
    fstab does not already mount ``mount_point`` (empty otherwise). ``statedir`` is the
    path the master exports; ``master`` its address as the nodes reach it.
    """
    root = Path(root)
    _check_name(vnfs_name)
    mount = _normal(mount_point or statedir)
    if not str(statedir).startswith("/") or mount == "/":
        raise PerceusError(f"state directory and mount point must be absolute: {statedir!r}")
    if not master or any(ch.isspace() or ch in "#\\" for ch in master):
        raise PerceusError(f"not a master address: {master!r}")
    relpaths = matches(root, patterns)
    guarded = [mount.lstrip("/"), *(k.lstrip("/") for k in _KEEP_LOCAL)]
    guarded += [r for r in (resolve_in_root(root, g) for g in list(guarded)) if r]
    for rel in relpaths:
        for keep in guarded:
            if keep == rel or keep.startswith(rel + "/") or rel.startswith(keep + "/"):
                raise PerceusError(f"refusing to hybridize /{rel}: it reaches /{keep}", str(root))
    symlink_over = {rel: f"{mount}/vnfs/{vnfs_name}/hybrid/{rel}" for rel in relpaths}
    replace_files: dict[str, bytes] = {}
    if symlink_over:
        resolved = resolve_in_root(root, "etc/fstab")
        try:
            current = (root / resolved).read_bytes().decode() if resolved else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise PerceusError(f"cannot read the VNFS fstab: {exc}", str(root / "etc/fstab")) from exc
        # only the VNFS tree is exported: never the database or the SSH host keys beside it
        updated = fstab_with_mount(current, master, f"{statedir}/vnfs", f"{mount}/vnfs")
        if updated != current:
            replace_files["etc/fstab"] = updated.encode()
    return symlink_over, replace_files


def ensure_mount_point(root: Path, mount_point: str) -> None:
    """Create ``mount_point`` as a directory in the tree (0755) so the image carries it."""
    root = Path(root)
    done = ""
    for part in _components(_normal(mount_point)):
        if part == "..":
            raise PerceusError(f"'..' in mount point {mount_point!r}", str(root))
        child = f"{done}/{part}" if done else part
        info = _lstat(root / child)
        if info is None:
            os.mkdir(root / child, 0o755)
            os.chmod(root / child, 0o755)
        elif stat.S_ISLNK(info.st_mode):
            resolved = resolve_in_root(root, child)
            if resolved is None or not (root / resolved).is_dir():
                raise PerceusError(f"mount point component /{child} is a dangling symlink", str(root))
            child = resolved
        elif not stat.S_ISDIR(info.st_mode):
            raise PerceusError(f"mount point component /{child} is not a directory", str(root))
        done = child


class Copier:
    """Copies subtrees with modes, owners, times and hard links kept; with ``link``, hard-links
    files instead (the staging dir from the tree), copying once links cross devices."""

    def __init__(self, root: Path, dest: Path, link: bool = True) -> None:
        self.root = root
        self.dest = dest
        self.link = link
        self.copied: dict[tuple[int, int], Path] = {}  # keeps hard links together when copying

    def tree(self, rel: str, top: str) -> None:
        source, target = self.root / rel, self.dest / rel
        info = os.lstat(source)
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(target, 0o700)
            with os.scandir(source) as entries:
                names = sorted(entry.name for entry in entries)
            for name in names:
                self.tree(f"{rel}/{name}", top)
            self.metadata(target, info)
        elif stat.S_ISLNK(mode):
            os.symlink(self.link_target(rel, top, os.readlink(source)), target)
            if os.geteuid() == 0:
                os.lchown(target, info.st_uid, info.st_gid)
            os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
        elif stat.S_ISREG(mode):
            self.file(source, target, info)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(target, mode, info.st_rdev)
            self.metadata(target, info)
        # sockets are skipped: they mean nothing once copied

    def file(self, source: Path, target: Path, info: os.stat_result) -> None:
        if self.link:
            try:
                os.link(source, target, follow_symlinks=False)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                self.link = False
        key = (info.st_dev, info.st_ino)
        if info.st_nlink > 1 and key in self.copied:
            os.link(self.copied[key], target)
            return
        shutil.copyfile(source, target, follow_symlinks=False)
        self.metadata(target, info)
        self.copied[key] = target

    @staticmethod
    def metadata(target: Path, info: os.stat_result) -> None:
        if os.geteuid() == 0:  # only root can give files away; a test as a user keeps its own
            os.chown(target, info.st_uid, info.st_gid, follow_symlinks=False)
        os.chmod(target, stat.S_IMODE(info.st_mode))
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))

    @staticmethod
    def link_target(rel: str, top: str, target: str) -> str:
        """A relative link leaving the hybridized subtree would dangle in ``hybrid/``: make it absolute."""
        if target.startswith("/"):
            return target
        absolute = posixpath.normpath(posixpath.join("/" + posixpath.dirname(rel), target))
        if absolute == "/" + top or absolute.startswith("/" + top + "/"):
            return target
        return absolute


def stage(root: Path, symlink_over: Mapping[str, str], dest_hybrid_dir: Path) -> None:
    """Replace ``dest_hybrid_dir`` with copies of the hybridized subtrees of the working tree.

    Built beside the destination and swapped in with one atomic rename exchange, so a
    node reading through the NFS mount sees the old content or the new, never a half
    copy. Files are hard-linked when the tree is on the same filesystem (no extra space),
    otherwise copied with modes, owners, times and hard links kept. Intermediate
    directories take the tree's attributes. Relative symlinks that would leave their
    hybridized subtree are rewritten absolute, so they resolve on the node's own root.
    """
    root, dest = Path(root), Path(dest_hybrid_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    try:
        os.chmod(building, 0o755)
        copier = Copier(root, building)
        for rel in sorted(symlink_over):
            parts = rel.split("/")
            if rel.startswith("/") or not rel or any(p in ("", ".", "..") for p in parts):
                raise PerceusError(f"not a relative path inside the VNFS: {rel!r}", str(root))
            for depth in range(1, len(parts)):
                ancestor = "/".join(parts[:depth])
                info = os.lstat(root / ancestor)
                if not stat.S_ISDIR(info.st_mode):
                    raise PerceusError(f"/{ancestor} is not a directory in the VNFS (symlink?)", str(root))
                if not (building / ancestor).exists():
                    os.mkdir(building / ancestor, 0o700)
            if _lstat(root / rel) is None:
                raise PerceusError(f"/{rel} vanished from the VNFS while staging", str(root))
            copier.tree(rel, rel)
            for depth in range(len(parts) - 1, 0, -1):
                ancestor = "/".join(parts[:depth])
                copier.metadata(building / ancestor, os.lstat(root / ancestor))
        sync_filesystem(building)  # durable before anything names it: files are often only linked
        replace_tree(building, dest)
    except BaseException:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
        raise
