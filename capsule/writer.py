"""Packing a root tree into a capsule: chroot2stateless's job, written beside and renamed.

The file is built as ``.NAME.XXXX.part`` in the target's directory: header placeholder,
the small members, the kernel, the root tree as chunked image (``imagefmt.pack_tree``),
the manifest, then the real header. It is read back and checked with the same parser
every reader uses, fsynced, and only then renamed over the target, so a failure or a
kill at any moment leaves no capsule or the complete one, never half of one.
"""

import hashlib
import importlib.metadata
import os
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from perceus.capsule.format import (
    ALIGN_LARGE,
    ALIGN_SMALL,
    ENCODING_CHUNKED,
    FLAG_MODULE,
    FORMAT_VERSION,
    HEADER_SIZE,
    MEMBER_RE,
    ROOTFS,
    CapsuleError,
    ChunkInfo,
    Header,
    Manifest,
    Member,
    MetaError,
    open_regular,
    parse_manifest,
    utc_timestamp,
)
from perceus.capsule.meta import (
    DEFAULT_HYBRIDIZE,
    DEFAULT_LIVESYNC_SKIP,
    Meta,
    capsule_filename,
    config_text,
    kernel_version,
    read_config,
    tree_arch,
    tree_kernel,
    tree_os,
)
from perceus.imagefmt import image

BLOCK = 1 << 20
MAX_SMALL_MEMBER = 64 << 20  # config, scripts and the like are read into memory

Source = bytes | str | os.PathLike


def tool_version() -> str:
    try:
        return f"perceus {importlib.metadata.version('perceus')}"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "perceus"


def _created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    return utc_timestamp(int(epoch) if epoch.isdigit() else time.time())


def _read_regular(path: Path, what: str, limit: int = MAX_SMALL_MEMBER) -> tuple[bytes, int]:
    """A regular file's bytes and permission bits; a symlink is refused rather than followed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise CapsuleError(f"cannot read {what}: {exc.strerror}", path) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CapsuleError(f"{what} is not a regular file", path)
        os.set_blocking(fd, True)
        if st.st_size > limit:
            raise CapsuleError(f"{what} is larger than {limit} bytes", path)
        return f.read(limit + 1), stat.S_IMODE(st.st_mode)


def nodescript_members(directory: Path) -> dict[str, tuple[bytes, int]]:
    """``DIR/<state>/<script>`` regular files as ``nodescripts/<state>/<script>`` members."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CapsuleError("nodescripts must be a directory of <state>/<script> files", directory)
    found = {}
    for state in sorted(os.listdir(directory)):
        state_dir = directory / state
        if state_dir.is_symlink() or not state_dir.is_dir():
            raise CapsuleError(
                f"nodescripts/{state} is not a directory (expected <state>/<script>)", state_dir
            )
        for script in sorted(os.listdir(state_dir)):
            name = f"nodescripts/{state}/{script}"
            if not MEMBER_RE.fullmatch(name):
                raise CapsuleError(f"nodescript name {name!r} is not allowed", state_dir / script)
            data, mode = _read_regular(state_dir / script, "a nodescript")
            found[name] = (data, 0o755 if mode & 0o111 else 0o644)
    return found


def _source_bytes(name: str, source: Source) -> tuple[bytes, int]:
    if isinstance(source, bytes):
        return source, 0o644
    if isinstance(source, str):
        return source.encode(), 0o644
    return _read_regular(Path(source), f"member {name}")


class _Writer:
    """Appends members to the part file, hashing as it goes."""

    def __init__(self, f) -> None:
        self.f = f
        self.members: list[Member] = []

    def pad(self, align: int) -> None:
        pos = self.f.tell()
        self.f.write(b"\0" * (-pos % align))

    def add_bytes(self, name: str, data: bytes, mode: int) -> None:
        self.pad(ALIGN_SMALL)
        offset = self.f.tell()
        self.f.write(data)
        self.members.append(
            Member(name, offset, len(data), hashlib.sha256(data).hexdigest(), mode=mode & 0o777)
        )

    def add_file(self, name: str, path: Path, mode: int = 0o644) -> None:
        self.pad(ALIGN_LARGE)
        offset, digest, size = self.f.tell(), hashlib.sha256(), 0
        with open_regular(path) as src:
            while block := src.read(BLOCK):
                digest.update(block)
                self.f.write(block)
                size += len(block)
        self.members.append(Member(name, offset, size, digest.hexdigest(), mode=mode))

    def add_rootfs(self, root: Path, **options) -> None:
        self.pad(ALIGN_LARGE)
        base = self.f.tell()
        try:
            result = image.pack_tree(root, self.f, **options)
        except image.ImageError as exc:
            raise CapsuleError(f"cannot pack the tree: {exc}", root) from None
        except ValueError as exc:  # a level, thread count or chunk size pack_tree refuses
            raise MetaError(str(exc)) from None
        end = base + result.csize
        self.f.seek(end)
        self.f.flush()
        digest, pos = hashlib.sha256(), base
        while pos < end:  # hash what landed on disk: the member's own sha256
            block = os.pread(self.f.fileno(), min(BLOCK, end - pos), pos)
            if not block:
                raise CapsuleError("the packed image is shorter than reported", root)
            digest.update(block)
            pos += len(block)
        chunks = tuple(ChunkInfo(c.offset, c.csize, c.usize, c.sha256) for c in result.chunks)
        self.members.append(
            Member(
                ROOTFS,
                base,
                result.csize,
                digest.hexdigest(),
                encoding=ENCODING_CHUNKED,
                usize=result.usize,
                entries=result.entries,
                chunks=chunks,
            )
        )

    def add_image(self, source: "ImageSource") -> None:
        """An already packed image (a VNFS being exported), checked chunk by chunk as it is copied."""
        self.pad(ALIGN_LARGE)
        base = self.f.tell()
        with open_regular(source.path) as src:
            try:
                image.verify(src, source.chunks)
            except image.ImageError as exc:
                raise CapsuleError(f"the stored image is damaged: {exc}", source.path) from None
            src.seek(0)
            size = sum(c.csize for c in source.chunks)
            digest, left = hashlib.sha256(), size
            while left:
                block = src.read(min(BLOCK, left))
                if not block:
                    raise CapsuleError("the stored image is shorter than its chunk table", source.path)
                digest.update(block)
                self.f.write(block)
                left -= len(block)
        chunks = tuple(ChunkInfo(c.offset, c.csize, c.usize, c.sha256) for c in source.chunks)
        self.members.append(
            Member(
                ROOTFS,
                base,
                size,
                digest.hexdigest(),
                encoding=ENCODING_CHUNKED,
                usize=source.usize,
                entries=source.entries,
                chunks=chunks,
            )
        )


@dataclass(frozen=True)
class ImageSource:
    """A packed root-tree image on disk with its chunk table (what a VNFS directory keeps)."""

    path: Path
    chunks: tuple
    usize: int
    entries: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _inside(path: Path, tree: Path) -> bool:
    return path.resolve().is_relative_to(tree.resolve())


def pack(
    root: os.PathLike | str | None,
    out: os.PathLike | str,
    meta: Meta,
    *,
    kernel: os.PathLike | str | bool | None = None,
    files: Mapping[str, Source] | None = None,
    nodescripts: os.PathLike | str | None = None,
    level: int = 3,
    threads: int = 0,
    chunk_size: int = 4 << 20,
    skip: Callable | None = None,
    progress: Callable | None = None,
    overwrite: bool = False,
    on_kernel: Callable[[str], None] | None = None,
    image: ImageSource | None = None,
) -> Manifest:
    """Pack ``root`` (and the VNFS files) into the capsule ``out``; returns its manifest.

    ``out`` may be an existing directory: the file is then ``out/capsule_filename(manifest)``.
    ``kernel``: a path, None to take the tree's newest /boot/vmlinuz* (if any), False for
    none. ``files`` adds or overrides members by name (``config``, ``hybridize``,
    ``livesync.skip``, ...) from bytes, text or a path; ``nodescripts`` is a directory of
    ``<state>/<script>``. A vnfs gets a generated ``config`` and the default
    ``hybridize`` and ``livesync.skip`` unless given. ``level``, ``threads``,
    ``chunk_size``, ``skip`` and ``progress`` go to ``imagefmt.image.pack_tree``.
    ``on_kernel(path)`` is told which kernel was picked from the tree. ``image`` takes an
    already packed image instead of a root tree (``vnfs export``); ``meta`` must then
    name the arch and os.
    """
    meta.check()
    if root is not None and image is not None:
        raise MetaError("give a root tree or a packed image, not both")
    if root is None and image is None and meta.kind == "vnfs":
        raise MetaError("a vnfs capsule needs a root tree")
    root_path = Path(root) if root is not None else None
    if root_path is not None and not root_path.is_dir():
        raise CapsuleError("the root tree is not a directory", root_path)
    arch = tree_arch(root_path, meta.arch) if root_path is not None else (meta.arch or "noarch")
    os_name = meta.os or (tree_os(root_path) if root_path is not None else "none")

    kernel_path: Path | None = None
    if kernel not in (None, False, True):
        kernel_path = Path(kernel)
    elif kernel is not False and root_path is not None and meta.kind == "vnfs":
        found = tree_kernel(root_path)
        if found is not None:
            kernel_path, inside = found
            if on_kernel:
                on_kernel(inside)
    kver = None
    if kernel_path is not None:
        if not kernel_path.is_file():
            raise CapsuleError("the kernel is not a regular file", kernel_path)
        kver = kernel_version(kernel_path)
        if kver is None:
            raise MetaError("cannot tell the kernel's version from its header or file name", kernel_path)

    members: dict[str, tuple[bytes, int]] = {}
    if meta.kind == "vnfs":
        members["config"] = (config_text(meta.kernel_args, kver, arch, meta.state).encode(), 0o644)
        members["hybridize"] = (DEFAULT_HYBRIDIZE.encode(), 0o644)
        members["livesync.skip"] = (DEFAULT_LIVESYNC_SKIP.encode(), 0o644)
    for name, source in (files or {}).items():
        if not MEMBER_RE.fullmatch(name) or name in (ROOTFS, "kernel"):
            raise MetaError(f"member name {name!r} is not allowed")
        members[name] = _source_bytes(name, source)
    kernel_args = meta.kernel_args
    if not kernel_args and "config" in (files or {}):  # a given config speaks for itself
        kernel_args = read_config(members["config"][0].decode("utf-8", "replace")).get("KERNEL_ARGS", "")
        Meta(meta.name, meta.version, kernel_args=kernel_args).check()
    if nodescripts is not None:
        members.update(nodescript_members(Path(nodescripts)))

    out_path = Path(out)
    if out_path.is_dir():
        out_path = out_path / capsule_filename(
            Meta(meta.name, meta.version, meta.revision, meta.state, arch, kind=meta.kind)
        )
    if root_path is not None and _inside(out_path.parent, root_path):
        raise CapsuleError("the capsule would be written inside the tree it packs", out_path)
    if out_path.exists() and not overwrite:
        raise CapsuleError("already exists (remove it first, or overwrite it)", out_path)
    if not out_path.parent.is_dir():
        raise CapsuleError("no such directory", out_path.parent)

    fd, part = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".part", dir=out_path.parent)
    try:
        with os.fdopen(fd, "w+b") as f:
            f.write(b"\0" * HEADER_SIZE)
            w = _Writer(f)
            for name in sorted(members):
                w.add_bytes(name, *members[name])
            if kernel_path is not None:
                w.add_file("kernel", kernel_path)
            if root_path is not None:
                w.add_rootfs(
                    root_path,
                    level=level,
                    threads=threads,
                    chunk_size=chunk_size,
                    skip=skip,
                    progress=progress,
                )
            elif image is not None:
                w.add_image(image)
            manifest = Manifest(
                kind=meta.kind,
                name=meta.name,
                version=meta.version,
                revision=meta.revision,
                state=meta.state if meta.kind == "vnfs" else None,
                arch=arch,
                os=os_name,
                kernel_version=kver,
                kernel_args=kernel_args,
                created=_created(),
                tool=tool_version(),
                members=tuple(w.members),
            )
            w.pad(ALIGN_SMALL)
            manifest_offset = f.tell()
            raw = manifest.to_json()
            f.write(raw)
            header = Header(
                version=FORMAT_VERSION,
                flags=FLAG_MODULE if meta.kind == "module" else 0,
                manifest_offset=manifest_offset,
                manifest_length=len(raw),
                file_length=f.tell(),
                manifest_sha256=hashlib.sha256(raw).digest(),
            )
            f.seek(0)
            f.write(header.build())
            f.flush()
            # Read back through the reader's own checks before anything is renamed.
            checked = parse_manifest(raw, Header.parse(header.build(), header.file_length), max_usize=1 << 62)
            os.fsync(f.fileno())
        os.chmod(part, 0o644)
        os.replace(part, out_path)
    except BaseException:
        try:
            os.unlink(part)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(out_path.parent)
    return checked


def output_path(out: os.PathLike | str, manifest: Manifest) -> Path:
    """Where pack() put the capsule for this ``out`` argument."""
    out_path = Path(out)
    return out_path / capsule_filename(manifest) if out_path.is_dir() else out_path
