"""Put the stage-one payload (the UKI) on a node's flash chip with flashrom.

On an embedded board (guide 6.3) the firmware's flash holds the payload. flashrom writes
whole chips, so the payload is padded with 0xFF (the erased state of NOR flash) to the
chip's size first. flashrom verifies after writing; this module then reads the chip back
in a separate run and compares sha256 itself, so a programmer that lies about a write, or
a second writer on the same chip, is caught too.
"""

import hashlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from perceus.buildroot.errors import ReasonError
from perceus.buildroot.tools import one_line, run_tool, squeezed

__all__ = ["FlashError", "FlashResult", "chip_size", "write_flash"]

PROBE_TIMEOUT = 120.0  # probing a chip (or failing to find one) takes seconds
IO_TIMEOUT = 1800.0  # writing 16 MiB through a slow USB programmer takes minutes
_BLOCK = 1 << 20
_BOILERPLATE = re.compile(
    r"^(flashrom (v|unknown|is free)|Using clock_gettime|Please run \"flashrom --help\"|=+$|"
    r"This flash part has status|The test status of this chip|version of flashrom|"
    r"please email a report|work correctly for you|file for all operations|"
    r"which mainboard or programmer|Thanks for your help)",
    re.IGNORECASE,
)
_CHOICES = re.compile(r"\.?\s*Valid choices are:?$")  # the list it announces is not an error
_TROUBLE = re.compile(r"error|fail|unknown|invalid|no eeprom|not found|doesn't match|mismatch|denied", re.I)


class FlashError(ReasonError, RuntimeError):
    """flashrom failed or the chip does not hold what was written; ``str()`` is one line."""


@dataclass(frozen=True)
class FlashResult:
    """What was written and proved to be on the chip."""

    programmer: str
    chip_size: int
    payload_size: int
    sha256: str  # of the whole chip as read back: payload + 0xFF padding
    payload_sha256: str
    seconds: float


def condense(output: str, limit: int = 300) -> str:
    """flashrom's chatter reduced to the lines that say what went wrong, as one line."""
    lines = [_CHOICES.sub("", line) for line in squeezed(output) if not _BOILERPLATE.match(line)]
    trouble = [line for line in lines if _TROUBLE.search(line)]
    return one_line(trouble or lines, limit)


def _flashrom(programmer: str, chip: str | None, args: list[str], timeout: float, what: str) -> str:
    exe = shutil.which("flashrom")
    if exe is None:
        raise FlashError("flashrom not found: install the flashrom package", "PATH")
    command = [exe, "-p", programmer, *(["-c", chip] if chip else []), *args]
    return run_tool(
        command,
        what=f"flashrom {what}",
        where=programmer,
        timeout=timeout,
        error=FlashError,
        condense=condense,
    )


def chip_size(programmer: str, *, chip: str | None = None, timeout: float = PROBE_TIMEOUT) -> int:
    """The size in bytes of the chip ``programmer`` finds (``flashrom --flash-size``)."""
    out = _flashrom(programmer, chip, ["--flash-size"], timeout, "probe")
    last = next((line.strip() for line in reversed(out.splitlines()) if line.strip()), "")
    if not last.isdigit() or int(last) <= 0:
        raise FlashError(f"flashrom --flash-size printed no size: {condense(out)}", programmer)
    return int(last)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def write_flash(
    programmer: str,
    image: Path,
    *,
    chip: str | None = None,
    timeout: float = IO_TIMEOUT,
) -> FlashResult:
    """Write ``image`` padded with 0xFF to the whole chip, then read it back and compare.

    The chip's previous contents are replaced entirely: this is for a chip that holds the
    payload alone, as on boards whose firmware boots a payload from its own flash.
    """
    image = Path(image)
    started = time.monotonic()
    try:
        payload_size = os.stat(image).st_size
        with open(image, "rb") as f:
            payload = f.read()
    except OSError as exc:
        raise FlashError(exc.strerror or str(exc), image) from None
    if payload_size == 0 or len(payload) != payload_size:
        raise FlashError("the payload is empty or changed while being read", image)
    size = chip_size(programmer, chip=chip, timeout=min(timeout, PROBE_TIMEOUT))
    if payload_size > size:
        raise FlashError(
            f"the payload is {payload_size} bytes, larger than the {size}-byte chip",
            f"{image} on {programmer}",
        )
    padded = payload + b"\xff" * (size - payload_size)
    expected = hashlib.sha256(padded).hexdigest()
    with tempfile.TemporaryDirectory(prefix="perceus-flash.") as scratch:
        source = Path(scratch) / "payload.bin"
        source.write_bytes(padded)
        del padded
        _flashrom(programmer, chip, ["-w", str(source)], timeout, "write")
        back = Path(scratch) / "readback.bin"
        _flashrom(programmer, chip, ["-r", str(back)], timeout, "read-back")
        try:
            got_size = os.stat(back).st_size
        except FileNotFoundError:
            raise FlashError("flashrom -r wrote no file", programmer) from None
        got = _sha256_file(back)
    if got_size != size or got != expected:
        raise FlashError(
            f"the chip does not hold what was written (read back {got_size} bytes, sha256 {got[:16]}…, "
            f"expected {expected[:16]}…)",
            programmer,
        )
    return FlashResult(
        programmer=programmer,
        chip_size=size,
        payload_size=payload_size,
        sha256=got,
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        seconds=time.monotonic() - started,
    )
