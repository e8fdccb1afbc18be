/* perceus.native.syscalls: zero-copy transfer loops and the boot-time syscalls. */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64

#include "syscalls.h"

#include <errno.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

/* The most asked of one syscall; the kernel clamps to MAX_RW_COUNT (2 GiB - 4 KiB) anyway. */
#define PERCEUS_CHUNK ((int64_t)0x7ffff000)

static size_t chunk(int64_t left)
{
    return (size_t)(left < PERCEUS_CHUNK ? left : PERCEUS_CHUNK);
}

/* sendfile(2) from in_fd at *offset (advanced) to out_fd at its file position, until
 * count bytes, EOF, or an error. Short writes (a pipe takes at most its free space per
 * call) just loop; EINTR and EAGAIN end the loop so the caller can decide. */
static void sendfile_loop(struct perceus_xfer *x, int out_fd, int in_fd, int64_t *offset, int64_t count)
{
    while (x->done < count) {
        off_t off = (off_t)*offset;
        ssize_t n = sendfile(out_fd, in_fd, &off, chunk(count - x->done));
        if (n < 0) {
            x->err = errno;
            x->call = PERCEUS_VIA_SENDFILE;
            return;
        }
        if (n == 0)
            return; /* EOF */
        *offset += n;
        x->done += n;
        x->via |= PERCEUS_VIA_SENDFILE;
    }
}

struct perceus_xfer perceus_sendfile_all(int out_fd, int in_fd, int64_t offset, int64_t count)
{
    struct perceus_xfer x = {0, 0, 0, 0};
    sendfile_loop(&x, out_fd, in_fd, &offset, count);
    return x;
}

/* copy_file_range(2) cannot serve this pair of files (different filesystems, a pipe or
 * socket as destination, an old kernel, a filesystem without support): use sendfile. */
static int use_sendfile_instead(int err)
{
    return err == EXDEV || err == ENOSYS || err == EINVAL || err == EOPNOTSUPP;
}

struct perceus_xfer perceus_copy_range(int in_fd, int out_fd, int64_t in_offset, int64_t count)
{
    struct perceus_xfer x = {0, 0, 0, 0};
    int64_t offset = in_offset;

    while (x.done < count) {
        loff_t off = (loff_t)offset;
        ssize_t n = copy_file_range(in_fd, &off, out_fd, NULL, chunk(count - x.done), 0);
        if (n > 0) {
            offset += n;
            x.done += n;
            x.via |= PERCEUS_VIA_COPY_FILE_RANGE;
            continue;
        }
        if (n == 0 && x.done > 0)
            return x; /* EOF */
        if (n < 0 && !use_sendfile_instead(errno)) {
            x.err = errno;
            x.call = PERCEUS_VIA_COPY_FILE_RANGE;
            return x;
        }
        /* Unsupported here, or 0 before any byte moved: files such as those of procfs
         * report size 0, so let sendfile tell EOF apart from "cannot". */
        sendfile_loop(&x, out_fd, in_fd, &offset, count);
        return x;
    }
    return x;
}

int perceus_finit_module(int fd, const char *params, int flags)
{
#ifdef SYS_finit_module
    return syscall(SYS_finit_module, fd, params, flags) == 0 ? 0 : errno;
#else
    (void)fd, (void)params, (void)flags;
    return ENOSYS;
#endif
}

int perceus_kexec_file_load(int kernel_fd, int initrd_fd, const char *cmdline, unsigned long flags)
{
#ifdef SYS_kexec_file_load
    unsigned long cmdline_len = (unsigned long)strlen(cmdline) + 1; /* the kernel wants the NUL */
    return syscall(SYS_kexec_file_load, kernel_fd, initrd_fd, cmdline_len, cmdline, flags) == 0 ? 0 : errno;
#else
    (void)kernel_fd, (void)initrd_fd, (void)cmdline, (void)flags;
    return ENOSYS;
#endif
}

int perceus_reboot(unsigned int magic1, unsigned int magic2, unsigned int cmd)
{
    return syscall(SYS_reboot, (int)magic1, (int)magic2, cmd, NULL) == 0 ? 0 : errno;
}
