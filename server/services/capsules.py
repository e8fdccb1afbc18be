"""Capsules (``.vnfs`` and ``.pmod``) as workflows: pack a root tree, inspect, verify, unpack, convert.

``pack`` does the job of the original ``chroot2stateless.sh`` (guide 4.5.1): the metadata
comes from the request, and what it leaves open from the output's conventional name
(``name-version-revision.state.arch.vnfs``). None of this needs an initialised master.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from perceus import capsule
from perceus.server.errors import InvalidRequest
from perceus.server.services.progress import Progress, no_progress, tree_bytes

__all__ = ["CapsuleInfo", "PackRequest", "Written", "convert", "inspect", "pack", "unpack", "verify"]


@dataclass(frozen=True)
class Written:
    """A capsule written: its manifest and the file (named by convention when given a directory)."""

    manifest: capsule.Manifest
    path: Path


@dataclass(frozen=True)
class PackRequest:
    """A root tree to pack into ``out``; metadata left None comes from ``out``'s name, then defaults."""

    rootdir: Path
    out: Path
    name: str | None = None
    version: str | None = None
    revision: str | None = None
    state: str | None = None
    arch: str | None = None
    os: str | None = None
    kernel_args: str | None = None  # default: the config file's, else "quiet"
    kernel: Path | None = None  # default: the tree's newest /boot/vmlinuz*
    no_kernel: bool = False
    config: Path | None = None
    hybridize: Path | None = None
    livesync_skip: Path | None = None
    nodescripts: Path | None = None
    level: int = 3
    threads: int = 0
    chunk_size: int = 4 << 20
    overwrite: bool = False


_DEFAULTS = (("name", None), ("version", None), ("revision", "1"), ("state", "stateless"), ("arch", None))


def meta_for(request: PackRequest) -> capsule.Meta:
    """The request's metadata; what it leaves open comes from ``out``'s name, then the defaults."""
    fields = None if request.out.is_dir() else capsule.parse_capsule_filename(request.out.name)
    if fields is not None and fields["kind"] != "vnfs":
        fields = None
    values = {}
    for key, default in _DEFAULTS:
        given, named = getattr(request, key), fields.get(key) if fields else None
        if given is not None and named is not None and given != named:
            raise InvalidRequest(f"--{key} {given} contradicts OUT's name, which says {named}")
        values[key] = given if given is not None else named if named is not None else default
    for key in ("name", "version"):
        if values[key] is None:
            raise InvalidRequest(
                f"--{key} is required unless OUT is named name-version-revision.state.arch.vnfs"
            )
    kernel_args = request.kernel_args
    if kernel_args is None and request.config is None:
        kernel_args = "quiet"
    return capsule.Meta(
        name=values["name"],
        version=values["version"],
        revision=values["revision"],
        state=values["state"],
        arch=values["arch"],
        os=request.os,
        kernel_args=kernel_args or "",
    )


def pack(
    request: PackRequest,
    progress: Progress = no_progress,
    on_kernel: Callable[[str], None] | None = None,
) -> Written:
    """Pack the root tree into a capsule; ``on_kernel`` hears which of the tree's kernels was taken.

    A capsule without a kernel (none given, none in the tree) is written all the same:
    ``manifest.kernel_version`` is then None, and nodes cannot boot it.
    """
    if request.kernel is not None and request.no_kernel:
        raise InvalidRequest("give --kernel or --no-kernel, not both")
    meta = meta_for(request)
    files = {
        name: path
        for name, path in (
            ("config", request.config),
            ("hybridize", request.hybridize),
            ("livesync.skip", request.livesync_skip),
        )
        if path is not None
    }
    with progress(lambda: tree_bytes(request.rootdir)) as advance:
        manifest = capsule.pack(
            request.rootdir,
            request.out,
            meta,
            kernel=False if request.no_kernel else request.kernel,
            files=files,
            nodescripts=request.nodescripts,
            level=request.level,
            threads=request.threads,
            chunk_size=request.chunk_size,
            overwrite=request.overwrite,
            progress=advance,
            on_kernel=on_kernel,
        )
    return Written(manifest, capsule.output_path(request.out, manifest))


@dataclass(frozen=True)
class CapsuleInfo:
    """What a capsule's header and manifest say (checked, but not every byte)."""

    path: Path
    size: int
    manifest: capsule.Manifest


def inspect(path: Path) -> CapsuleInfo:
    with capsule.open(path) as c:
        return CapsuleInfo(c.path, c.size, c.manifest)


def verify(path: Path, progress: Progress = no_progress) -> CapsuleInfo:
    """Check every byte: header, manifest, each member's sha256, each image frame."""
    with capsule.open(path) as c, progress(lambda: c.size) as advance:
        c.verify(advance)
        return CapsuleInfo(c.path, c.size, c.manifest)


def unpack(
    path: Path,
    dest: Path,
    *,
    allow_devices: bool = True,
    same_owner: bool | None = None,
    progress: Progress = no_progress,
) -> capsule.Manifest:
    """The root tree into ``dest/rootfs``, the other members beside it; ``dest`` whole or untouched."""
    with capsule.open(path) as c:
        rootfs = c.manifest.rootfs
    with progress(lambda: rootfs.usize if rootfs else None) as advance:
        return capsule.unpack(
            path, dest, allow_devices=allow_devices, same_owner=same_owner, progress=advance
        )


def convert(legacy: Path, out: Path, *, allow_devices: bool = False, overwrite: bool = False) -> Written:
    """An original Perceus capsule (a bzip2 tar) made into a capsule."""
    manifest = capsule.legacy.convert(legacy, out, allow_devices=allow_devices, overwrite=overwrite)
    return Written(manifest, capsule.output_path(out, manifest))
