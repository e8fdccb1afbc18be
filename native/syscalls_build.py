"""cffi API-mode builder for ``perceus.native.syscalls``.

The C lives in ``native/csrc/syscalls.{c,h}``; paths are relative to the repository root,
which is the working directory when setup.py builds ``cffi_modules``. cffi releases the
GIL around every call, so the transfer loops run while other threads (and the asyncio
loop's executor) keep going. ``perceus.native.sysio`` is the typed Python face of this.
"""

import re
from pathlib import Path

from cffi import FFI

HEADER = Path("native/csrc/syscalls.h")

# Constants cffi reads from the kernel headers at build time.
CONSTANTS = (
    "KEXEC_FILE_UNLOAD",
    "KEXEC_FILE_ON_CRASH",
    "KEXEC_FILE_NO_INITRAMFS",
    "MODULE_INIT_IGNORE_MODVERSIONS",
    "MODULE_INIT_IGNORE_VERMAGIC",
    "MODULE_INIT_COMPRESSED_FILE",
    "LINUX_REBOOT_MAGIC1",
    "LINUX_REBOOT_MAGIC2",
    "LINUX_REBOOT_CMD_KEXEC",
    "LINUX_REBOOT_CMD_RESTART",
    "LINUX_REBOOT_CMD_POWER_OFF",
    "PERCEUS_VIA_COPY_FILE_RANGE",
    "PERCEUS_VIA_SENDFILE",
)


def declarations() -> str:
    """The header's declarations between its cdef markers, so they are written once."""
    text = HEADER.read_text().split("cdef:begin", 1)[1].split("/* cdef:end */", 1)[0]
    text = text.split("*/", 1)[1]  # the rest of the marker comment
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


CDEF = "".join(f"#define {name} ...\n" for name in CONSTANTS) + declarations()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "perceus.native.syscalls",
    '#include "syscalls.h"',
    sources=["native/csrc/syscalls.c"],
    include_dirs=["native/csrc"],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
