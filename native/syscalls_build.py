"""cffi API-mode builder for ``perceus.native.syscalls``.

The C lives in ``native/csrc/syscalls.{c,h}``; paths are relative to the repository root,
which is the working directory when setup.py builds ``cffi_modules``. cffi releases the
GIL around every call, so the transfer loops run while other threads (and the asyncio
loop's executor) keep going. ``perceus.native.sysio`` is the typed Python face of this.
"""

from cffi import FFI

CDEF = """
#define KEXEC_FILE_UNLOAD ...
#define KEXEC_FILE_ON_CRASH ...
#define KEXEC_FILE_NO_INITRAMFS ...

#define MODULE_INIT_IGNORE_MODVERSIONS ...
#define MODULE_INIT_IGNORE_VERMAGIC ...
#define MODULE_INIT_COMPRESSED_FILE ...

#define LINUX_REBOOT_MAGIC1 ...
#define LINUX_REBOOT_MAGIC2 ...
#define LINUX_REBOOT_CMD_KEXEC ...
#define LINUX_REBOOT_CMD_RESTART ...
#define LINUX_REBOOT_CMD_POWER_OFF ...

#define PERCEUS_VIA_COPY_FILE_RANGE ...
#define PERCEUS_VIA_SENDFILE ...

struct perceus_xfer {
    int64_t done;
    int err;
    int via;
    int call;
};

struct perceus_xfer perceus_sendfile_all(int out_fd, int in_fd, int64_t offset, int64_t count);
struct perceus_xfer perceus_copy_range(int in_fd, int out_fd, int64_t in_offset, int64_t count);
int perceus_finit_module(int fd, const char *params, int flags);
int perceus_kexec_file_load(int kernel_fd, int initrd_fd, const char *cmdline, unsigned long flags);
int perceus_reboot(unsigned int magic1, unsigned int magic2, unsigned int cmd);
"""

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
