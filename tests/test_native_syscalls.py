"""perceus.native.sysio (cffi module perceus.native.syscalls) against pure-Python references.

Every data-moving call is cross-checked against ``reference_transfer`` (an os.pread /
os.write loop) on seeded random files, offsets and counts, into a regular file, a regular
file on another filesystem, a pipe and a socketpair, each drained by a thread while the
native call holds no GIL; then a non-blocking socket whose peer reads slowly, resumed
from the advanced offset. The boot-time syscalls are only ever driven into their error
paths: a kernel is never loaded, a module never inserted, the machine never rebooted.
"""

import ctypes
import errno
import os
import platform
import random
import select
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from perceus.native import sysio

KiB = 1 << 10
MiB = 1 << 20
HEADER = b"already-here:"  # written to regular-file destinations first: transfers append at the position
WAIT = 30  # seconds a helper thread or select() may wait before the test fails instead of hanging

Transfer = Callable[[int, int, int, int], int]  # (out_fd, in_fd, offset, count) -> bytes moved


def reference_transfer(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    """What every data-moving call must do, in plain Python: pread from offset, write it all, stop at EOF."""
    done = 0
    while done < count:
        block = os.pread(in_fd, min(count - done, 256 * KiB), offset + done)
        if not block:
            break
        view = memoryview(block)
        while view:
            view = view[os.write(out_fd, view) :]
        done += len(block)
    return done


def native_sendfile_all(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    return sysio.sendfile_all(out_fd, in_fd, offset, count)


def native_copy_range(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    return sysio.copy_range(in_fd, out_fd, offset, count)


NATIVE: dict[str, Transfer] = {"sendfile_all": native_sendfile_all, "copy_range": native_copy_range}


# --- seeded random cases -------------------------------------------------------------------------


def _random_cases(seed: int, n: int) -> list[tuple[int, int, int, int]]:
    """(data seed, file size, offset, count): sizes 0 .. 3 MiB, offsets and counts also past EOF."""
    rng = random.Random(seed)
    sizes = [(1, 4 * KiB), (4 * KiB, 256 * KiB), (256 * KiB, 1 * MiB), (1 * MiB, 3 * MiB + 1)]
    offsets = [
        lambda size: 0,
        lambda size: rng.randrange(size),  # inside the file
        lambda size: size,  # at EOF
        lambda size: size + rng.randrange(1, 64 * KiB),  # past EOF
    ]
    counts = [
        lambda rest: 0,
        lambda rest: rng.randrange(1, rest + 2),  # inside the file (or one byte over)
        lambda rest: rest,  # exactly to EOF
        lambda rest: rest + rng.randrange(1, 64 * KiB),  # past EOF
        lambda rest: 1 << 40,  # "everything"
    ]
    cases = [(rng.randrange(1 << 32), 0, offset, count) for offset, count in [(0, 0), (0, 100), (5, 9)]]
    for i in range(n - len(cases)):
        size = rng.randrange(*sizes[i % len(sizes)])
        offset = offsets[i // len(sizes) % len(offsets)](size)
        count = rng.choice(counts)(max(size - offset, 0))
        cases.append((rng.randrange(1 << 32), size, offset, count))
    return cases


CASES = _random_cases(seed=20240601, n=19)


def _case_id(case: tuple[int, int, int, int]) -> str:
    _, size, offset, count = case
    return f"size{size}-off{offset}-count{count}"


def make_source(directory: Path, seed: int, size: int) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(size)
    path = directory / f"source-{seed}-{size}"
    path.write_bytes(data)
    return path, data


def expected(data: bytes, offset: int, count: int) -> bytes:
    return data[offset : offset + count]


# --- destinations: each runs one transfer and returns (bytes moved, what the destination got) ----


Read = Callable[[int, int], bytes]  # (fd, max bytes) -> bytes, b"" at EOF


def _drain(fd: int, sink: bytearray, read: Read, wait_for: threading.Event | None = None) -> None:
    if wait_for is not None:
        wait_for.wait(WAIT)
    while block := read(fd, 64 * KiB):
        sink += block


@contextmanager
def _reader(fd: int, read: Read, wait_for: threading.Event | None = None) -> Iterator[bytearray]:
    """Drain fd on a thread (after wait_for, if given) into the yielded buffer; joined on exit."""
    sink = bytearray()
    thread = threading.Thread(target=_drain, args=(fd, sink, read, wait_for), daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        thread.join(WAIT)
        assert not thread.is_alive(), "reader thread did not finish"


def into_file(directory: Path, transfer: Transfer, in_fd: int, offset: int, count: int) -> tuple[int, bytes]:
    fd, name = tempfile.mkstemp(dir=directory)
    try:
        os.write(fd, HEADER)
        moved = transfer(fd, in_fd, offset, count)
        # the file position advances by the bytes moved
        assert os.lseek(fd, 0, os.SEEK_CUR) == len(HEADER) + moved
        got = os.pread(fd, len(HEADER) + moved + 1, 0)
        assert got.startswith(HEADER)
        return moved, got[len(HEADER) :]
    finally:
        os.close(fd)
        os.unlink(name)


def into_pipe(transfer: Transfer, in_fd: int, offset: int, count: int) -> tuple[int, bytes]:
    r, w = os.pipe()
    try:
        with _reader(r, os.read) as sink:
            try:
                moved = transfer(w, in_fd, offset, count)
            finally:
                os.close(w)
        return moved, bytes(sink)
    finally:
        os.close(r)


def into_socket(transfer: Transfer, in_fd: int, offset: int, count: int) -> tuple[int, bytes]:
    a, b = socket.socketpair()
    with a, b:
        with _reader(b.fileno(), lambda fd, n: b.recv(n)) as sink:
            try:
                moved = transfer(a.fileno(), in_fd, offset, count)
            finally:
                a.shutdown(socket.SHUT_WR)
        return moved, bytes(sink)


# tmpfs: another filesystem than the tests' tmp_path on these machines, so copy_file_range gives EXDEV.
OTHER_FILESYSTEM = Path("/dev/shm")


DESTINATIONS = ["file", "file-on-other-fs", "pipe", "socketpair"]


def deliver(
    kind: str, tmp_path: Path, transfer: Transfer, in_fd: int, offset: int, count: int
) -> tuple[int, bytes]:
    if kind == "file":
        return into_file(tmp_path, transfer, in_fd, offset, count)
    if kind == "file-on-other-fs":
        return into_file(OTHER_FILESYSTEM, transfer, in_fd, offset, count)
    if kind == "pipe":
        return into_pipe(transfer, in_fd, offset, count)
    assert kind == "socketpair"
    return into_socket(transfer, in_fd, offset, count)


# --- cross-checks --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("kind", DESTINATIONS)
@pytest.mark.parametrize("name", sorted(NATIVE))
def test_matches_reference(tmp_path: Path, name: str, kind: str, case: tuple[int, int, int, int]) -> None:
    seed, size, offset, count = case
    path, data = make_source(tmp_path, seed, size)
    in_fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(in_fd, 7, os.SEEK_SET)
        ref_moved, ref_got = deliver(kind, tmp_path, reference_transfer, in_fd, offset, count)
        moved, got = deliver(kind, tmp_path, NATIVE[name], in_fd, offset, count)
        assert os.lseek(in_fd, 0, os.SEEK_CUR) == 7, "the source's file position must not move"
    finally:
        os.close(in_fd)
    assert ref_got == expected(data, offset, count)  # the reference itself is right
    assert (moved, len(got)) == (ref_moved, len(ref_got))
    assert got == ref_got


def test_copy_range_uses_copy_file_range_within_a_filesystem_and_sendfile_otherwise(tmp_path: Path) -> None:
    path, data = make_source(tmp_path, seed=7, size=1 * MiB + 123)
    in_fd = os.open(path, os.O_RDONLY)
    out_fd = os.open(tmp_path / "assembled", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        assert sysio._copy_range(in_fd, out_fd, 100, 600 * KiB) == (600 * KiB, sysio.VIA_COPY_FILE_RANGE)
        assert sysio._copy_range(in_fd, out_fd, 100 + 600 * KiB, 1 << 30) == (
            len(data) - 100 - 600 * KiB,
            sysio.VIA_COPY_FILE_RANGE,
        )
    finally:
        os.close(out_fd)
        os.close(in_fd)
    assert (tmp_path / "assembled").read_bytes() == data[100:]

    in_fd = os.open(path, os.O_RDONLY)
    try:
        seen: list[int] = []

        def via_pipe(out_fd: int, in_fd: int, offset: int, count: int) -> int:
            moved, via = sysio._copy_range(in_fd, out_fd, offset, count)
            seen.append(via)
            return moved

        assert into_pipe(via_pipe, in_fd, 0, len(data)) == (len(data), data)
        assert seen == [sysio.VIA_SENDFILE]  # EINVAL from copy_file_range into a pipe, then sendfile
    finally:
        os.close(in_fd)


def test_copy_range_reads_files_that_report_size_zero(tmp_path: Path) -> None:
    """procfs files say st_size 0, so copy_file_range(2) copies nothing: sendfile must take over."""
    in_fd = os.open("/proc/version", os.O_RDONLY)
    try:
        assert os.fstat(in_fd).st_size == 0
        ref_moved, ref_got = into_file(tmp_path, reference_transfer, in_fd, 0, 1 << 20)
        seen: list[int] = []

        def copy(out_fd: int, in_fd: int, offset: int, count: int) -> int:
            moved, via = sysio._copy_range(in_fd, out_fd, offset, count)
            seen.append(via)
            return moved

        assert into_file(tmp_path, copy, in_fd, 0, 1 << 20) == (ref_moved, ref_got)
    finally:
        os.close(in_fd)
    assert ref_got.startswith(b"Linux version")
    assert seen == [sysio.VIA_SENDFILE]


# --- non-blocking sockets: partial returns, BlockingIOError, resume -------------------------------


def _socket_pair(family: str) -> tuple[socket.socket, socket.socket]:
    if family == "unix":
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
    return sender, receiver


NONBLOCKING_CASES = [
    # (data seed, size, offset, count): a whole file, a slice, one running past EOF
    (11, 2 * MiB + 17, 0, 2 * MiB + 17),
    (12, 3 * MiB, 12345, 1 * MiB + 999),
    (13, 1 * MiB + 4321, 555, 1 << 40),
]


@pytest.mark.parametrize("case", NONBLOCKING_CASES, ids=_case_id)
@pytest.mark.parametrize("family", ["unix", "tcp"])
@pytest.mark.parametrize("name", sorted(NATIVE))
def test_nonblocking_socket_partial_returns_resume_exactly(
    tmp_path: Path, name: str, family: str, case: tuple[int, int, int, int]
) -> None:
    seed, size, offset, count = case
    path, data = make_source(tmp_path, seed, size)
    transfer = NATIVE[name]
    in_fd = os.open(path, os.O_RDONLY)
    try:
        ref_moved, ref_got = into_file(tmp_path, reference_transfer, in_fd, offset, count)

        sender, receiver = _socket_pair(family)
        with sender, receiver:
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * KiB)
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
            sender.setblocking(False)
            first_call_returned = threading.Event()

            def slow_recv(fd: int, n: int) -> bytes:
                time.sleep(0.0002)  # a slow peer: small reads with pauses
                return receiver.recv(min(n, 8 * KiB))

            moved = short_returns = would_block = 0
            with _reader(receiver.fileno(), slow_recv, wait_for=first_call_returned) as sink:
                try:
                    position, left = offset, count
                    while left:
                        try:
                            n = transfer(sender.fileno(), in_fd, position, left)
                        except BlockingIOError:
                            would_block += 1
                            first_call_returned.set()
                            _, writable, _ = select.select([], [sender], [], WAIT)
                            assert writable, "the socket never became writable again"
                            continue
                        first_call_returned.set()
                        if n == 0:
                            break  # EOF: only 0 means that
                        short_returns += n < left
                        position, left, moved = position + n, left - n, moved + n
                finally:
                    first_call_returned.set()
                    sender.shutdown(socket.SHUT_WR)
    finally:
        os.close(in_fd)
    # The peer did not read at all until the first call returned, and the payload is far
    # bigger than the socket buffers: the first call must have stopped short.
    # (BlockingIOError usually shows up too, but when is up to the scheduler: it is
    # asserted deterministically in test_blockingioerror_when_nothing_fits.)
    assert short_returns >= 1
    assert moved == ref_moved
    assert bytes(sink) == ref_got == expected(data, offset, count)


def test_blockingioerror_when_nothing_fits(tmp_path: Path) -> None:
    path, _ = make_source(tmp_path, seed=3, size=256 * KiB)
    a, b = socket.socketpair()
    in_fd = os.open(path, os.O_RDONLY)
    try:
        with a, b:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * KiB)
            a.setblocking(False)
            filled = sysio.sendfile_all(a.fileno(), in_fd, 0, 256 * KiB)
            assert 0 < filled < 256 * KiB
            with pytest.raises(BlockingIOError) as err:
                sysio.sendfile_all(a.fileno(), in_fd, filled, 256 * KiB - filled)
            assert err.value.errno == errno.EAGAIN
            assert "sendfile_all" in str(err.value)
    finally:
        os.close(in_fd)


# --- EINTR: retried, but only after Python's signal handlers ran ---------------------------------


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_eintr_is_retried_after_signal_handlers_run(tmp_path: Path, name: str) -> None:
    """The pipe stays full until the main thread, blocked in the native call, has taken
    SIGALRM three times: each EINTR must come back to Python, run the handler, and resume."""
    path, data = make_source(tmp_path, seed=5, size=1 * MiB + 5)
    handled = threading.Event()
    count = 0

    def on_alarm(signum: int, frame: object) -> None:
        nonlocal count
        count += 1
        if count >= 3:
            handled.set()

    def drain_after_signals(fd: int, n: int) -> bytes:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # the main thread must take them
        return os.read(fd, n)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    in_fd = os.open(path, os.O_RDONLY)
    r, w = os.pipe()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
        with _reader(r, drain_after_signals, wait_for=handled) as sink:
            try:
                moved = NATIVE[name](w, in_fd, 0, len(data))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0, 0)
                os.close(w)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
        os.close(r)
        os.close(in_fd)
    assert count >= 3
    assert moved == len(data)
    assert bytes(sink) == data


def test_exception_from_signal_handler_interrupts_transfer(tmp_path: Path) -> None:
    """A handler that raises (Ctrl-C) stops a transfer blocked on a peer that never reads."""
    path, _ = make_source(tmp_path, seed=9, size=1 * MiB)

    class Stop(Exception):
        pass

    def on_alarm(signum: int, frame: object) -> None:
        raise Stop

    previous = signal.signal(signal.SIGALRM, on_alarm)
    in_fd = os.open(path, os.O_RDONLY)
    r, w = os.pipe()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Stop):
            sysio.sendfile_all(w, in_fd, 0, 1 * MiB)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
        for fd in (r, w, in_fd):
            os.close(fd)


# --- error paths ---------------------------------------------------------------------------------


def _closed_fd() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


@pytest.mark.parametrize("name", sorted(NATIVE))
@pytest.mark.parametrize("bad", ["source", "destination"])
def test_bad_fd_is_ebadf_naming_the_call(tmp_path: Path, name: str, bad: str) -> None:
    path, _ = make_source(tmp_path, seed=1, size=1000)
    good_in = os.open(path, os.O_RDONLY)
    good_out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    try:
        for fd in (-1, _closed_fd()):
            in_fd, out_fd = (fd, good_out) if bad == "source" else (good_in, fd)
            with pytest.raises(OSError) as err:
                NATIVE[name](out_fd, in_fd, 0, 1000)
            assert err.value.errno == errno.EBADF
            assert name in str(err.value)
    finally:
        os.close(good_in)
        os.close(good_out)


@pytest.mark.parametrize("name", sorted(NATIVE))
@pytest.mark.parametrize(("offset", "count"), [(-1, 10), (0, -1), (1 << 63, 1), (0, 1 << 63)])
def test_out_of_range_offset_or_count_is_valueerror(name: str, offset: int, count: int) -> None:
    with pytest.raises(ValueError, match=name):
        NATIVE[name](1, 0, offset, count)


# The kernel's own answer, asked through libc's syscall(2) with the same arguments: the
# reference for the boot-time calls. These machines' kernel has neither CONFIG_MODULES nor
# CONFIG_KEXEC_FILE (ENOSYS); Debian's kernel as root answers as documented below.
_SYSCALL_NUMBERS = {
    "x86_64": {"finit_module": 313, "kexec_file_load": 320},
    "aarch64": {"finit_module": 273, "kexec_file_load": 294},
}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def kernel_errno(call: str, *args: int | bytes) -> int:
    number = _SYSCALL_NUMBERS[platform.machine()][call]
    ctypes.set_errno(0)
    assert _libc.syscall(ctypes.c_long(number), *args) == -1
    return ctypes.get_errno()


# finit_module on a file that is not a module: ENOEXEC (not ELF), EINVAL (too short to be
# one), EPERM (no CAP_SYS_MODULE, lockdown, modules_disabled), EKEYREJECTED (signatures
# enforced), ENOSYS (kernel without CONFIG_MODULES).
FINIT_MODULE_ERRNOS = {errno.ENOEXEC, errno.EINVAL, errno.EPERM, errno.EKEYREJECTED, errno.ENOSYS}
# Bad fds: EBADF, unless the call is refused first: EPERM (no capability) or ENOSYS.
BAD_FD_ERRNOS = {errno.EBADF, errno.EPERM, errno.ENOSYS}


def test_finit_module_refuses_a_regular_file(tmp_path: Path) -> None:
    not_elf = tmp_path / "not-a-module.ko"
    not_elf.write_bytes(b"this is not an ELF object\n" * 40)
    fd = os.open(not_elf, os.O_RDONLY)
    try:
        kernel = kernel_errno("finit_module", ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_int(0))
        with pytest.raises(OSError) as err:
            sysio.finit_module(fd)
    finally:
        os.close(fd)
    assert err.value.errno in FINIT_MODULE_ERRNOS
    assert err.value.errno == kernel
    assert "finit_module" in str(err.value)


def test_finit_module_bad_fd() -> None:
    kernel = kernel_errno("finit_module", ctypes.c_int(-1), ctypes.c_char_p(b"debug=1"), ctypes.c_int(0))
    with pytest.raises(OSError) as err:
        sysio.finit_module(-1, "debug=1")
    assert err.value.errno in BAD_FD_ERRNOS
    assert err.value.errno == kernel
    assert "finit_module" in str(err.value)


@pytest.mark.parametrize("flags", [0, sysio.KEXEC_FILE_NO_INITRAMFS])
def test_kexec_file_load_bad_fds(flags: int) -> None:
    # Never a valid kernel fd, never KEXEC_FILE_UNLOAD: nothing may be staged or dropped here.
    cmdline = b"console=ttyS0 perceus=test"
    kernel = kernel_errno(
        "kexec_file_load",
        ctypes.c_int(-1),
        ctypes.c_int(-1),
        ctypes.c_ulong(len(cmdline) + 1),
        ctypes.c_char_p(cmdline),
        ctypes.c_ulong(flags),
    )
    with pytest.raises(OSError) as err:
        sysio.kexec_file_load(-1, -1, cmdline.decode(), flags)
    assert err.value.errno in BAD_FD_ERRNOS
    assert err.value.errno == kernel
    assert "kexec_file_load" in str(err.value)


@pytest.mark.parametrize(
    ("call", "args"),
    [(sysio.finit_module, (-1, "a=1\0b=2")), (sysio.kexec_file_load, (-1, -1, "root=/dev/ram0\0init=/x"))],
)
def test_embedded_nul_is_valueerror(call: Callable[..., None], args: tuple) -> None:
    with pytest.raises(ValueError, match="NUL"):
        call(*args)


def test_reboot_rejects_unknown_commands_before_any_syscall() -> None:
    for cmd in (0, 0x0BADC0DE, 0x89ABCDEF, 0xCDEF0123, -1):  # 0 and 0x89ABCDEF are CAD_OFF/CAD_ON
        with pytest.raises(ValueError, match="reboot"):
            sysio.reboot(cmd)


def test_reboot_error_path_with_wrong_magic() -> None:
    # The kernel checks CAP_SYS_BOOT (EPERM) and then the magic numbers (EINVAL) before it
    # even looks at the command; both magics and the command are wrong here.
    with pytest.raises(OSError) as err:
        sysio._reboot(0x12345678, 0, 0x0BADC0DE)
    assert err.value.errno in {errno.EINVAL, errno.EPERM}
    assert "reboot" in str(err.value)


def test_constants_match_the_uapi_headers() -> None:
    assert (sysio.KEXEC_FILE_UNLOAD, sysio.KEXEC_FILE_ON_CRASH, sysio.KEXEC_FILE_NO_INITRAMFS) == (1, 2, 4)
    assert sysio.LINUX_REBOOT_CMD_KEXEC == 0x45584543
    assert sysio.LINUX_REBOOT_CMD_RESTART == 0x01234567
    assert sysio.LINUX_REBOOT_CMD_POWER_OFF == 0x4321FEDC
    assert (
        sysio.MODULE_INIT_IGNORE_MODVERSIONS,
        sysio.MODULE_INIT_IGNORE_VERMAGIC,
        sysio.MODULE_INIT_COMPRESSED_FILE,
    ) == (1, 2, 4)
