"""Writing a planned capsule: chroot2stateless's job, written beside and renamed.

The file is built as ``.NAME.XXXX.part`` in the target's directory (``common.atomicfile``):
header placeholder, the small members, the kernel, the root tree as chunked image
(``imagefmt.pack_tree``) or an already packed image, the manifest, then the real header.
It is read back and checked with the same parser every reader uses, fsynced, and only
then renamed over the target, so a failure or a kill at any moment leaves no capsule or
the complete one, never half of one. What goes in is decided first, by
:func:`perceus.capsule.plan.plan_pack`.
"""

import hashlib
import importlib.metadata
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from perceus.capsule.format import (
    ALIGN_LARGE,
    ALIGN_SMALL,
    ENCODING_CHUNKED,
    FLAG_MODULE,
    FORMAT_VERSION,
    HEADER_SIZE,
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
from perceus.capsule.meta import Meta, capsule_filename
from perceus.capsule.plan import ImageSource, PackOptions, PackPlan, Source, plan_pack
from perceus.common.atomicfile import replacing
from perceus.imagefmt import image

__all__ = ["output_path", "pack", "write_capsule"]

BLOCK = 1 << 20


def tool_version() -> str:
    try:
        return f"perceus {importlib.metadata.version('perceus')}"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "perceus"


def _created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    return utc_timestamp(int(epoch) if epoch.isdigit() else time.time())


class _Members:
    """Appends members to the part file, hashing as it goes."""

    def __init__(self, f: BinaryIO) -> None:
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

    def _add_chunked(self, base: int, size: int, digest: str, usize: int, entries: int, chunks) -> None:
        infos = tuple(ChunkInfo(c.offset, c.csize, c.usize, c.sha256) for c in chunks)
        self.members.append(
            Member(
                ROOTFS,
                base,
                size,
                digest,
                encoding=ENCODING_CHUNKED,
                usize=usize,
                entries=entries,
                chunks=infos,
            )
        )

    def add_rootfs(self, root: Path, options: PackOptions, progress: Callable | None) -> None:
        self.pad(ALIGN_LARGE)
        base = self.f.tell()
        try:
            result = image.pack_tree(
                root,
                self.f,
                level=options.level,
                threads=options.threads,
                chunk_size=options.chunk_size,
                skip=options.skip,
                progress=progress,
            )
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
        self._add_chunked(base, result.csize, digest.hexdigest(), result.usize, result.entries, result.chunks)

    def add_image(self, source: ImageSource) -> None:
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
        self._add_chunked(base, size, digest.hexdigest(), source.usize, source.entries, source.chunks)


def _manifest(plan: PackPlan, members: list[Member]) -> Manifest:
    meta = plan.meta
    return Manifest(
        kind=meta.kind,
        name=meta.name,
        version=meta.version,
        revision=meta.revision,
        state=meta.state if meta.kind == "vnfs" else None,
        arch=meta.arch,
        os=meta.os,
        kernel_version=plan.kernel_version,
        kernel_args=meta.kernel_args,
        created=_created(),
        tool=tool_version(),
        members=tuple(members),
    )


def write_capsule(plan: PackPlan, progress: Callable[[int], None] | None = None) -> Manifest:
    """Write the capsule ``plan`` describes to ``plan.out``, atomically; returns its manifest
    as read back. ``progress`` is told the uncompressed bytes of each packed chunk."""
    with replacing(plan.out, 0o644, suffix=".part") as f:
        f.write(b"\0" * HEADER_SIZE)
        w = _Members(f)
        for name in sorted(plan.members):
            w.add_bytes(name, *plan.members[name])
        if plan.kernel is not None:
            w.add_file("kernel", plan.kernel)
        if plan.root is not None:
            w.add_rootfs(plan.root, plan.options, progress)
        elif plan.image is not None:
            w.add_image(plan.image)
        manifest = _manifest(plan, w.members)
        w.pad(ALIGN_SMALL)
        manifest_offset = f.tell()
        raw = manifest.to_json()
        f.write(raw)
        header = Header(
            version=FORMAT_VERSION,
            flags=FLAG_MODULE if plan.meta.kind == "module" else 0,
            manifest_offset=manifest_offset,
            manifest_length=len(raw),
            file_length=f.tell(),
            manifest_sha256=hashlib.sha256(raw).digest(),
        )
        f.seek(0)
        f.write(header.build())
        f.flush()
        # Read back through the reader's own checks before anything is renamed.
        return parse_manifest(raw, Header.parse(header.build(), header.file_length), max_usize=1 << 62)


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
    chunk_size: int = image.DEFAULT_CHUNK_SIZE,
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
    name the arch and os. :func:`plan_pack` then :func:`write_capsule`.
    """
    plan = plan_pack(
        root,
        out,
        meta,
        kernel=kernel,
        files=files,
        nodescripts=nodescripts,
        image=image,
        options=PackOptions(level=level, threads=threads, chunk_size=chunk_size, skip=skip),
        overwrite=overwrite,
    )
    if on_kernel is not None and plan.kernel_in_tree is not None:
        on_kernel(plan.kernel_in_tree)
    return write_capsule(plan, progress)


def output_path(out: os.PathLike | str, manifest: Manifest) -> Path:
    """Where pack() put the capsule for this ``out`` argument."""
    out_path = Path(out)
    return out_path / capsule_filename(manifest) if out_path.is_dir() else out_path
