"""What a capsule will hold, decided before a byte of it is written.

:func:`plan_pack` reads the tree (architecture, OS, kernel) and the member files it is
given, checks the metadata and the target, and returns a :class:`PackPlan`: the final
metadata, the small members' bytes, the kernel, the root tree or packed image and the
packing options. Nothing is written; :func:`perceus.capsule.writer.write_capsule` then
writes exactly that.
"""

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from perceus.capsule.format import MEMBER_RE, ROOTFS, CapsuleError, MetaError
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
from perceus.imagefmt.image import DEFAULT_CHUNK_SIZE

__all__ = ["ImageSource", "PackOptions", "PackPlan", "SmallMember", "nodescript_members", "plan_pack"]

MAX_SMALL_MEMBER = 64 << 20  # config, scripts and the like are read into memory

Source = bytes | str | os.PathLike


class SmallMember(NamedTuple):
    """A member held in memory (config, scripts): its bytes and permission bits."""

    data: bytes
    mode: int


@dataclass(frozen=True)
class ImageSource:
    """A packed root-tree image on disk with its chunk table (what a VNFS directory keeps)."""

    path: Path
    chunks: tuple
    usize: int
    entries: int


@dataclass(frozen=True)
class PackOptions:
    """How the root tree is packed (see ``imagefmt.image.pack_tree``)."""

    level: int = 3
    threads: int = 0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    skip: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class PackPlan:
    """Everything :func:`perceus.capsule.writer.write_capsule` writes, and where."""

    out: Path  # the capsule's final path
    meta: Meta  # arch, os and kernel_args resolved
    kernel_version: str | None
    members: dict[str, SmallMember] = field(default_factory=dict)
    kernel: Path | None = None
    kernel_in_tree: str | None = None  # the tree's path of the kernel picked from it
    root: Path | None = None
    image: ImageSource | None = None
    options: PackOptions = PackOptions()


def _read_regular(path: Path, what: str, limit: int = MAX_SMALL_MEMBER) -> SmallMember:
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
        return SmallMember(f.read(limit + 1), stat.S_IMODE(st.st_mode))


def nodescript_members(directory: Path) -> dict[str, SmallMember]:
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
            found[name] = SmallMember(data, 0o755 if mode & 0o111 else 0o644)
    return found


def _source_member(name: str, source: Source) -> SmallMember:
    if isinstance(source, bytes):
        return SmallMember(source, 0o644)
    if isinstance(source, str):
        return SmallMember(source.encode(), 0o644)
    return _read_regular(Path(source), f"member {name}")


def _inside(path: Path, tree: Path) -> bool:
    return path.resolve().is_relative_to(tree.resolve())


def _kernel(kernel, root: Path | None, meta: Meta) -> tuple[Path | None, str | None, str | None]:
    """(kernel file, its path inside the tree if picked from it, its version)."""
    path: Path | None = None
    inside = None
    if kernel not in (None, False, True):
        path = Path(kernel)
    elif kernel is not False and root is not None and meta.kind == "vnfs":
        found = tree_kernel(root)
        if found is not None:
            path, inside = found
    if path is None:
        return None, None, None
    if not path.is_file():
        raise CapsuleError("the kernel is not a regular file", path)
    version = kernel_version(path)
    if version is None:
        raise MetaError("cannot tell the kernel's version from its header or file name", path)
    return path, inside, version


def _members(meta: Meta, kver: str | None, arch: str, files, nodescripts) -> dict[str, SmallMember]:
    members: dict[str, SmallMember] = {}
    if meta.kind == "vnfs":
        members["config"] = SmallMember(config_text(meta.kernel_args, kver, arch, meta.state).encode(), 0o644)
        members["hybridize"] = SmallMember(DEFAULT_HYBRIDIZE.encode(), 0o644)
        members["livesync.skip"] = SmallMember(DEFAULT_LIVESYNC_SKIP.encode(), 0o644)
    for name, source in (files or {}).items():
        if not MEMBER_RE.fullmatch(name) or name in (ROOTFS, "kernel"):
            raise MetaError(f"member name {name!r} is not allowed")
        members[name] = _source_member(name, source)
    if nodescripts is not None:
        members.update(nodescript_members(Path(nodescripts)))
    return members


def _target(out: os.PathLike | str, meta: Meta, root: Path | None, overwrite: bool) -> Path:
    out_path = Path(out)
    if out_path.is_dir():
        out_path = out_path / capsule_filename(meta)
    if root is not None and _inside(out_path.parent, root):
        raise CapsuleError("the capsule would be written inside the tree it packs", out_path)
    if out_path.exists() and not overwrite:
        raise CapsuleError("already exists (remove it first, or overwrite it)", out_path)
    if not out_path.parent.is_dir():
        raise CapsuleError("no such directory", out_path.parent)
    return out_path


def plan_pack(
    root: os.PathLike | str | None,
    out: os.PathLike | str,
    meta: Meta,
    *,
    kernel: os.PathLike | str | bool | None = None,
    files: Mapping[str, Source] | None = None,
    nodescripts: os.PathLike | str | None = None,
    image: ImageSource | None = None,
    options: PackOptions = PackOptions(),
    overwrite: bool = False,
) -> PackPlan:
    """What ``pack`` will write (see :func:`perceus.capsule.writer.pack` for the arguments)."""
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
    kernel_path, inside, kver = _kernel(kernel, root_path, meta)
    members = _members(meta, kver, arch, files, nodescripts)
    kernel_args = meta.kernel_args
    if not kernel_args and "config" in (files or {}):  # a given config speaks for itself
        kernel_args = read_config(members["config"].data.decode("utf-8", "replace")).get("KERNEL_ARGS", "")
        Meta(meta.name, meta.version, kernel_args=kernel_args).check()
    resolved = replace(meta, arch=arch, os=os_name, kernel_args=kernel_args)
    return PackPlan(
        out=_target(out, resolved, root_path, overwrite),
        meta=resolved,
        kernel_version=kver,
        members=members,
        kernel=kernel_path,
        kernel_in_tree=inside,
        root=root_path,
        image=image,
        options=options,
    )
