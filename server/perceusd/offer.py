"""The VNFS files a session offers and streams, opened once and checked against the manifest.

:func:`open_offer` opens the image (the file the manifest names) and kernel so a VNFS
replaced mid-transfer keeps serving the bytes that were offered; their sha256s and the
image's directory set are memoised per file version (:class:`perceus.server.perceusd.memo.Memo`),
and :func:`warm` fills those memos for every imported VNFS when perceusd starts or reloads.
"""

import asyncio
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from perceus.imagefmt import image
from perceus.server import overlay, vnfsconfigure
from perceus.server import vnfs as vnfs_mod
from perceus.server.errors import PerceusError
from perceus.server.perceusd.memo import Memo
from perceus.stage1 import protocol

log = logging.getLogger("perceusd")

HASH_PIECE = 1 << 20


def file_version(info: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies one version of a file's content for the caches."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def fd_sha256(fd: int, size: int) -> str:
    """sha256 of the first ``size`` bytes of an open file, read with pread (no shared offset)."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        piece = os.pread(fd, min(HASH_PIECE, size - offset), offset)
        if not piece:
            raise PerceusError("file shrank while it was hashed", f"/proc/self/fd/{fd}")
        digest.update(piece)
        offset += len(piece)
    return digest.hexdigest()


@dataclass
class OpenVnfs:
    """The files one session streams, open from offer to close, and what the offer says of them."""

    vnfs: vnfs_mod.Vnfs
    image: BinaryIO
    image_path: Path  # the file the manifest named when it was opened
    image_size: int
    image_sha256: str
    chunks: list[image.Chunk]
    kernel: BinaryIO | None
    kernel_size: int
    kernel_sha256: str
    kernel_args: str
    image_version: tuple[int, int, int, int] = (0, 0, 0, 0)

    def close(self) -> None:
        self.image.close()
        if self.kernel is not None:
            self.kernel.close()


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


async def open_offer(v: vnfs_mod.Vnfs, hashes: Memo) -> OpenVnfs:
    """Open the VNFS's image and kernel and check the image against its manifest.

    The image is the file the manifest names (see ``vnfs.open_image``), and its sha256
    (cached per file version) must match the manifest's. A mismatch means a damaged image,
    or one caught being migrated from the plain ``image`` file of the old layout, and is
    tried again.
    """
    for attempt in range(3):
        opened = await asyncio.to_thread(_open_files, v)
        try:
            image_sha = await hashes.get(
                ("sha256", opened.image_version), lambda o=opened: fd_sha256(o.image.fileno(), o.image_size)
            )
            if image_sha == opened.image_sha256:
                if opened.kernel is not None:
                    kinfo = os.fstat(opened.kernel.fileno())
                    opened.kernel_sha256 = await hashes.get(
                        ("sha256", file_version(kinfo)),
                        lambda o=opened: fd_sha256(o.kernel.fileno(), o.kernel_size),
                    )
                return opened
        except BaseException:
            opened.close()
            raise
        opened.close()
        await asyncio.sleep(0.05 * (attempt + 1))
    raise PerceusError("the VNFS image does not match its manifest (being replaced?)", str(opened.image_path))


def _open_files(v: vnfs_mod.Vnfs) -> OpenVnfs:
    where = str(v.path)
    img, stored = vnfs_mod.open_image(v)  # lives as long as the session
    try:
        info = os.fstat(img.fileno())
        member, chunks = stored.member, stored.chunks
        size, sha = member.get("size"), member.get("sha256")
        if not isinstance(size, int) or not isinstance(sha, str) or len(sha) != 64:
            raise PerceusError("the VNFS manifest's image entry has no size or sha256", str(v.manifest_path))
        if sum(c.csize for c in chunks) != size or info.st_size < size:
            raise PerceusError("the VNFS image does not match its chunk table", where)
        kernel, ksize = _open_kernel(v.path / "kernel")
        args = _kernel_args(v)
    except BaseException:
        img.close()
        raise
    return OpenVnfs(
        v, img, stored.path, size, sha, chunks, kernel, ksize, EMPTY_SHA256, args, file_version(info)
    )


def _open_kernel(path: Path) -> tuple[BinaryIO | None, int]:
    try:
        kernel = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return None, 0  # a VNFS packed --no-kernel: offered as empty
    except OSError as exc:
        raise PerceusError(f"cannot open the VNFS kernel: {exc.strerror}", str(path)) from exc
    info = os.fstat(kernel.fileno())
    if not stat.S_ISREG(info.st_mode):
        kernel.close()
        raise PerceusError("the VNFS kernel is not a regular file", str(path))
    return kernel, info.st_size


def _kernel_args(v: vnfs_mod.Vnfs) -> str:
    config = v.path / "config"
    if not config.exists():
        return ""
    args = " ".join(vnfsconfigure.read_config(config).get("KERNEL_ARGS", "").split())
    if len(args.encode()) > protocol.MAX_KERNEL_ARGS:
        raise PerceusError(f"KERNEL_ARGS is longer than {protocol.MAX_KERNEL_ARGS} bytes", str(config))
    return args


async def image_directories(opened: OpenVnfs, dirs: Memo) -> frozenset[str]:
    """The directories of the offered image (what the overlay must not emit), memoised."""
    fd = opened.image.fileno()
    return await dirs.get(
        ("dirs", str(opened.vnfs.path), opened.image_sha256),
        lambda: overlay.image_directories(Path(f"/proc/self/fd/{fd}"), opened.chunks),
    )


async def warm(store: vnfs_mod.VnfsStore, hashes: Memo, dirs: Memo) -> int:
    """Hash and list every imported VNFS's image into the memos, one after the other, so the
    first nodes after start-up (or SIGHUP) do not pay for it; a node arriving meanwhile
    waits on the same computation. Returns how many VNFS were warmed; one that cannot be
    read is logged and skipped (its nodes will get the error)."""
    warmed = 0
    try:
        names = await asyncio.to_thread(store.names)
    except OSError as exc:
        log.warning("cannot list the VNFS to warm the caches: %s", exc)
        return 0
    for name in names:
        v = vnfs_mod.Vnfs(name, store.root / name)
        try:
            opened = await open_offer(v, hashes)
            try:
                await image_directories(opened, dirs)
            finally:
                opened.close()
        except (PerceusError, OSError, ValueError) as exc:
            log.warning("VNFS %s: cannot prepare its image: %s", name, exc)
            continue
        warmed += 1
    return warmed


def chunk_entries(chunks: list[image.Chunk]) -> tuple[protocol.ChunkEntry, ...]:
    return tuple(protocol.ChunkEntry(**c.as_dict()) for c in chunks)
