"""Reading capsules: open (header + manifest checked), verify (every byte), unpack (beside, renamed)."""

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from perceus.capsule.format import (
    DEFAULT_MAX_USIZE,
    ENCODING_RAW,
    HEADER_SIZE,
    ROOTFS,
    CapsuleError,
    Header,
    Manifest,
    Member,
    open_regular,
    parse_manifest,
)
from perceus.imagefmt import image

BLOCK = 1 << 20
DEFAULT_READ_LIMIT = 256 << 20


class Capsule:
    """An open capsule whose header and manifest have been checked (members are checked on read).

    Use as a context manager. ``manifest`` says what is inside; ``read_member`` and
    ``copy_member`` hand out a member's bytes only after (or while) checking its sha256;
    ``rootfs_chunks`` and ``rootfs_base`` let ``imagefmt.image`` serve the root tree
    straight from the capsule file (``fileobj``).
    """

    def __init__(self, path: os.PathLike | str, *, max_usize: int = DEFAULT_MAX_USIZE) -> None:
        self.path = Path(path)
        self.fileobj: BinaryIO = open_regular(self.path)
        try:
            self.size = os.fstat(self.fileobj.fileno()).st_size
            self.header = Header.parse(self._pread(0, HEADER_SIZE), self.size)
            raw = self._pread(self.header.manifest_offset, self.header.manifest_length)
            if len(raw) != self.header.manifest_length:
                raise CapsuleError("truncated: the manifest is cut short")
            self.manifest: Manifest = parse_manifest(raw, self.header, max_usize=max_usize)
        except CapsuleError as exc:
            self.fileobj.close()
            raise CapsuleError(exc.reason, exc.path or self.path) from None
        except BaseException:
            self.fileobj.close()
            raise

    def __enter__(self) -> "Capsule":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.fileobj.close()

    def _pread(self, offset: int, length: int) -> bytes:
        return os.pread(self.fileobj.fileno(), length, offset)

    def _fail(self, reason: str) -> CapsuleError:
        return CapsuleError(reason, self.path)

    # -- members ------------------------------------------------------------------------

    def _blocks(self, member: Member, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
        """The member's bytes in blocks; raises after the last one if the sha256 does not match."""
        digest, pos, end = hashlib.sha256(), member.offset, member.offset + member.size
        while pos < end:
            block = self._pread(pos, min(BLOCK, end - pos))
            if not block:
                raise self._fail(f"truncated inside member {member.name!r}")
            digest.update(block)
            pos += len(block)
            if progress:
                progress(len(block))
            yield block
        if digest.hexdigest() != member.sha256:
            raise self._fail(f"sha256 mismatch in member {member.name!r}: the capsule is damaged")

    def read_member(self, name: str, *, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        """A member's bytes, checked against its sha256."""
        member = self.manifest.member(name)
        if member.size > limit:
            raise self._fail(f"member {name!r} is {member.size} bytes, more than the limit {limit}")
        return b"".join(self._blocks(member))

    def copy_member(self, name: str, out: BinaryIO, *, progress: Callable[[int], None] | None = None) -> int:
        """Write a member's stored bytes to ``out``; raises CapsuleError at the end on a sha256
        mismatch, so write to a file beside the target and rename it only after this returns."""
        member = self.manifest.member(name)
        for block in self._blocks(member, progress):
            out.write(block)
        return member.size

    @property
    def rootfs(self) -> Member:
        member = self.manifest.rootfs
        if member is None:
            raise self._fail("this capsule has no root tree")
        return member

    @property
    def rootfs_base(self) -> int:
        """Where the root tree's first frame starts in the file (chunk offsets are relative to it)."""
        return self.rootfs.offset

    @property
    def rootfs_chunks(self) -> list:
        """The root tree's chunk table as ``imagefmt.image.Chunk`` values."""
        return [image.Chunk.from_dict(c.as_dict()) for c in self.rootfs.chunks]

    def iter_rootfs_frames(self, start: int = 0) -> Iterator[bytes]:
        return image.iter_frames(self.fileobj, self.rootfs_chunks, base=self.rootfs_base, start=start)

    # -- whole-file checks --------------------------------------------------------------

    def verify(self, progress: Callable[[int], None] | None = None) -> None:
        """Every member's sha256, the root tree's frames, and zeros in every gap between."""
        covered = [(0, HEADER_SIZE), (self.header.manifest_offset, self.header.manifest_length)]
        for member in self.manifest.members:
            for _ in self._blocks(member, progress):
                pass
            covered.append((member.offset, member.size))
        if self.manifest.rootfs is not None:
            try:
                image.verify(self.fileobj, self.rootfs_chunks, base=self.rootfs_base)
            except image.ImageError as exc:
                raise self._fail(f"root tree: {exc}") from None
        pos = 0
        for offset, size in sorted(covered):
            if offset > pos and self._pread(pos, offset - pos).strip(b"\0"):
                raise self._fail(f"non-zero bytes in the padding at offset {pos}: the capsule is damaged")
            pos = max(pos, offset + size)
        if pos != self.size:
            raise self._fail(f"{self.size - pos} bytes after the manifest")

    def extract_rootfs(
        self,
        dest: os.PathLike | str,
        *,
        allow_devices: bool = True,
        same_owner: bool | None = None,
        max_usize: int = DEFAULT_MAX_USIZE,
        progress: Callable | None = None,
    ) -> int:
        """Unpack the root tree into ``dest`` (imagefmt's checks apply); returns entries written."""
        if same_owner is None:
            same_owner = os.geteuid() == 0
        try:
            return image.extract(
                self.fileobj,
                self.rootfs_chunks,
                dest,
                base=self.rootfs_base,
                allow_devices=allow_devices,
                same_owner=same_owner,
                max_usize=max_usize,
                progress=progress,
            )
        except image.ImageError as exc:
            raise self._fail(f"root tree: {exc}") from None


def open_capsule(path: os.PathLike | str, *, max_usize: int = DEFAULT_MAX_USIZE) -> Capsule:
    """Open a capsule, checking its header and manifest (see :class:`Capsule`)."""
    return Capsule(path, max_usize=max_usize)


def verify(path: os.PathLike | str, *, progress: Callable[[int], None] | None = None) -> Manifest:
    """Check every byte of a capsule; returns its manifest or raises CapsuleError naming the reason."""
    with Capsule(path) as capsule:
        capsule.verify(progress)
        return capsule.manifest


def _write_member(capsule: Capsule, member: Member, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        capsule.copy_member(member.name, out)
    os.chmod(path, member.mode)


def unpack(
    path: os.PathLike | str,
    dest: os.PathLike | str,
    *,
    allow_devices: bool = True,
    same_owner: bool | None = None,
    max_usize: int = DEFAULT_MAX_USIZE,
    progress: Callable | None = None,
) -> Manifest:
    """Unpack a capsule: the root tree into ``dest/rootfs``, the other members beside it.

    ``dest`` must not exist or be an empty directory. Everything is built in a hidden
    directory beside it and renamed into place at the end; on any failure that
    directory is removed, so ``dest`` is complete or untouched.
    """
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise CapsuleError("the target exists and is not an empty directory", dest)
    parent = dest.parent
    if not parent.is_dir():
        raise CapsuleError("no such directory", parent)
    with Capsule(path, max_usize=max_usize) as capsule:
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=parent))
        try:
            for member in capsule.manifest.members:
                if member.encoding == ENCODING_RAW:
                    _write_member(capsule, member, work / member.name)
            if capsule.manifest.rootfs is not None:
                (work / ROOTFS).mkdir(mode=0o755)
                capsule.extract_rootfs(
                    work / ROOTFS,
                    allow_devices=allow_devices,
                    same_owner=same_owner,
                    max_usize=max_usize,
                    progress=progress,
                )
            os.chmod(work, 0o755)
            os.rename(work, dest)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return capsule.manifest
