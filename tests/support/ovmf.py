"""Boot an EFI program (a UKI) under QEMU's OVMF firmware, as an embedded node's flash would.

OVMF's code is read-only pflash, its variable store a private copy (the firmware writes
boot entries there), and the UKI sits as the removable-media default
``EFI/BOOT/BOOTX64.EFI`` on a FAT drive QEMU makes from a directory: the firmware finds
and starts it with no boot entry configured. Software emulation only (KVM hangs here).
The serial console goes to a log file the test polls; QEMU is always killed afterwards.

Usage::

    with boot_uki(uki, tmp_path / "serial.log") as vm:
        seconds = vm.wait_for("MARKER", timeout=180)

``extra_qemu_args`` adds devices, e.g. a NIC on a tap device for an end-to-end test
(``-net none`` only drops QEMU's default NIC, explicit ``-device`` NICs still appear).
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


class Boot:
    """A running QEMU: its serial log, and a bounded wait for a line in it."""

    def __init__(self, proc: subprocess.Popen, log: Path, scratch: tempfile.TemporaryDirectory) -> None:
        self.proc = proc
        self.log = log
        self.started = time.monotonic()
        self._scratch = scratch

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, marker: str, timeout: float = 180.0) -> float:
        """Seconds from QEMU's start until ``marker`` is in the log; AssertionError if never.

        Stops waiting early when QEMU exits without having printed it (a panic with
        ``-no-reboot``, a firmware that found nothing to boot).
        """
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None  # read the log after: its last words count
            if marker in self.text():
                return time.monotonic() - self.started
            if exited or time.monotonic() > deadline:
                why = f"QEMU exited with {self.proc.returncode}" if exited else f"not within {timeout:.0f} s"
                raise AssertionError(
                    f"{marker!r} never appeared ({why}); serial log ends:\n{self.text()[-3000:]}"
                )
            time.sleep(0.25)

    def wait_exit(self, timeout: float = 60.0) -> int:
        """QEMU's exit status once the guest powered off (``-no-reboot`` turns a reset into an exit)."""
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Kill QEMU (its own process group, so nothing it started outlives the test)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        finally:
            self._scratch.cleanup()

    def __enter__(self) -> "Boot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def boot_uki(
    uki: Path,
    log: Path,
    extra_qemu_args: Sequence[str] = (),
    *,
    memory_mb: int = 512,
    qemu: str = "qemu-system-x86_64",
) -> Boot:
    """Start QEMU booting ``uki`` under OVMF with its serial console written to ``log``.

    Returns at once; wait with :meth:`Boot.wait_for` and always :meth:`Boot.stop` (or use
    the handle as a context manager). QEMU's own messages go to ``log`` + ``.qemu``.
    """
    log = Path(log)
    scratch = tempfile.TemporaryDirectory(prefix="ovmf.", dir=log.parent)
    try:
        root = Path(scratch.name)
        boot = root / "esp" / "EFI" / "BOOT"
        boot.mkdir(parents=True)
        shutil.copyfile(uki, boot / "BOOTX64.EFI")
        variables = root / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, variables)
        args = [
            qemu, "-accel", "tcg", "-cpu", "max", "-m", str(memory_mb), "-machine", "q35",
            "-nographic", "-monitor", "none", "-serial", f"file:{log}",
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={variables}",
            "-drive", f"format=raw,file=fat:rw:{root / 'esp'}",
            "-net", "none", "-no-reboot", *extra_qemu_args,
        ]  # fmt: skip
        with open(f"{log}.qemu", "wb") as messages:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=messages,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except BaseException:
        scratch.cleanup()
        raise
    return Boot(proc, log, scratch)
