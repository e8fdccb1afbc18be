"""``perceus capsule``: pack, inspect, verify, unpack and convert ``.vnfs`` / ``.pmod`` capsules.

``pack`` does the job of the original ``chroot2stateless.sh`` (guide 4.5.1): a root tree
in, one self-describing capsule out, named by the guide's convention when OUT is a
directory. None of these commands needs an initialised perceus.
"""

import re
from datetime import datetime
from pathlib import Path

import click

from perceus.capsule.format import ENCODING_RAW, FORMAT_VERSION, STATES
from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusGroup
from perceus.server.cli.output import human_size, progress_bar
from perceus.server.services import capsules as service

_SIZE = re.compile(r"(\d+)\s*([KMG]?)(i?B)?", re.IGNORECASE)


class ByteSize(click.ParamType):
    """A size such as 4194304, 256K or 4M (powers of 1024)."""

    name = "size"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE.fullmatch(str(value).strip())
        if not m:
            self.fail(f"{value!r} is not a size such as 256K or 4M", param, ctx)
        size = int(m[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[m[2].upper()]
        if not 4096 <= size <= 1 << 30:
            self.fail(f"{value} is outside 4K..1G", param, ctx)
        return size


@click.group("capsule", cls=PerceusGroup)
def capsule_group() -> None:
    """Pack, inspect, verify and unpack VNFS capsules (.vnfs) and modules (.pmod)."""


@capsule_group.command()
@click.argument("rootdir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--name", help="Capsule name, e.g. caos-nsa-node (default: from OUT's name).")
@click.option(
    "--version", "version_", metavar="VERSION", help="OS version, e.g. 1.0 (default: from OUT's name)."
)
@click.option("--revision", help="Capsule revision (default 1).")
@click.option(
    "--state", type=click.Choice(STATES), help="stateless or stateful (default: OUT's name, else stateless)."
)
@click.option(
    "--arch", help="Architecture; must match the tree's /sbin/init or busybox (default: read from it)."
)
@click.option("--os", "os_name", help="Operating system (default: ID-VERSION_ID of the tree's os-release).")
@click.option(
    "--kernel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The VNFS kernel (default: the tree's newest /boot/vmlinuz*).",
)
@click.option("--no-kernel", is_flag=True, help="Pack no kernel even if the tree has one.")
@click.option(
    "--kernel-args", help="KERNEL_ARGS for the config file (default: the --config file's, else 'quiet')."
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use this config file instead of the generated one.",
)
@click.option(
    "--hybridize",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use this hybridize list instead of the default.",
)
@click.option(
    "--livesync-skip",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use this livesync.skip list instead of the default.",
)
@click.option(
    "--nodescripts",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A directory of STATE/SCRIPT nodescripts to include.",
)
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True, help="zstd level.")
@click.option(
    "--threads",
    type=click.IntRange(0, 256),
    default=0,
    show_default=True,
    help="Compression threads (0: one per core).",
)
@click.option(
    "--chunk-size",
    type=ByteSize(),
    default="4M",
    show_default=True,
    help="Target size of each image chunk (whole files: a chunk may be larger).",
)
@click.option("-f", "--force", is_flag=True, help="Replace OUT if it exists.")
@pass_app
def pack(
    app: App,
    rootdir: Path,
    out: Path,
    name: str | None,
    version_: str | None,
    revision: str | None,
    state: str | None,
    arch: str | None,
    os_name: str | None,
    kernel: Path | None,
    no_kernel: bool,
    kernel_args: str | None,
    config_file: Path | None,
    hybridize: Path | None,
    livesync_skip: Path | None,
    nodescripts: Path | None,
    level: int,
    threads: int,
    chunk_size: int,
    force: bool,
) -> None:
    """Pack the root tree ROOTDIR into the capsule OUT (a file, or a directory to name it in)."""
    request = service.PackRequest(
        rootdir,
        out,
        name=name,
        version=version_,
        revision=revision,
        state=state,
        arch=arch,
        os=os_name,
        kernel_args=kernel_args,
        kernel=kernel,
        no_kernel=no_kernel,
        config=config_file,
        hybridize=hybridize,
        livesync_skip=livesync_skip,
        nodescripts=nodescripts,
        level=level,
        threads=threads,
        chunk_size=chunk_size,
        overwrite=force,
    )
    written = service.pack(
        request,
        progress_bar("Packing"),
        on_kernel=lambda inside: app.info(f"Using the tree's kernel {inside}"),
    )
    manifest, path = written.manifest, written.path
    if manifest.kernel_version is None and not no_kernel:
        app.warn(f"perceus: warning: no kernel in {path.name}: nodes cannot boot it (give --kernel)")
    rootfs = manifest.rootfs
    assert rootfs is not None
    app.info(
        f"Capsule {manifest.fullname} written to {path}: {human_size(path.stat().st_size)}, root tree "
        f"{human_size(rootfs.usize)} in {len(rootfs.chunks)} chunks ({rootfs.entries} entries)"
    )


def _describe(c: service.CapsuleInfo) -> list[str]:
    m = c.manifest
    created = datetime.fromisoformat(m.created.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = [
        ("Capsule", str(c.path)),
        ("Full name", m.fullname),
        ("Kind", m.kind),
        ("Name", m.name),
        ("Version", m.version),
        ("Revision", m.revision),
        ("State", m.state or "-"),
        ("Architecture", m.arch),
        ("Operating system", m.os),
        ("Kernel", m.kernel_version or "(none)"),
        ("Kernel args", m.kernel_args),
        ("Created", created),
        ("Created by", m.tool),
        ("Format", f"version {FORMAT_VERSION}, {human_size(c.size)}"),
    ]
    lines = [f"{label + ':':<18} {value}" for label, value in rows]
    lines += ["", "Members:", f"   {'Name':<32} {'Offset':>12} {'Size':>12}  SHA256"]
    for member in m.members:
        lines.append(f"   {member.name:<32} {member.offset:>12} {member.size:>12}  {member.sha256[:16]}")
        if member.encoding != ENCODING_RAW:
            lines.append(
                f"   {'':<32} {'':>12} {'':>12}  {len(member.chunks)} chunks, {member.entries} entries, "
                f"{human_size(member.usize)} unpacked"
            )
    return lines


@capsule_group.command()
@click.argument("path", metavar="CAPSULE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@pass_app
def inspect(app: App, path: Path, as_json: bool) -> None:
    """Show what a capsule holds (its header and manifest are checked, not every byte)."""
    info = service.inspect(path)
    if as_json:
        app.emit_json({"format_version": FORMAT_VERSION, "size": info.size, **info.manifest.as_dict()})
    else:
        click.echo("\n".join(_describe(info)))


@capsule_group.command()
@click.argument("path", metavar="CAPSULE", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def verify(app: App, path: Path) -> None:
    """Check every byte of a capsule: header, manifest, each member's sha256, each image frame."""
    info = service.verify(path, progress_bar("Verifying"))
    m = info.manifest
    app.info(f"Capsule {m.fullname} is intact: {len(m.members)} members, {human_size(info.size)} checked")


@capsule_group.command()
@click.argument("path", metavar="CAPSULE", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("dest", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--no-devices", is_flag=True, help="Refuse device nodes in the root tree.")
@click.option("--no-same-owner", is_flag=True, help="Files belong to the caller, not the archived owner.")
@pass_app
def unpack(app: App, path: Path, dest: Path, no_devices: bool, no_same_owner: bool) -> None:
    """Unpack CAPSULE: the root tree into DIR/rootfs, the other members beside it."""
    manifest = service.unpack(
        path,
        dest,
        allow_devices=not no_devices,
        same_owner=False if no_same_owner else None,
        progress=progress_bar("Unpacking"),
    )
    app.info(
        f"Capsule {manifest.fullname} unpacked into {dest}: {', '.join(m.name for m in manifest.members)}"
    )


@capsule_group.command()
@click.argument("legacy", metavar="OLD", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--allow-devices", is_flag=True, help="Accept device nodes in the old root tree.")
@click.option("-f", "--force", is_flag=True, help="Replace OUT if it exists.")
@pass_app
def convert(app: App, legacy: Path, out: Path, allow_devices: bool, force: bool) -> None:
    """Convert an original Perceus capsule (a bzip2 tar) into a capsule."""
    written = service.convert(legacy, out, allow_devices=allow_devices, overwrite=force)
    app.info(f"Capsule {written.manifest.fullname} written to {written.path}")
