/* perceus.native.syscalls: the Linux syscalls Python lacks or does slowly.
 *
 * Every function returns the errno value itself (0 on success) instead of -1 + errno, so
 * the Python side never depends on errno surviving the trip back through the interpreter.
 * cffi calls all of them with the GIL released.
 */
#ifndef PERCEUS_SYSCALLS_H
#define PERCEUS_SYSCALLS_H

#include <stdint.h>
#include <linux/kexec.h>
#include <linux/module.h>
#include <linux/reboot.h>

/* Which syscall moved bytes (perceus_xfer.via, a mask) or failed (perceus_xfer.call). */
#define PERCEUS_VIA_COPY_FILE_RANGE 1
#define PERCEUS_VIA_SENDFILE 2

/* cdef:begin -- native/syscalls_build.py hands what follows to cffi, comments removed. */

/* The outcome of a transfer loop.
 *   err == 0:       done == count, or the source hit EOF after done bytes.
 *   err == EINTR:   a signal arrived; done bytes moved; call again from the advanced offset
 *                   (the Python wrapper does, after the interpreter ran its signal handlers).
 *   err == EAGAIN:  the non-blocking destination is full after done bytes.
 *   anything else:  the syscall named by call failed after done bytes.
 */
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

/* cdef:end */

#endif
