"""Imported VNFS images on the master: ``$PERCEUS_STATEDIR/vnfs/NAME/``.

Layout of one VNFS (documented in docs/vnfs-layout.md; perceusd serves from it)::

    manifest.json    the capsule manifest: metadata, the image's chunk table, the names of
                     the image file and the hybrid directory (the one commit point)
    image.<sha256>   the root tree: concatenated zstd frames, each a whole cpio archive
    image            a link to the current image file (a plain file before content naming)
    kernel           the runtime kernel nodes kexec into
    config           KERNEL_ARGS and friends (KEY="value" lines)
    hybridize        paths kept off the nodes' RAM (see hybridize.py)
    livesync.skip    paths ``vnfs livesync`` leaves alone
    nodescripts/     <state>/<script>: the capsule's own nodescripts
    hybrid.<token>/  hybridized content the nodes reach over NFS, through the link ``hybrid``
    mounted          present while a working tree is mounted; holds its path

An update writes a new image file and hybrid directory beside the current ones, then
replaces manifest.json in one rename: the commit. perceusd (and a node halfway through a
download) sees the old VNFS or the new one, never a mix. :func:`settle` then points the
links at what the manifest names and removes what it no longer names.
"""

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from perceus import capsule
from perceus.common.atomicfile import atomic_write, fsync_dir, remove_path, replace_tree, sync_filesystem
from perceus.imagefmt import image
from perceus.server import hybridize
from perceus.server.errors import InvalidRequest, PerceusError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
MANIFEST = "manifest.json"
IMAGE = "image"  # the image before content naming; now a link to the current image file
HYBRID = "hybrid"  # the hybridized content before content naming; now a link to the current directory
MOUNTED = "mounted"
MAX_MANIFEST = 16 << 20
IMAGE_FILE = re.compile(r"^image\.[0-9a-f]{16}$")  # image.<first 16 hex digits of its sha256>
HYBRID_DIR = re.compile(r"^hybrid\.[0-9a-f]{16}$")  # hybrid.<random token>, new at each build
# What an update writes beside the current files before its commit; only updates, under the
# lock, write these names, so any found by the next update were left by one that failed.
UNFINISHED = (".image.", ".hybrid.", ".manifest.")
SCRATCH = (".new", ".rebuild", ".edit")  # hidden directories beside the VNFS while one is built


def check_name(name: str) -> str:
    if not NAME.match(name) or ".." in name:
        raise InvalidRequest(f"not a VNFS name: {name!r}")
    return name


@dataclass(frozen=True)
class Vnfs:
    """One imported VNFS directory."""

    name: str
    path: Path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def image_path(self) -> Path:
        """The image file the manifest names now."""
        return stored_image(self).path

    def manifest(self) -> dict:
        try:
            with open(self.manifest_path, "rb") as handle:
                data = handle.read(MAX_MANIFEST + 1)
        except OSError as exc:
            raise PerceusError(
                f"cannot read the VNFS manifest: {exc.strerror}", str(self.manifest_path)
            ) from exc
        if len(data) > MAX_MANIFEST:
            raise PerceusError("VNFS manifest is too large", str(self.manifest_path))
        try:
            manifest = json.loads(data)
        except ValueError as exc:
            raise PerceusError(f"VNFS manifest is not JSON: {exc}", str(self.manifest_path)) from exc
        if not isinstance(manifest, dict):
            raise PerceusError("VNFS manifest is not an object", str(self.manifest_path))
        return manifest

    @property
    def mounted_at(self) -> Path | None:
        """Where its working tree is, while one is mounted: the marker names it and it is there
        (mount writes the marker before renaming the tree into place, close renames the tree
        away before removing the marker, so in both the rename is the step that counts)."""
        try:
            tree = Path((self.path / MOUNTED).read_text().strip())
        except FileNotFoundError:
            return None
        return tree if tree.is_dir() else None


class VnfsStore:
    """All imported VNFS of one master."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME.match(p.name))

    def get(self, name: str) -> Vnfs:
        check_name(name)
        path = self.root / name
        if not (path / MANIFEST).is_file():
            raise PerceusError(f"VNFS '{name}' does not exist")
        return Vnfs(name, path)

    def exists(self, name: str) -> bool:
        return (self.root / name / MANIFEST).is_file()

    @contextmanager
    def building(self, name: str) -> Iterator[Path]:
        """A scratch directory that becomes VNFS ``name`` when the block succeeds."""
        check_name(name)
        if self.exists(name):
            raise PerceusError(f"VNFS '{name}' already exists")
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(self.root)
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".new", dir=self.root))
        held = _hold(scratch)
        try:
            yield scratch
            os.chmod(scratch, 0o755)
            sync_filesystem(scratch)  # all of it durable before the rename makes it the VNFS
            try:
                os.rename(scratch, self.root / name)  # fails if a racing command created it
            except OSError as exc:
                if (self.root / name).exists():
                    raise PerceusError(f"VNFS '{name}' already exists") from exc
                raise
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        finally:
            os.close(held)
        fsync_dir(self.root)

    def remove(self, vnfs: Vnfs) -> None:
        """Delete a VNFS: renamed aside first, so it vanishes at once even if large."""
        doomed = Path(tempfile.mkdtemp(prefix=f".{vnfs.name}.", suffix=".deleted", dir=self.root))
        os.rename(vnfs.path, doomed / vnfs.name)
        shutil.rmtree(doomed, ignore_errors=True)


def _hold(directory: Path) -> int:
    """A lock on ``directory`` (flock), held until the returned descriptor is closed."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _remove_abandoned(root: Path) -> None:
    """Remove the scratch directories of imports, clones and rebuilds that died: the ones
    nobody holds locked (each is locked as soon as it is made)."""
    for entry in root.iterdir():
        if not (entry.name.startswith(".") and entry.name.endswith(SCRATCH)) or entry.is_symlink():
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(entry, ignore_errors=True)
        except BlockingIOError:
            pass  # being built
        finally:
            os.close(fd)


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path`` (a chroot's /proc, a bind mount...), from mountinfo."""
    prefix = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                found.append(point)
    return found


# -- operations the ``perceus vnfs`` commands run ------------------------------------------


@dataclass(frozen=True)
class Site:
    """What image builds need to know about this master."""

    statedir: Path
    master: str  # the address nodes mount hybridized content from ("" if unknown)
    mount_root: Path  # where working trees go (perceus.conf: vnfs mount directory)


def _stored_manifest(manifest: capsule.Manifest, rootfs: dict) -> dict:
    """What manifest.json keeps: the capsule's metadata and the image's member entry only."""
    data = manifest.as_dict()
    data["members"] = [rootfs]
    return data


def image_member(vnfs: Vnfs, manifest: dict | None = None) -> dict:
    members = (vnfs.manifest() if manifest is None else manifest).get("members")
    rootfs = next((m for m in members or () if isinstance(m, dict) and m.get("name") == "rootfs"), None)
    if rootfs is None:
        raise PerceusError("the VNFS manifest has no image entry", str(vnfs.manifest_path))
    return rootfs


def image_chunks(vnfs: Vnfs, member: dict | None = None) -> list[image.Chunk]:
    try:
        member = image_member(vnfs) if member is None else member
        return [image.Chunk.from_dict(c) for c in member.get("chunks", ())]
    except image.ImageError as exc:
        raise PerceusError(f"bad chunk table: {exc}", str(vnfs.manifest_path)) from exc


@dataclass(frozen=True)
class StoredImage:
    """What one reading of the manifest says of the image, so nothing mixes two versions."""

    path: Path  # the image file
    member: dict  # its manifest entry: size, sha256, usize, entries, chunks
    chunks: list[image.Chunk]
    hybrid: Path  # the directory holding its hybridized content


def stored_image(vnfs: Vnfs) -> StoredImage:
    """The current image; a VNFS from before content naming has ``image`` and ``hybrid``."""
    member = image_member(vnfs)
    file, hybrid = member.get("file", IMAGE), member.get("hybrid", HYBRID)
    if not isinstance(file, str) or not (file == IMAGE or IMAGE_FILE.match(file)):
        raise PerceusError(f"the VNFS manifest names a bad image file: {file!r}", str(vnfs.manifest_path))
    if not isinstance(hybrid, str) or not (hybrid == HYBRID or HYBRID_DIR.match(hybrid)):
        raise PerceusError(
            f"the VNFS manifest names a bad hybrid directory: {hybrid!r}", str(vnfs.manifest_path)
        )
    return StoredImage(vnfs.path / file, member, image_chunks(vnfs, member), vnfs.path / hybrid)


def open_image(vnfs: Vnfs) -> tuple[BinaryIO, StoredImage]:
    """The current image file, open, with what the manifest says of it.

    For readers that take no lock (perceusd, export): an update removes the previous image
    file right after its commit, so a file gone between reading the manifest and opening it
    means a newer manifest is there to read; gone twice in a row, it is missing. An open
    file stays readable whatever follows.
    """
    missing = None
    while True:
        stored = stored_image(vnfs)
        try:
            return open(stored.path, "rb"), stored  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and stored.path != missing:
                missing = stored.path
                continue
            raise PerceusError(f"cannot open the VNFS image: {exc.strerror}", str(stored.path)) from exc


def settle(vnfs: Vnfs) -> None:
    """Bring the directory in line with its committed manifest; idempotent, so the next update
    finishes one a crash interrupted after its commit.

    The links ``image`` (for people and tools) and ``hybrid`` (which the image's symlinks go
    through on the nodes) are pointed at what the manifest names, then image files, hybrid
    directories and unfinished files it does not name are removed. Readers are safe: perceusd
    opens the file the manifest names and reads the manifest again if it has gone.
    """
    stored = stored_image(vnfs)
    for link, current in ((IMAGE, stored.path.name), (HYBRID, stored.hybrid.name)):
        if current != link:
            _point(vnfs.path / link, current)
    for entry in os.listdir(vnfs.path):
        if entry in (stored.path.name, stored.hybrid.name):
            continue
        if IMAGE_FILE.match(entry) or HYBRID_DIR.match(entry) or entry.startswith(UNFINISHED):
            remove_path(vnfs.path / entry)
    fsync_dir(vnfs.path)


def _point(link: Path, target: str) -> None:
    """``link`` made a relative symlink to ``target`` in one step, whatever it was before."""
    try:
        if os.readlink(link) == target:
            return
    except OSError:  # absent, or the plain file or directory of the old layout
        pass
    new = link.with_name(f".{link.name}.link")
    new.unlink(missing_ok=True)
    os.symlink(target, new)
    if link.is_dir() and not link.is_symlink():
        replace_tree(new, link)  # the hybrid directory of the old layout
    else:
        os.replace(new, link)


@contextmanager
def _locked(vnfs: Vnfs) -> Iterator[None]:
    """One update (or copy) of a VNFS at a time, from a settled directory: so no update removes,
    as unreferenced, the new files of another one that has not committed yet."""
    fd = _hold(vnfs.path)
    try:
        settle(vnfs)
        yield
    finally:
        os.close(fd)


def _commit(vnfs: Vnfs, manifest: dict) -> None:
    """The one step that changes a VNFS: manifest.json replaced in one durable rename.

    What the new manifest names must already be durable in the directory; :func:`settle`
    follows, and a failure before the rename leaves files nothing names, removed by the next
    update (or right away by the caller)."""
    fsync_dir(vnfs.path)
    atomic_write(vnfs.manifest_path, json.dumps(manifest, indent=1) + "\n")
    settle(vnfs)


def import_capsule(store: VnfsStore, path: Path, name: str | None, progress=None) -> Vnfs:
    """Import a capsule (or an original Perceus one, converted first): all of it, or nothing."""
    if not path.is_file():
        raise PerceusError("no such file", str(path))
    if not capsule.is_capsule(path):
        if not capsule.legacy.is_legacy(path):
            raise PerceusError(
                "not a VNFS capsule (neither this format nor an original Perceus one)", str(path)
            )
        store.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".convert.", dir=store.root) as scratch:
            converted = Path(scratch) / "converted.vnfs"
            capsule.legacy.convert(path, converted)
            return import_capsule(store, converted, name or _legacy_name(path), progress)
    with capsule.open(path) as c:
        c.verify(progress)
        manifest = c.manifest
        if manifest.kind != "vnfs":
            raise PerceusError(f"this capsule is a {manifest.kind}, not a vnfs", str(path))
        if manifest.rootfs is None:
            raise PerceusError("this capsule has no root tree", str(path))
        name = check_name(name or manifest.fullname)
        image_file = _image_file(manifest.rootfs.sha256)
        with store.building(name) as scratch:
            for member in manifest.members:
                target = scratch / (image_file if member.name == "rootfs" else member.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    c.copy_member(member.name, out)
                if member.name != "rootfs":
                    os.chmod(target, member.mode)
            os.symlink(image_file, scratch / IMAGE)
            rootfs = manifest.rootfs.as_dict() | {"offset": 0, "file": image_file}
            atomic_write(scratch / MANIFEST, json.dumps(_stored_manifest(manifest, rootfs), indent=1) + "\n")
    return store.get(name)


def _legacy_name(path: Path) -> str | None:
    """An original capsule's VNFS name: its file name without ``.vnfs``."""
    stem = path.name[: -len(".vnfs")] if path.name.endswith(".vnfs") else None
    return stem if stem and NAME.match(stem) else None


def export_capsule(vnfs: Vnfs, out: Path, overwrite: bool, progress=None) -> Path:
    """Write the VNFS back out as a capsule, with its current config, lists and nodescripts."""
    data = vnfs.manifest()
    meta = capsule.Meta(
        data["name"],
        data["version"],
        data["revision"],
        data.get("state"),
        data["arch"],
        os=data.get("os"),
        kernel_args="",
    )
    files = {
        name: vnfs.path / name
        for name in ("config", "hybridize", "livesync.skip")
        if (vnfs.path / name).is_file()
    }
    scripts = vnfs.path / "nodescripts"
    kernel = vnfs.path / "kernel"
    opened, stored = open_image(vnfs)
    with opened:  # read through the open file: an update may remove its name meanwhile
        rootfs = stored.member
        source = capsule.ImageSource(
            Path(f"/proc/self/fd/{opened.fileno()}"), tuple(stored.chunks), rootfs["usize"], rootfs["entries"]
        )
        manifest = capsule.pack(
            None,
            out,
            meta,
            kernel=kernel if kernel.is_file() else False,
            files=files,
            nodescripts=scripts if scripts.is_dir() else None,
            image=source,
            overwrite=overwrite,
            progress=progress,
        )
    return capsule.output_path(out, manifest)


def clone(store: VnfsStore, source: Vnfs, name: str) -> Vnfs:
    """A copy under a new name (hybridized content hard-linked where it can be)."""
    with _locked(source), store.building(name) as scratch:
        for entry in source.path.iterdir():
            if entry.name == MOUNTED:
                continue
            target = scratch / entry.name
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
            else:
                shutil.copy2(entry, target, follow_symlinks=False)
    return store.get(name)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def extract_tree(vnfs: Vnfs, dest: Path, progress=None) -> None:
    """The image unpacked into ``dest``, with hybridized content put back in place of its links."""
    with _locked(vnfs):
        _extract_tree(stored_image(vnfs), dest, progress)


def _extract_tree(stored: StoredImage, dest: Path, progress=None) -> None:
    try:
        with open(stored.path, "rb") as src:
            image.extract(src, stored.chunks, dest, progress=progress)
    except image.ImageError as exc:
        raise PerceusError(f"the stored image is damaged: {exc}", str(stored.path)) from exc
    if stored.hybrid.is_dir():
        _put_back(stored.hybrid, dest)


def _put_back(hybrid: Path, dest: Path) -> None:
    """The hybridized content copied back in place of the image's links to it: copied, never
    linked (editing the tree must not change what the nodes read), with owners and times, and
    the times of the directories holding it as the image has them, so that packing the tree
    again gives the same image."""
    copier = hybridize.Copier(hybrid, dest, link=False)
    holders: dict[Path, os.stat_result] = {}
    for directory, dirs, files in os.walk(hybrid):
        rel = Path(directory).relative_to(hybrid)
        for name in sorted(dirs + files):
            target = dest / rel / name
            if target.exists() and not target.is_symlink():
                continue  # a directory on the way (walked into) or something the image has itself
            holders.setdefault(target.parent, os.lstat(target.parent))
            target.unlink(missing_ok=True)  # the image's link into the NFS mount
            copier.tree(str(rel / name), str(rel / name))
            if name in dirs:
                dirs.remove(name)  # copied whole
    for holder, info in holders.items():
        os.utime(holder, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def build_image(vnfs: Vnfs, tree: Path, site: Site, progress=None) -> image.PackResult:
    """Pack ``tree`` into a new image of the VNFS, hybridizing as its list says, and commit it:
    the image file and hybrid directory are new names beside the current ones until the
    manifest naming them replaces the old one."""
    hybridize_file = vnfs.path / "hybridize"
    text = hybridize_file.read_text() if hybridize_file.is_file() else ""
    patterns = hybridize.parse_hybridize(text, str(hybridize_file), statedirs=[str(site.statedir)])
    symlink_over, replace_files = hybridize.plan(
        tree, patterns, str(site.statedir), vnfs_name=vnfs.name, master=site.master or "master"
    )
    if symlink_over and not site.master:
        raise PerceusError(
            "hybridized paths need the master's address: set 'vnfs transfer master' in perceus.conf"
        )
    if symlink_over:
        hybridize.ensure_mount_point(tree, f"{site.statedir}/vnfs")
    with _locked(vnfs):
        try:
            fd, part = tempfile.mkstemp(prefix=".image.", suffix=".part", dir=vnfs.path)
            with os.fdopen(fd, "wb") as out:
                try:
                    result = image.pack_tree(
                        tree, out, symlink_over=symlink_over, replace_files=replace_files, progress=progress
                    )
                except image.ImageError as exc:
                    raise PerceusError(f"cannot build the image: {exc}", str(tree)) from exc
                os.fchmod(out.fileno(), 0o644)
                out.flush()
                os.fsync(out.fileno())
            digest = _sha256(Path(part))
            image_file, hybrid_dir = _image_file(digest), f"{HYBRID}.{secrets.token_hex(8)}"
            os.replace(part, vnfs.path / image_file)  # named by its content; nothing names it yet
            hybridize.stage(tree, symlink_over, vnfs.path / hybrid_dir)
            data = vnfs.manifest()
            rootfs = {
                "name": "rootfs",
                "encoding": "chunked",
                "offset": 0,
                "size": result.csize,
                "sha256": digest,
                "usize": result.usize,
                "entries": result.entries,
                "chunks": [c.as_dict() for c in result.chunks],
                "file": image_file,
                "hybrid": hybrid_dir,
            }
            data["members"] = [rootfs]
            _commit(vnfs, data)
        except BaseException:
            with suppress(OSError, PerceusError):
                settle(vnfs)  # what got committed stays; what nothing names goes now, not next time
            raise
    return result


def _image_file(sha256: str) -> str:
    return f"{IMAGE}.{sha256[:16]}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def mount(vnfs: Vnfs, site: Site, progress=None) -> Path:
    """A writable working tree at ``<vnfs mount directory>/NAME`` (guide 4.3.3)."""
    if vnfs.mounted_at is not None:
        raise PerceusError(f"VNFS '{vnfs.name}' is already mounted at {vnfs.mounted_at}")
    target = site.mount_root / vnfs.name
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise PerceusError("the mount point exists and is not empty", str(target))
    site.mount_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{vnfs.name}.", suffix=".mounting", dir=site.mount_root))
    try:
        extract_tree(vnfs, scratch, progress)
        os.chmod(scratch, 0o755)
        if target.exists():
            target.rmdir()
        atomic_write(vnfs.path / MOUNTED, f"{target}\n")
        os.rename(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target


def _working_tree(vnfs: Vnfs) -> Path:
    tree = vnfs.mounted_at
    if tree is None:
        raise PerceusError(f"VNFS '{vnfs.name}' is not mounted")
    busy = mounts_below(tree)
    if busy:
        raise PerceusError(f"something is mounted inside the working tree: {busy[0]}")
    return tree


def umount(vnfs: Vnfs, site: Site, progress=None) -> image.PackResult:
    """Rebuild the image from the working tree, replace it atomically, remove the tree."""
    tree = _working_tree(vnfs)
    result = build_image(vnfs, tree, site, progress)
    close(vnfs)
    return result


def close(vnfs: Vnfs) -> None:
    """Throw the working tree away, changes and all.

    Renaming the tree aside closes it; the marker and the tree are removed after. What a
    failure there leaves is harmless: a marker naming no tree means not mounted (the next
    mount replaces it) and the next close removes a tree left aside."""
    tree = _working_tree(vnfs)
    doomed = tree.with_name(f".{tree.name}.closing")
    shutil.rmtree(doomed, ignore_errors=True)  # an earlier close's, if it stopped after its rename
    os.rename(tree, doomed)
    with suppress(OSError):
        (vnfs.path / MOUNTED).unlink(missing_ok=True)
    shutil.rmtree(doomed, ignore_errors=True)


@contextmanager
def _scratch_tree(vnfs: Vnfs, purpose: str) -> Iterator[Path]:
    """The image unpacked into a temporary directory beside the VNFS, removed afterwards."""
    _remove_abandoned(vnfs.path.parent)
    with tempfile.TemporaryDirectory(
        prefix=f".{vnfs.name}.", suffix=f".{purpose}", dir=vnfs.path.parent
    ) as scratch:
        held = _hold(Path(scratch))
        try:
            tree = Path(scratch) / "tree"
            tree.mkdir()
            extract_tree(vnfs, tree)
            yield tree
        finally:
            os.close(held)


def rebuild(vnfs: Vnfs, site: Site, progress=None) -> image.PackResult:
    """Repack the image: from the working tree if mounted, else from the image itself
    (so a changed hybridize list takes effect)."""
    if vnfs.mounted_at is not None:
        return build_image(vnfs, _working_tree(vnfs), site, progress)
    with _scratch_tree(vnfs, "rebuild") as tree:
        return build_image(vnfs, tree, site, progress)


@contextmanager
def editable_tree(vnfs: Vnfs, site: Site) -> Iterator[Path]:
    """The tree to change: the mounted one (rebuilt at umount), else a scratch copy rebuilt now."""
    if vnfs.mounted_at is not None:
        yield _working_tree(vnfs)
        return
    with _scratch_tree(vnfs, "edit") as tree:
        yield tree
        build_image(vnfs, tree, site)
