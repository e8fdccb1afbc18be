"""The flash payload: a unified kernel image (UKI) of the stage-one kernel and initramfs.

An embedded node (guide 6.3, "Rapid Boot") has no PXE: its firmware starts one EFI
program from flash. systemd's EFI stub (``linuxx64.efi.stub``) turns a kernel, an
initramfs and a command line, carried as PE sections ``.linux``, ``.initrd`` and
``.cmdline`` (``.osrel`` names the payload), into exactly that program.

The sections are added with ``objcopy`` the way systemd's documentation does it, but their
addresses are computed from the stub's own layout (its ``SizeOfImage``, section table and
``SectionAlignment``) and laid one after the other, so no section overlaps another
however large the kernel or the initramfs is. The fixed addresses of the old recipe
(.linux at 0x2000000, .initrd at 0x3000000) overlap as soon as a kernel passes 16 MiB.
"""

import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from perceus.buildroot.errors import BuildError
from perceus.buildroot.tools import run_tool
from perceus.common.atomicfile import beside

__all__ = [
    "DEFAULT_STUB",
    "OS_RELEASE",
    "SECTIONS",
    "BuildError",
    "PeLayout",
    "PeSection",
    "build_uki",
    "read_pe",
]

DEFAULT_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")

# The os-release text the stub (and bootctl, and a firmware boot menu) shows for the payload.
OS_RELEASE = (
    'NAME="Perceus stage one"\n'
    "ID=perceus-stage1\n"
    'PRETTY_NAME="Perceus stage one (embedded)"\n'
    "VERSION_ID=0.1.0\n"
    'HOME_URL="https://github.com/perceus"\n'
)

# The order the sections are laid out in: the small text ones first, the large ones last,
# as systemd's objcopy recipe has them.
SECTIONS = (".osrel", ".cmdline", ".linux", ".initrd")

_PAGE = 0x1000
_OBJCOPY_TIMEOUT = 300.0
_MAX_HEADER = 1 << 16  # the DOS stub, PE headers and section table of any sane stub fit in 64 KiB


@dataclass(frozen=True)
class PeSection:
    """One entry of a PE section table; ``rva`` is relative to the image base."""

    name: str
    rva: int
    virtual_size: int
    raw_size: int
    raw_offset: int

    @property
    def size(self) -> int:
        """What the loader maps: VirtualSize (file padding beyond it is not mapped)."""
        return self.virtual_size or self.raw_size

    @property
    def end(self) -> int:
        return self.rva + self.size


@dataclass(frozen=True)
class PeLayout:
    """The parts of a PE header that decide where new sections may go."""

    image_base: int
    section_alignment: int
    file_alignment: int
    size_of_image: int
    sections: tuple[PeSection, ...]

    def section(self, name: str) -> PeSection | None:
        return next((s for s in self.sections if s.name == name), None)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def read_pe(path: Path) -> PeLayout:
    """Parse the PE/COFF header of ``path`` (PE32 or PE32+) with struct: no tool needed.

    pyelftools reads only ELF, and ``objdump -h`` prints neither SizeOfImage nor the
    alignment, so the header is read here directly.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_MAX_HEADER)
    except OSError as exc:
        raise BuildError(exc.strerror or str(exc), path) from None
    if len(head) < 0x40 or head[:2] != b"MZ":
        raise BuildError("not a PE file: no MZ header", path)
    (pe,) = struct.unpack_from("<I", head, 0x3C)
    if pe + 24 > len(head) or head[pe : pe + 4] != b"PE\0\0":
        raise BuildError("not a PE file: no PE signature", path)
    _machine, count, _, _, _, opt_size, _ = struct.unpack_from("<HHIIIHH", head, pe + 4)
    opt = pe + 24
    if opt_size < 64 or opt + opt_size + 40 * count > len(head):
        raise BuildError("malformed PE header", path)
    (magic,) = struct.unpack_from("<H", head, opt)
    if magic == 0x20B:  # PE32+
        (image_base,) = struct.unpack_from("<Q", head, opt + 24)
    elif magic == 0x10B:  # PE32
        (image_base,) = struct.unpack_from("<I", head, opt + 28)
    else:
        raise BuildError(f"unknown PE optional header magic {magic:#x}", path)
    section_alignment, file_alignment = struct.unpack_from("<II", head, opt + 32)
    (size_of_image,) = struct.unpack_from("<I", head, opt + 56)
    sections = []
    for i in range(count):
        raw = struct.unpack_from("<8sIIII", head, opt + opt_size + 40 * i)
        name = raw[0].rstrip(b"\0").decode("ascii", "replace")
        sections.append(PeSection(name, raw[2], raw[1], raw[3], raw[4]))
    if not section_alignment or section_alignment & (section_alignment - 1):
        raise BuildError(f"bad SectionAlignment {section_alignment:#x}", path)
    return PeLayout(image_base, section_alignment, file_alignment, size_of_image, tuple(sections))


def section_addresses(stub: PeLayout, sizes: dict[str, int]) -> dict[str, int]:
    """The VMA (image base + RVA) objcopy is to give each new section, in ``SECTIONS`` order.

    The first goes past the end of everything the stub maps (its SizeOfImage and its last
    section), each next one past the end of the one before, every one aligned to the
    stub's SectionAlignment but at least a page, which firmware maps with its own
    attributes.
    """
    alignment = max(stub.section_alignment, _PAGE)
    cursor = max([stub.size_of_image, *(s.end for s in stub.sections)])
    addresses = {}
    for name in SECTIONS:
        cursor = _align(cursor, alignment)
        addresses[name] = stub.image_base + cursor
        cursor += sizes[name]
    return addresses


def _check_input(path: Path, what: str) -> int:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise BuildError(f"{what}: {exc.strerror or exc}", path) from None
    if not os.path.isfile(path):
        raise BuildError(f"{what} is not a regular file", path)
    if not os.access(path, os.R_OK):
        raise BuildError(f"{what} is not readable", path)
    if st.st_size == 0:
        raise BuildError(f"{what} is empty", path)
    return st.st_size


def build_uki(kernel: Path, initrd: Path, cmdline: str, output: Path, stub: Path = DEFAULT_STUB) -> int:
    """Write the UKI of ``kernel`` + ``initrd`` + ``cmdline`` to ``output``; return its size.

    The image is made beside ``output`` and renamed into place, so an interrupted build
    leaves the old file (or none), never half a payload about to be flashed.
    """
    kernel, initrd, output, stub = Path(kernel), Path(initrd), Path(output), Path(stub)
    if "\n" in cmdline or "\0" in cmdline:
        raise BuildError("the kernel command line must be one line", "cmdline")
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        raise BuildError("objcopy not found: install binutils", "PATH")
    if not stub.exists():
        raise BuildError("EFI stub not found: install systemd-boot-efi", stub)
    _check_input(stub, "EFI stub")
    layout = read_pe(stub)
    if layout.section(".linux") is not None:
        raise BuildError("the stub already carries a kernel: give the bare linux*.efi.stub", stub)
    sizes = {".linux": _check_input(kernel, "kernel"), ".initrd": _check_input(initrd, "initramfs")}
    with open(kernel, "rb") as f:
        if f.read(2) != b"MZ":  # the stub hands over to the kernel's own EFI entry point
            raise BuildError("not an EFI-bootable kernel (no MZ header): give a vmlinuz", kernel)
    if not output.parent.is_dir():
        raise BuildError("no such directory", output.parent)

    with tempfile.TemporaryDirectory(prefix="perceus-uki.") as scratch:
        texts = {".osrel": OS_RELEASE.encode(), ".cmdline": cmdline.strip().encode()}
        files = {".linux": kernel, ".initrd": initrd}
        for name, data in texts.items():
            files[name] = Path(scratch) / name.lstrip(".")
            files[name].write_bytes(data)
            sizes[name] = len(data)
        addresses = section_addresses(layout, sizes)
        args = [objcopy]
        for name in SECTIONS:
            args += [
                "--add-section", f"{name}={files[name]}",
                "--set-section-flags", f"{name}=contents,alloc,load,readonly,data",
                "--change-section-vma", f"{name}={addresses[name]:#x}",
            ]  # fmt: skip
        with beside(output) as tmp:
            run_tool(
                [*args, str(stub), str(tmp)],
                what="objcopy",
                where=output,
                timeout=_OBJCOPY_TIMEOUT,
                error=BuildError,
            )
            _check_layout(tmp, addresses, sizes, output)
    return output.stat().st_size


def _check_layout(path: Path, addresses: dict[str, int], sizes: dict[str, int], where: Path) -> None:
    """Refuse an image whose sections landed elsewhere or overlap (an objcopy surprise)."""
    layout = read_pe(path)
    for name in SECTIONS:
        section = layout.section(name)
        if section is None or layout.image_base + section.rva != addresses[name]:
            raise BuildError(f"objcopy did not place section {name} as asked", where)
        if section.virtual_size < sizes[name]:
            raise BuildError(f"objcopy truncated section {name}", where)
    mapped = sorted((s.rva, s.end, s.name) for s in layout.sections if s.size)
    for (_, end, first), (start, _, second) in zip(mapped, mapped[1:], strict=False):
        if start < end:
            raise BuildError(f"sections {first} and {second} overlap", where)
    if layout.size_of_image < max(end for _, end, _ in mapped):
        raise BuildError("SizeOfImage does not cover the sections", where)
