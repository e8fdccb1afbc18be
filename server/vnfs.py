"""Imported VNFS images on the master: ``$PERCEUS_STATEDIR/vnfs/NAME/``.

Layout of one VNFS (documented in docs/vnfs-layout.md; perceusd serves from it)::

    manifest.json    the capsule manifest: metadata and the image's chunk table
    image            the root tree: concatenated zstd frames, each a whole cpio archive
    kernel           the runtime kernel nodes kexec into
    config           KERNEL_ARGS and friends (KEY="value" lines)
    hybridize        paths kept off the nodes' RAM (see hybridize.py)
    livesync.skip    paths ``vnfs livesync`` leaves alone
    nodescripts/     <state>/<script>: the capsule's own nodescripts
    hybrid/          hybridized content the nodes reach over NFS
    mounted          present while a working tree is mounted; holds its path

Every change is built beside and renamed into place, so perceusd (and a node halfway
through a download) sees the old VNFS or the new one, never a mix.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from perceus import capsule
from perceus.common.atomicfile import atomic_write
from perceus.imagefmt import image
from perceus.server import hybridize
from perceus.server.errors import InvalidRequest, PerceusError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
MANIFEST = "manifest.json"
IMAGE = "image"
MOUNTED = "mounted"
MAX_MANIFEST = 16 << 20


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
        return self.path / IMAGE

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
        """Where its working tree is, while one is mounted."""
        try:
            return Path((self.path / MOUNTED).read_text().strip())
        except FileNotFoundError:
            return None


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
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".new", dir=self.root))
        try:
            yield scratch
            os.chmod(scratch, 0o755)
            try:
                os.rename(scratch, self.root / name)  # fails if a racing command created it
            except OSError as exc:
                raise PerceusError(f"VNFS '{name}' already exists") from exc
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise

    def replace_files(self, vnfs: Vnfs, files: dict[str, Path]) -> None:
        """Rename new files into the VNFS directory, the image last-but-manifest.

        The manifest goes last: it names the chunk table perceusd reads, so a node that
        fetched the old manifest keeps streaming the old image until it asks again.
        """
        order = sorted(files, key=lambda name: (name == MANIFEST, name == IMAGE))
        for name in order:
            os.replace(files[name], vnfs.path / name)

    def remove(self, vnfs: Vnfs) -> None:
        """Delete a VNFS: renamed aside first, so it vanishes at once even if large."""
        doomed = Path(tempfile.mkdtemp(prefix=f".{vnfs.name}.", suffix=".deleted", dir=self.root))
        os.rename(vnfs.path, doomed / vnfs.name)
        shutil.rmtree(doomed, ignore_errors=True)


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


def image_member(vnfs: Vnfs) -> dict:
    members = vnfs.manifest().get("members")
    rootfs = next((m for m in members or () if isinstance(m, dict) and m.get("name") == "rootfs"), None)
    if rootfs is None:
        raise PerceusError("the VNFS manifest has no image entry", str(vnfs.manifest_path))
    return rootfs


def image_chunks(vnfs: Vnfs) -> list[image.Chunk]:
    try:
        return [image.Chunk.from_dict(c) for c in image_member(vnfs).get("chunks", ())]
    except image.ImageError as exc:
        raise PerceusError(f"bad chunk table: {exc}", str(vnfs.manifest_path)) from exc


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
        with store.building(name) as scratch:
            for member in manifest.members:
                target = scratch / (IMAGE if member.name == "rootfs" else member.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    c.copy_member(member.name, out)
                if member.name != "rootfs":
                    os.chmod(target, member.mode)
            (scratch / "hybrid").mkdir()
            rootfs = manifest.rootfs.as_dict() | {"offset": 0}
            atomic_write(scratch / MANIFEST, json.dumps(_stored_manifest(manifest, rootfs), indent=1) + "\n")
    return store.get(name)


def _legacy_name(path: Path) -> str | None:
    """An original capsule's VNFS name: its file name without ``.vnfs``."""
    stem = path.name[: -len(".vnfs")] if path.name.endswith(".vnfs") else None
    return stem if stem and NAME.match(stem) else None


def export_capsule(vnfs: Vnfs, out: Path, overwrite: bool, progress=None) -> Path:
    """Write the VNFS back out as a capsule, with its current config, lists and nodescripts."""
    data = vnfs.manifest()
    rootfs = image_member(vnfs)
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
    source = capsule.ImageSource(
        vnfs.image_path, tuple(image_chunks(vnfs)), rootfs["usize"], rootfs["entries"]
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
    with store.building(name) as scratch:
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
    chunks = image_chunks(vnfs)
    try:
        with open(vnfs.image_path, "rb") as src:
            image.extract(src, chunks, dest, progress=progress)
    except image.ImageError as exc:
        raise PerceusError(f"the stored image is damaged: {exc}", str(vnfs.image_path)) from exc
    hybrid = vnfs.path / "hybrid"
    if hybrid.is_dir():
        for directory, dirs, files in os.walk(hybrid):
            rel = Path(directory).relative_to(hybrid)
            for name in dirs + files:
                source, target = Path(directory) / name, dest / rel / name
                if target.is_symlink():  # the image's link into the NFS mount: the content goes back
                    target.unlink()
                if source.is_dir() and not source.is_symlink():
                    if not target.exists():
                        target.mkdir()
                        shutil.copystat(source, target, follow_symlinks=False)
                elif not target.exists():
                    shutil.copy2(source, target, follow_symlinks=False)


def build_image(vnfs: Vnfs, tree: Path, site: Site, progress=None) -> image.PackResult:
    """Pack ``tree`` into the VNFS's image, hybridizing as its list says; replaces it atomically."""
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
    fd, part = tempfile.mkstemp(prefix=".image.", suffix=".part", dir=vnfs.path)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                result = image.pack_tree(
                    tree, out, symlink_over=symlink_over, replace_files=replace_files, progress=progress
                )
            except image.ImageError as exc:
                raise PerceusError(f"cannot build the image: {exc}", str(tree)) from exc
            out.flush()
            os.fsync(out.fileno())
        digest = _sha256(Path(part))
        hybridize.stage(tree, symlink_over, vnfs.path / "hybrid")
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
        }
        data["members"] = [rootfs]
        fd2, manifest_part = tempfile.mkstemp(prefix=".manifest.", suffix=".part", dir=vnfs.path)
        with os.fdopen(fd2, "w") as handle:
            handle.write(json.dumps(data, indent=1) + "\n")
        os.chmod(part, 0o644)
        os.chmod(manifest_part, 0o644)
        VnfsStore(vnfs.path.parent).replace_files(vnfs, {IMAGE: Path(part), MANIFEST: Path(manifest_part)})
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return result


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
        os.rename(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    atomic_write(vnfs.path / MOUNTED, f"{target}\n")
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
    """Throw the working tree away, changes and all."""
    tree = _working_tree(vnfs)
    doomed = tree.with_name(f".{tree.name}.closing")
    os.rename(tree, doomed)
    (vnfs.path / MOUNTED).unlink()
    shutil.rmtree(doomed)


@contextmanager
def _scratch_tree(vnfs: Vnfs, purpose: str) -> Iterator[Path]:
    """The image unpacked into a temporary directory beside the VNFS, removed afterwards."""
    with tempfile.TemporaryDirectory(
        prefix=f".{vnfs.name}.", suffix=f".{purpose}", dir=vnfs.path.parent
    ) as scratch:
        tree = Path(scratch) / "tree"
        tree.mkdir()
        extract_tree(vnfs, tree)
        yield tree


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
