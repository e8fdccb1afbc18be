"""Original Perceus capsules: a bzip2 tar of ``config``, ``nodescripts/`` and ``rootfs/``.

:func:`convert` unpacks one into a hidden work directory beside the output and packs
that as a capsule. The tar is untrusted, so :func:`safe_extract` reads it as a stream
and refuses, with a one-line reason, anything that could write outside the work
directory or exhaust the disk: absolute names, ``..``, entries that pass through a
symlink or replace an earlier entry, symlinks whose relative target climbs out of the
tree, hard links to anything but an earlier regular file, device nodes unless allowed,
sparse files and other exotic types, and more entries or more bytes than the limits
(counted on the decompressed stream, so a decompression bomb stops at the limit).
"""

import bz2
import gzip
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from perceus.capsule.format import DEFAULT_MAX_USIZE, CapsuleError, Manifest, MetaError, open_regular
from perceus.capsule.meta import Meta, read_config
from perceus.capsule.names import parse_capsule_filename
from perceus.capsule.writer import pack

DEFAULT_MAX_ENTRIES = 1 << 20
BLOCK = 1 << 20
# What else may sit beside rootfs/ in an original capsule and becomes a member of the same name.
PLAIN_FILES = ("config", "hybridize", "livesync.skip")
KERNEL_FILES = ("kernel", "vmlinuz")


class _Capped:
    """A read-only stream that refuses to yield more than ``limit`` bytes (bomb guard)."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self.raw, self.limit, self.done = raw, limit, 0

    def read(self, n: int = -1) -> bytes:
        want = self.limit - self.done + 1 if n is None or n < 0 else min(n, self.limit - self.done + 1)
        data = self.raw.read(want)
        self.done += len(data)
        if self.done > self.limit:
            raise CapsuleError(
                f"legacy capsule unpacks to more than {self.limit} bytes (decompression bomb?)"
            )
        return data


def _decompressor(f: BinaryIO) -> BinaryIO:
    magic = f.read(6)
    f.seek(0)
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(f)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f)
    f.seek(257)
    ustar = f.read(5)
    f.seek(0)
    if ustar == b"ustar":
        return f
    raise CapsuleError("not a capsule, nor a legacy capsule (a bzip2 tar)")


def _clean(name: str, what: str) -> str:
    """An archive path made relative and checked: no absolute path, no '..', no NUL."""
    if "\0" in name:
        raise CapsuleError(f"{what} {name!r} contains NUL")
    if name.startswith("/"):
        raise CapsuleError(f"{what} {name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CapsuleError(f"{what} {name!r} contains '..'")
    return "/".join(parts)


def safe_extract(
    path: os.PathLike | str,
    dest: os.PathLike | str,
    *,
    allow_devices: bool = False,
    same_owner: bool | None = None,
    max_total: int = DEFAULT_MAX_USIZE,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Extract the tar at ``path`` (bzip2, gzip, xz or plain) into the empty directory ``dest``."""
    dest = Path(dest)
    if same_owner is None:
        same_owner = os.geteuid() == 0
    kinds: dict[str, str] = {"": "dir"}  # what each extracted path is: dir, file, link, other
    dirs: list[tuple[str, tarfile.TarInfo]] = []
    total = count = 0
    with open_regular(path) as f:
        stream = _Capped(_decompressor(f), max_total + 1024 * max_entries + (1 << 20))
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for info in tar:
                    count += 1
                    if count > max_entries:
                        raise CapsuleError(f"legacy capsule has more than {max_entries} entries")
                    name = _clean(info.name, "entry")
                    if not name:
                        if info.isdir():
                            continue
                        raise CapsuleError(f"entry {info.name!r} has no name")
                    parts = name.split("/")
                    for i in range(1, len(parts)):
                        prefix = "/".join(parts[:i])
                        kind = kinds.get(prefix)
                        if kind == "link":
                            raise CapsuleError(f"entry {name!r} passes through the symlink {prefix!r}")
                        if kind not in (None, "dir"):
                            raise CapsuleError(f"entry {name!r} lies under the non-directory {prefix!r}")
                    if name in kinds and not (info.isdir() and kinds[name] == "dir"):
                        raise CapsuleError(f"entry {name!r} appears twice")
                    target = dest / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    for i in range(1, len(parts)):
                        kinds.setdefault("/".join(parts[:i]), "dir")
                    if info.issparse():
                        raise CapsuleError(f"entry {name!r} is a sparse file (not supported)")
                    if info.isreg():
                        total += info.size
                        if total > max_total:
                            raise CapsuleError(
                                f"legacy capsule declares more than {max_total} bytes (decompression bomb?)"
                            )
                        _write_file(tar, info, target, progress)
                        kinds[name] = "file"
                    elif info.isdir():
                        if name not in kinds:
                            target.mkdir(mode=0o700)
                            kinds[name] = "dir"
                        dirs.append((name, info))
                        continue
                    elif info.issym():
                        _check_symlink(name, info.linkname)
                        os.symlink(info.linkname, target)
                        kinds[name] = "link"
                    elif info.islnk():
                        source = _clean(info.linkname, f"hard link {name!r} target")
                        if kinds.get(source) != "file":
                            raise CapsuleError(
                                f"hard link {name!r} does not point to an earlier regular file"
                            )
                        os.link(dest / source, target, follow_symlinks=False)
                        kinds[name] = "file"
                        continue  # shares the inode: attributes came with the source
                    elif info.ischr() or info.isblk():
                        if not allow_devices:
                            raise CapsuleError(f"entry {name!r} is a device node (not allowed)")
                        kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
                        os.mknod(target, kind | 0o600, os.makedev(info.devmajor, info.devminor))
                        kinds[name] = "other"
                    elif info.isfifo():
                        os.mkfifo(target, 0o600)
                        kinds[name] = "other"
                    else:
                        raise CapsuleError(f"entry {name!r} has an unsupported type {info.type!r}")
                    _set_attributes(target, info, same_owner)
        except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, EOFError):
                raise  # the master's own disk or permissions: not the archive's fault
            raise CapsuleError(f"legacy capsule is damaged or truncated: {exc}") from None
    for name, info in sorted(dirs, key=lambda item: item[0], reverse=True):
        _set_attributes(dest / name, info, same_owner)
    return count


def _check_symlink(name: str, target: str) -> None:
    """Relative targets must stay inside the tree; absolute ones mean the image's own root."""
    if "\0" in target or not target:
        raise CapsuleError(f"symlink {name!r} has an empty or NUL-containing target")
    if target.startswith("/"):
        return
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise CapsuleError(f"symlink {name!r} -> {target!r} points outside the tree")


def _write_file(tar: tarfile.TarFile, info: tarfile.TarInfo, target: Path, progress) -> None:
    src = tar.extractfile(info)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while written < info.size:
            block = src.read(min(BLOCK, info.size - written))
            if not block:
                break
            out.write(block)
            written += len(block)
            if progress:
                progress(len(block))
    if written != info.size:
        raise CapsuleError(f"legacy capsule is truncated inside {info.name!r}")


def _set_attributes(target: Path, info: tarfile.TarInfo, same_owner: bool) -> None:
    if same_owner:
        os.chown(target, info.uid, info.gid, follow_symlinks=False)
    if not info.issym():
        os.chmod(target, info.mode & 0o7777)
    os.utime(target, (info.mtime, info.mtime), follow_symlinks=False)


def _top(work: Path) -> Path:
    """The capsule's directory inside the tar: the root, or its one top-level directory."""
    if (work / "rootfs").is_dir() and not (work / "rootfs").is_symlink():
        return work
    entries = list(work.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        top = entries[0]
        if (top / "rootfs").is_dir() and not (top / "rootfs").is_symlink():
            return top
    raise CapsuleError("legacy capsule has no rootfs/ directory")


def convert(
    legacy_path: os.PathLike | str,
    out_path: os.PathLike | str,
    *,
    meta: Meta | None = None,
    allow_devices: bool = False,
    max_total: int = DEFAULT_MAX_USIZE,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    workdir: os.PathLike | str | None = None,
    level: int = 3,
    threads: int = 0,
    chunk_size: int = 4 << 20,
    overwrite: bool = False,
    progress: Callable | None = None,
) -> Manifest:
    """Convert an original Perceus capsule into a capsule at ``out_path``; returns its manifest.

    Metadata comes from ``meta`` if given, else from the legacy file's name
    (``name-version-revision.state.arch.vnfs``); the architecture is read from the
    tree either way and must agree. ``KERNEL_ARGS`` comes from the legacy ``config``,
    which is kept as the ``config`` member, as are ``hybridize``, ``livesync.skip`` and
    ``nodescripts/<state>/<script>``. The kernel is ``kernel`` or ``vmlinuz`` beside
    ``rootfs/`` if present, else the tree's newest /boot/vmlinuz*. The work directory
    (beside the output unless ``workdir`` is given) is removed in every case.
    """
    legacy_path = Path(legacy_path)
    if meta is None:
        fields = parse_capsule_filename(legacy_path.name)
        if fields is None or fields["kind"] != "vnfs":
            raise MetaError(
                "cannot tell name, version, revision, state and arch from the file name "
                "(expected name-version-revision.state.arch.vnfs)",
                legacy_path,
            )
        meta = Meta(fields["name"], fields["version"], fields["revision"], fields["state"], fields["arch"])
    out = Path(out_path)
    base = Path(workdir) if workdir is not None else (out if out.is_dir() else out.parent)
    work = Path(tempfile.mkdtemp(prefix=".legacy-", suffix=".part", dir=base))
    try:
        try:
            safe_extract(
                legacy_path,
                work,
                allow_devices=allow_devices,
                max_total=max_total,
                max_entries=max_entries,
                progress=progress,
            )
        except CapsuleError as exc:
            raise CapsuleError(exc.reason, legacy_path) from None
        top = _top(work)
        files: dict[str, Path] = {}
        for name in PLAIN_FILES:
            if os.path.lexists(top / name):
                files[name] = top / name  # pack refuses anything but a regular file
        kernel: Path | None = None
        for name in KERNEL_FILES:
            candidate = top / name
            if os.path.lexists(candidate):
                if candidate.is_symlink() or not candidate.is_file():
                    raise CapsuleError(f"legacy capsule's {name} is not a regular file", legacy_path)
                kernel = candidate
                break
        if "config" in files and files["config"].is_file() and not files["config"].is_symlink():
            text = files["config"].read_text(errors="replace")
            try:
                args = read_config(text).get("KERNEL_ARGS")
            except CapsuleError as exc:  # named as the member of the legacy capsule: old.vnfs:config:3
                raise CapsuleError(exc.reason, f"{legacy_path}:{exc.path}") from None
            if args is not None and not meta.kernel_args:
                meta = replace(meta, kernel_args=args)
        nodescripts = top / "nodescripts"
        if nodescripts.is_symlink():
            raise CapsuleError("legacy capsule's nodescripts is a symlink, not a directory", legacy_path)
        return pack(
            top / "rootfs",
            out,
            meta,
            kernel=kernel,
            files=files,
            nodescripts=nodescripts if os.path.lexists(nodescripts) else None,
            level=level,
            threads=threads,
            chunk_size=chunk_size,
            overwrite=overwrite,
            progress=progress,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def is_legacy(path: os.PathLike | str) -> bool:
    """Whether the file starts like an original capsule (bzip2; gzip and xz are read too)."""
    with open_regular(path) as f:
        magic = f.read(6)
    return magic.startswith((b"BZh", b"\x1f\x8b", b"\xfd7zXZ\x00"))
