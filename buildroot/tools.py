"""The build host's tools (objcopy, flashrom): bounded time, failures as one line."""

import subprocess
from collections.abc import Callable, Sequence

from perceus.buildroot.errors import ReasonError

__all__ = ["one_line", "run_tool", "squeezed"]


def squeezed(text: str) -> list[str]:
    """The non-blank lines, each with its runs of white space made one space."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def one_line(lines: list[str], limit: int = 300) -> str:
    """The last three lines joined, at most ``limit`` characters: a tool's complaint as one line."""
    text = "; ".join(lines[-3:]) or "no message"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_tool(
    command: Sequence[str],
    *,
    what: str,
    where: object,
    timeout: float,
    error: type[ReasonError],
    condense: Callable[[str], str] = lambda output: one_line(squeezed(output)),
) -> str:
    """Run ``command``; its stdout, or ``error("WHAT failed: ...", where)`` with its output condensed."""
    try:
        proc = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise error(f"{what} took more than {timeout:.0f} s", where) from None
    if proc.returncode != 0:
        raise error(f"{what} failed: {condense(proc.stderr + chr(10) + proc.stdout)}", where)
    return proc.stdout
