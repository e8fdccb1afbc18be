"""Handing over to the runtime OS: the initrd stage one builds and the kexec that boots it.

The initrd is the image ‖ the overlay ‖ (only if DESTDIR is not empty) an uncompressed newc
archive of the DESTDIR staging directory: the kernel unpacks concatenated archives in turn,
so later files win. Stage one downloads image and overlay straight into one file at their
final offsets (:func:`initrd_sinks`), so assembling means appending the third archive.
"""

import os
from pathlib import Path
from types import ModuleType

from perceus.common.newc import write_tree
from perceus.stage1.cmdline import BootOptions
from perceus.stage1.fetch import FileSink, Sink
from perceus.stage1.protocol import ImageOffer, ObjectKind

__all__ = ["assemble_initrd", "initrd_sinks", "kernel_cmdline", "kexec_boot"]


def initrd_sinks(workdir: Path):
    """A SinkFactory: image at 0, overlay right after it, in ``workdir/initrd``; kernel apart."""

    def sinks(kind: ObjectKind, offer: ImageOffer) -> Sink:
        if kind is ObjectKind.KERNEL:
            (workdir / "kernel").unlink(missing_ok=True)
            return FileSink(workdir / "kernel", offer.kernel_size)
        base = 0 if kind is ObjectKind.IMAGE else offer.image_size
        return FileSink(workdir / "initrd", offer.size_of(kind), base)

    return sinks


def assemble_initrd(initrd: Path, offer: ImageOffer, staging: Path) -> int:
    """Cut ``initrd`` to image + overlay and append the DESTDIR archive if any; returns its size."""
    end = offer.image_size + offer.overlay_size
    with open(initrd, "r+b") as f:
        f.truncate(end)
        f.seek(end)
        extra = write_tree(f, staging) if staging.is_dir() else 0
        f.flush()
        os.fsync(f.fileno())
    return end + extra


def kernel_cmdline(offer_args: str, options: BootOptions) -> str:
    """The runtime kernel's command line: the VNFS's args, plus ``perceus.debug`` if set at boot."""
    args = offer_args.split()
    if options.debug and not any(a.startswith("perceus.debug=") for a in args):
        args.append(f"perceus.debug={options.debug}")
    return " ".join(args)


def kexec_boot(kernel: Path, initrd: Path, cmdline: str, sysio: ModuleType | None = None) -> None:
    """kexec_file_load the kernel with the initrd and jump into it; returns only by raising OSError.

    ``sysio`` is ``perceus.native.sysio`` (imported here, lazily: only a real node needs it).
    """
    if sysio is None:
        from perceus.native import sysio
    kfd = os.open(kernel, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ifd = os.open(initrd, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sysio.kexec_file_load(kfd, ifd, cmdline)
        finally:
            os.close(ifd)
    finally:
        os.close(kfd)
    os.sync()
    sysio.reboot(sysio.LINUX_REBOOT_CMD_KEXEC)
