"""The Linux syscalls Python lacks or does slowly, for stage one and perceusd.

Typed wrappers over the cffi module ``perceus.native.syscalls``. They check arguments,
retry EINTR only after the interpreter has run its signal handlers (so Ctrl-C and
perceusd's SIGTERM still work mid-transfer), and raise ``OSError`` whose errno is the
kernel's and whose message names the call, e.g. ``[Errno 9] sendfile_all: sendfile(2):
Bad file descriptor``. Stage one imports this module, so it needs nothing but the stdlib.
"""

import errno
import os
from collections.abc import Callable
from typing import Any, NoReturn

from perceus.native.syscalls import lib

__all__ = [
    "KEXEC_FILE_NO_INITRAMFS",
    "KEXEC_FILE_ON_CRASH",
    "KEXEC_FILE_UNLOAD",
    "LINUX_REBOOT_CMD_KEXEC",
    "LINUX_REBOOT_CMD_POWER_OFF",
    "LINUX_REBOOT_CMD_RESTART",
    "MODULE_INIT_COMPRESSED_FILE",
    "MODULE_INIT_IGNORE_MODVERSIONS",
    "MODULE_INIT_IGNORE_VERMAGIC",
    "copy_range",
    "finit_module",
    "kexec_file_load",
    "reboot",
    "sendfile_all",
]

# kexec_file_load(2) flags, from <linux/kexec.h>.
KEXEC_FILE_UNLOAD: int = lib.KEXEC_FILE_UNLOAD
KEXEC_FILE_ON_CRASH: int = lib.KEXEC_FILE_ON_CRASH
KEXEC_FILE_NO_INITRAMFS: int = lib.KEXEC_FILE_NO_INITRAMFS

# finit_module(2) flags, from <linux/module.h>.
MODULE_INIT_IGNORE_MODVERSIONS: int = lib.MODULE_INIT_IGNORE_MODVERSIONS
MODULE_INIT_IGNORE_VERMAGIC: int = lib.MODULE_INIT_IGNORE_VERMAGIC
MODULE_INIT_COMPRESSED_FILE: int = lib.MODULE_INIT_COMPRESSED_FILE

# reboot(2) commands, from <linux/reboot.h>: the only ones reboot() accepts.
LINUX_REBOOT_CMD_KEXEC: int = lib.LINUX_REBOOT_CMD_KEXEC
LINUX_REBOOT_CMD_RESTART: int = lib.LINUX_REBOOT_CMD_RESTART
LINUX_REBOOT_CMD_POWER_OFF: int = lib.LINUX_REBOOT_CMD_POWER_OFF
_REBOOT_CMDS = frozenset({LINUX_REBOOT_CMD_KEXEC, LINUX_REBOOT_CMD_RESTART, LINUX_REBOOT_CMD_POWER_OFF})

# Which syscall moved the bytes of a copy_range (a mask), see _copy_range().
VIA_COPY_FILE_RANGE: int = lib.PERCEUS_VIA_COPY_FILE_RANGE
VIA_SENDFILE: int = lib.PERCEUS_VIA_SENDFILE
_SYSCALL_NAMES = {VIA_COPY_FILE_RANGE: "copy_file_range(2)", VIA_SENDFILE: "sendfile(2)"}

_INT64_MAX = (1 << 63) - 1

_ENOSYS_HINTS = {
    "finit_module": " (kernel built without CONFIG_MODULES?)",
    "kexec_file_load": " (kernel built without CONFIG_KEXEC_FILE?)",
}


def _fail(call: str, err: int, syscall: str = "") -> NoReturn:
    """Raise the OSError subclass for err (BlockingIOError for EAGAIN, ...), naming the call."""
    where = f"{call}: {syscall}: " if syscall else f"{call}: "
    hint = _ENOSYS_HINTS.get(call, "") if err == errno.ENOSYS else ""
    raise OSError(err, f"{where}{os.strerror(err)}{hint}")


def _check_range(call: str, offset: int, count: int) -> None:
    if not 0 <= offset <= _INT64_MAX:
        raise ValueError(f"{call}: offset must be in 0..2**63-1, not {offset}")
    if not 0 <= count <= _INT64_MAX:
        raise ValueError(f"{call}: count must be in 0..2**63-1, not {count}")


def _c_string(call: str, what: str, text: str) -> bytes:
    data = text.encode()
    if b"\0" in data:
        raise ValueError(f"{call}: {what} must not contain NUL characters")
    return data


_Step = Callable[[int, int, int, int], Any]


def _transfer(call: str, step: _Step, out_fd: int, in_fd: int, offset: int, count: int) -> tuple[int, int]:
    """Run a C transfer loop to completion; returns (bytes moved, mask of syscalls that moved them)."""
    _check_range(call, offset, count)
    done = via = 0
    while True:
        x = step(out_fd, in_fd, offset + done, count - done)
        done += x.done
        via |= x.via
        if x.err == 0:
            return done, via
        if x.err == errno.EINTR:
            continue  # the loop's jump lets pending signal handlers run (and raise) first
        if x.err == errno.EAGAIN and done:
            return done, via
        _fail(call, x.err, _SYSCALL_NAMES.get(x.call, ""))


def sendfile_all(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    """Send count bytes of in_fd from offset to out_fd without copying them through Python.

    perceusd streams images with this: sendfile(2) in a C loop with the GIL released.
    in_fd's file position is left alone; out_fd's advances. Returns the bytes sent: count,
    or fewer when in_fd ends first (so 0 means offset is at or past EOF). For a
    non-blocking out_fd it also returns fewer once the socket is full; call again with
    the advanced offset when it is writable. If it is full before any byte goes,
    BlockingIOError (EAGAIN) is raised, so a 0 return always means EOF.
    Any other error raises OSError; bytes sent before it are not reported.
    """
    return _transfer("sendfile_all", _sendfile_step, out_fd, in_fd, offset, count)[0]


def _sendfile_step(out_fd: int, in_fd: int, offset: int, count: int) -> Any:
    return lib.perceus_sendfile_all(out_fd, in_fd, offset, count)


def copy_range(in_fd: int, out_fd: int, in_offset: int, count: int) -> int:
    """Append count bytes of in_fd from in_offset at out_fd's file position; returns bytes copied.

    Images are assembled from chunk files with this: copy_file_range(2) lets the
    filesystem share or copy extents in the kernel, and where it cannot (another
    filesystem, a pipe or socket, an old kernel: EXDEV, EINVAL, ENOSYS, EOPNOTSUPP) the
    copy goes on with sendfile(2). Returns and raises as sendfile_all() does.
    out_fd must not be opened with O_APPEND (copy_file_range rejects it with EBADF).
    """
    return _copy_range(in_fd, out_fd, in_offset, count)[0]


def _copy_range(in_fd: int, out_fd: int, in_offset: int, count: int) -> tuple[int, int]:
    """copy_range(), also telling which syscalls moved the bytes (VIA_* mask), for tests."""
    return _transfer("copy_range", _copy_step, out_fd, in_fd, in_offset, count)


def _copy_step(out_fd: int, in_fd: int, offset: int, count: int) -> Any:
    return lib.perceus_copy_range(in_fd, out_fd, offset, count)


def finit_module(fd: int, params: str = "", flags: int = 0) -> None:
    """Load the kernel module in the open file fd with finit_module(2).

    Stage one loads NIC drivers (virtio_net, e1000, ...) with it: no modprobe or kmod in
    the initramfs. params is the module's "name=value ..." string; flags are
    MODULE_INIT_* (MODULE_INIT_COMPRESSED_FILE lets the kernel decompress .ko.xz/.zst).
    """
    data = _c_string("finit_module", "params", params)
    err = lib.perceus_finit_module(fd, data, flags)
    if err:
        _fail("finit_module", err)


def kexec_file_load(kernel_fd: int, initrd_fd: int, cmdline: str, flags: int = 0) -> None:
    """Stage the kernel in kernel_fd (and initramfs in initrd_fd) for reboot(LINUX_REBOOT_CMD_KEXEC).

    This is how stage one hands over to the VNFS kernel: the kernel verifies and places
    the image itself, so no kexec-tools. With KEXEC_FILE_NO_INITRAMFS initrd_fd is ignored
    (pass -1); KEXEC_FILE_UNLOAD drops a staged image. Nothing runs until reboot().
    """
    data = _c_string("kexec_file_load", "cmdline", cmdline)
    err = lib.perceus_kexec_file_load(kernel_fd, initrd_fd, data, flags)
    if err:
        _fail("kexec_file_load", err)


def reboot(cmd: int) -> None:
    """Restart, power off, or jump into the kexec-staged kernel, at once.

    Only LINUX_REBOOT_CMD_KEXEC, _RESTART and _POWER_OFF are accepted (anything else is a
    ValueError, before any syscall). The kernel does not sync: call os.sync() first.
    Returns only on failure, by raising OSError (e.g. EINVAL for KEXEC with nothing staged).
    """
    if cmd not in _REBOOT_CMDS:
        raise ValueError(f"reboot: unsupported command {cmd:#x}")
    _reboot(lib.LINUX_REBOOT_MAGIC1, lib.LINUX_REBOOT_MAGIC2, cmd)


def _reboot(magic1: int, magic2: int, cmd: int) -> None:
    """The raw reboot(2); tests reach its error path with wrong magic numbers, which the kernel rejects."""
    err = lib.perceus_reboot(magic1, magic2, cmd)
    if err:
        _fail("reboot", err)
