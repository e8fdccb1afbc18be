"""Running the nodescript the master sent: /bin/sh, a time bound, the output tail, a request word.

The environment follows the shared contract: DESTDIR, PERCEUS_MODE, PERCEUS_REQUEST (an
empty file the script may write one word into) and PERCEUS_PROC, on top of the node's own
environment. Scripts never reboot the machine themselves; they ask through the request file.
"""

import asyncio
import contextlib
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from perceus.stage1.protocol import MAX_OUTPUT_TAIL

__all__ = ["DEFAULT_SCRIPT_TIMEOUT", "REQUESTS", "ScriptEnv", "ScriptRun", "run_script"]

DEFAULT_SCRIPT_TIMEOUT = 600.0
REQUESTS = frozenset({"reprovision", "reboot", "halt"})
_EOF_GRACE = 2.0  # seconds to wait for the output pipe to close after the shell exits
_SHELL = "/bin/sh"


@dataclass(frozen=True)
class ScriptEnv:
    """Where the script's effects go in this mode."""

    mode: str  # initramfs | provisiond | simulate
    destdir: str  # "" in provisiond: the live root
    proc: str = "/proc"
    extra: tuple[tuple[str, str], ...] = ()  # more variables, e.g. for tests


@dataclass(frozen=True)
class ScriptRun:
    """What happened: exit status (-N: killed by signal N), output tail, the word asked for."""

    status: int
    tail: bytes
    request: str = ""  # "" or one of REQUESTS
    bad_request: str = ""  # what the script wrote if it was not a known word


def _read_request(path: Path) -> tuple[str, str]:
    try:
        with open(path, "rb") as f:
            raw = f.read(256)
    except OSError:
        return "", ""
    words = raw.decode("utf-8", "replace").split()
    if not words:
        return "", ""
    word = words[0].lower()
    return (word, "") if word in REQUESTS else ("", words[0][:64])


async def _drain(stream: asyncio.StreamReader, tail: bytearray) -> None:
    while piece := await stream.read(65536):
        tail += piece
        if len(tail) > 2 * MAX_OUTPUT_TAIL:
            del tail[: len(tail) - MAX_OUTPUT_TAIL]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_script(body: bytes, env: ScriptEnv, timeout: float = DEFAULT_SCRIPT_TIMEOUT) -> ScriptRun:
    """Run ``body`` with ``sh FILE`` (stdin /dev/null, stdout+stderr captured) and clean up after it.

    After ``timeout`` seconds the whole process group is killed and the status is -9.
    """
    with tempfile.TemporaryDirectory(prefix="perceus-script-") as tmp:
        script = Path(tmp) / "nodescript"
        request = Path(tmp) / "request"
        script.write_bytes(body)
        request.write_bytes(b"")
        environ = dict(os.environ)
        environ.update(
            DESTDIR=env.destdir,
            PERCEUS_MODE=env.mode,
            PERCEUS_REQUEST=str(request),
            PERCEUS_PROC=env.proc,
        )
        environ.update(dict(env.extra))
        proc = await asyncio.create_subprocess_exec(
            _SHELL,
            str(script),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=environ,
            cwd=tmp,
            start_new_session=True,
        )
        assert proc.stdout is not None
        tail = bytearray()
        reader = asyncio.ensure_future(_drain(proc.stdout, tail))
        killed = False
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            killed = True
            _kill_group(proc.pid)
            await proc.wait()
        except BaseException:  # cancelled: leave nothing running
            _kill_group(proc.pid)
            reader.cancel()
            raise
        try:
            await asyncio.wait_for(asyncio.shield(reader), _EOF_GRACE)
        except TimeoutError:
            _kill_group(proc.pid)  # a background child still holds the output pipe
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        status = -signal.SIGKILL if killed else proc.returncode
        word, bad = _read_request(request)
        return ScriptRun(int(status), bytes(tail[-MAX_OUTPUT_TAIL:]), word, bad)
