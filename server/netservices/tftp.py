"""The TFTP tree nodes boot from: pxelinux and its modules, iPXE for legacy PXE ROMs,
the stage-one kernel and initramfs, and pxelinux's default configuration.

Every file is copied beside its target and renamed into place, so a node booting while
the tree is refreshed gets the old file or the new, never half of one. All sources are
checked before the first copy, so a missing one changes nothing.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from perceus.common.atomicfile import atomic_copy
from perceus.server.errors import PerceusError
from perceus.server.netservices import pxelinux
from perceus.server.netservices.files import install_text

PXELINUX_DIR = Path("/usr/lib/PXELINUX")
SYSLINUX_MODULES = Path("/usr/lib/syslinux/modules/bios")
IPXE_DIR = Path("/usr/lib/ipxe")

# (target under the TFTP root, source, the Debian package that ships it)
BOOT_FILES = (
    ("pxelinux.0", PXELINUX_DIR / "pxelinux.0", "pxelinux"),
    ("ldlinux.c32", SYSLINUX_MODULES / "ldlinux.c32", "syslinux-common"),
    ("menu.c32", SYSLINUX_MODULES / "menu.c32", "syslinux-common"),
    ("libutil.c32", SYSLINUX_MODULES / "libutil.c32", "syslinux-common"),
    ("libcom32.c32", SYSLINUX_MODULES / "libcom32.c32", "syslinux-common"),
    ("undionly.kpxe", IPXE_DIR / "undionly.kpxe", "ipxe"),
)


@dataclass(frozen=True)
class TftpTree:
    """What ``perceus configure tftp`` installs."""

    root: Path
    kernel: Path
    initramfs: Path
    master: str  # the masterip= argument
    extra: str = ""  # more kernel arguments


def check_sources(tree: TftpTree) -> list[tuple[str, Path]]:
    """(target, source) of every file to install; PerceusError for the first missing one."""
    for name, path in (("kernel", tree.kernel), ("initramfs", tree.initramfs)):
        if not path.is_file():
            raise PerceusError(f"no stage-one {name}: run 'perceus stage1 build' first", str(path))
    for _, source, package in BOOT_FILES:
        if not source.is_file():
            raise PerceusError(f"missing boot loader file: install the {package} package", str(source))
    return [(name, source) for name, source, _ in BOOT_FILES] + [
        (pxelinux.KERNEL, tree.kernel),
        (pxelinux.INITRAMFS, tree.initramfs),
    ]


def install(tree: TftpTree) -> list[str]:
    """Fill the TFTP root; the files written, relative to it."""
    files = check_sources(tree)
    written = []
    try:
        for directory in (tree.root, tree.root / "perceus", pxelinux.config_dir(tree.root)):
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o755)
        for name, source in files:
            atomic_copy(source, tree.root / name)
            written.append(name)
    except OSError as exc:
        where = exc.filename or str(tree.root)
        raise PerceusError(f"cannot fill the TFTP root: {exc.strerror or exc}", str(where)) from None
    default = pxelinux.config_dir(tree.root) / "default"
    install_text(default, pxelinux.render_default(tree.master, tree.extra))
    written.append(str(default.relative_to(tree.root)))
    return written
