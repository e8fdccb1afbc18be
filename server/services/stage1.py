"""Stage one as workflows: build the initramfs (and keep its kernel beside it), make it a UKI,
write a payload to flash (guide 6.3, "Rapid Boot").

The default build goes to ``$STATEDIR/stage1`` (initramfs and the kernel whose drivers it
carries), where ``configure tftp`` and the UKI look for them. None of this needs an
initialised master. The builders are imported when used: they are large and most
commands never need them.
"""

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.netservices.pxelinux import CONSOLE
from perceus.server.paths import Paths

if TYPE_CHECKING:
    from perceus.buildroot.flash import FlashResult
    from perceus.buildroot.stage1 import BuildResult

__all__ = [
    "DEFAULT_CMDLINE",
    "BuildRequest",
    "Built",
    "UkiBuilt",
    "build",
    "build_uki",
    "temporary_uki",
    "uki_cmdline",
    "uki_inputs",
    "write_flash",
]

DEFAULT_CMDLINE = CONSOLE  # the same consoles as a PXE-booted stage one
_MODULE_NAME_CHARS = frozenset("_-*?[]/.")


# -- the initramfs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRequest:
    output: Path | None = None  # default: $STATEDIR/stage1/initramfs.img, the kernel beside it
    kernel_root: Path = Path("/")  # where boot/vmlinuz-VERSION and lib/modules/VERSION are
    kernel_version: str = ""  # default: the running kernel's
    extra_modules: Sequence[str] = ()  # more drivers: names or globs
    master: str | None = None  # for nodes booted without masterip= (comma list)
    site_key: Path | None = None  # the site key to bake in


@dataclass(frozen=True)
class Built:
    result: "BuildResult"
    kernel: Path | None  # where the kernel was kept beside the initramfs (default output only)


def _check_modules(names: Sequence[str]) -> tuple[str, ...]:
    for name in names:
        if not all(c.isalnum() or c in _MODULE_NAME_CHARS for c in name):
            raise InvalidRequest(f"--extra-modules: {name!r} is not a module name or pattern")
    return tuple(names)


def _masters(text: str) -> str:
    """A master list (``ADDRESS[:PORT],...``) normalised as stage one reads it: ``ADDRESS:PORT,...``."""
    from perceus.stage1.cmdline import parse_masters

    try:
        return ",".join(str(m) for m in parse_masters(text))
    except ValueError as exc:
        raise InvalidRequest(f"--master: {exc}") from None


def _site_key(path: Path | None) -> bytes | None:
    if path is None:
        return None
    from perceus.stage1.protocol import check_site_key

    try:
        return check_site_key(path.read_bytes())
    except OSError as exc:
        raise PerceusError(f"cannot read the site key: {exc.strerror}", str(path)) from None
    except ValueError as exc:
        raise PerceusError(f"bad site key: {exc}", str(path)) from None


def build(paths: Paths, request: BuildRequest) -> Built:
    """Build the stage-one initramfs: busybox, Python, the stage-one program and the drivers."""
    from perceus.buildroot.stage1 import BuildOptions, build_stage1, install_kernel

    opts = BuildOptions(
        output=request.output or paths.stage1_initramfs,
        kernel_root=request.kernel_root,
        kernel_version=request.kernel_version,
        extra_modules=_check_modules(request.extra_modules),
        master=_masters(request.master) if request.master else "",
        site_key=_site_key(request.site_key),
    )
    kept = None
    try:
        result = build_stage1(opts)
        if request.output is None:
            kept = paths.stage1_kernel
            install_kernel(result.kernel, kept)
    except OSError as exc:
        raise PerceusError(f"cannot write: {exc.strerror}", str(exc.filename or opts.output)) from None
    return Built(result, kept)


# -- the unified kernel image -----------------------------------------------------------------


def uki_cmdline(cmdline: str | None, master: str | None) -> str:
    """The command line a UKI carries: ``cmdline`` (or the default) plus ``masterip=``."""
    text = " ".join((DEFAULT_CMDLINE if cmdline is None else cmdline).split())
    if master is not None:
        masters = _masters(master)
        if not masters:
            raise InvalidRequest("--master: no address given")
        if any(word.startswith("masterip=") for word in text.split()):
            raise InvalidRequest("--cmdline already has masterip=: give it there or with --master, not both")
        text = f"{text} masterip={masters}".strip()
    return text


def _input(given: Path | None, default: Path, what: str, option: str) -> Path:
    path = given if given is not None else default
    if given is None and not path.exists():
        raise PerceusError(f"no stage-one {what}: run 'perceus stage1 build' or give {option}", str(path))
    return path


def uki_inputs(paths: Paths, kernel: Path | None, initramfs: Path | None) -> tuple[Path, Path]:
    """The kernel and initramfs a UKI is made of: those given, else what ``stage1 build`` made."""
    return (
        _input(kernel, paths.stage1_kernel, "kernel", "--kernel"),
        _input(initramfs, paths.stage1_initramfs, "initramfs", "--initramfs"),
    )


@dataclass(frozen=True)
class UkiSection:
    name: str
    size: int  # bytes (the section's virtual size)
    address: int  # where firmware loads it
    source: Path | None  # the file it holds, for .linux and .initrd


@dataclass(frozen=True)
class UkiBuilt:
    path: Path
    size: int
    cmdline: str
    sections: list[UkiSection]


def build_uki(kernel: Path, initramfs: Path, cmdline: str, out: Path) -> UkiBuilt:
    """Write the UKI (kernel, initramfs and command line in one EFI program) to ``out``."""
    from perceus.buildroot import uki

    size = uki.build_uki(kernel, initramfs, cmdline, out)
    layout = uki.read_pe(out)
    sources = {".linux": kernel, ".initrd": initramfs}
    sections = []
    for name in uki.SECTIONS:
        section = layout.section(name)
        assert section is not None  # build_uki checked every section landed
        sections.append(
            UkiSection(name, section.virtual_size, layout.image_base + section.rva, sources.get(name))
        )
    return UkiBuilt(out, size, cmdline, sections)


@contextlib.contextmanager
def temporary_uki(kernel: Path, initramfs: Path, cmdline: str) -> Iterator[UkiBuilt]:
    """A UKI in a scratch directory, removed when the block ends (to flash without keeping one)."""
    with tempfile.TemporaryDirectory(prefix="perceus-uki.") as scratch:
        yield build_uki(kernel, initramfs, cmdline, Path(scratch) / "stage1.efi")


# -- flash ------------------------------------------------------------------------------------


def write_flash(programmer: str, image: Path, chip: str | None = None) -> "FlashResult":
    """Write ``image`` to the chip with flashrom (padded with 0xFF) and verify it by reading back."""
    from perceus.buildroot import flash

    return flash.write_flash(programmer, image, chip=chip)
