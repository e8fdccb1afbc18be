"""``perceus vnfs configure``: the root password, console and master address of a VNFS.

What the original's per-capsule ``configure`` script asked at import, as functions the
CLI calls with prompted or flag values. Two files are touched: the tree's ``etc/shadow``
and the VNFS ``config`` file, the shell-style ``KEY="value"`` file the guide calls
self-documenting (4.3.5). ``KEY = "value"`` (spaces around ``=``, as the capsule writer
puts them) is read too and kept in that style on rewrite. Every rewrite goes beside the
file and is renamed into place, keeping the file's mode and owner, so an interrupted
configure leaves the old file.

Passwords are hashed with ``openssl passwd -6`` (SHA-512 crypt, what Debian and RHEL
nodes read), the password fed on stdin so it never shows in a process listing. Python's
``crypt`` module is deprecated and gone in 3.13; openssl is on every master already.
"""

import ipaddress
import os
import re
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from perceus.common import shellvars
from perceus.common.atomicfile import atomic_write
from perceus.common.shellvars import ShellVarsError
from perceus.server.errors import InvalidRequest, PerceusError

MAX_FILE_BYTES = 1 << 20
MAX_PASSWORD = 1024
SERIAL_DEFAULT_SPEED = "115200"  # what the original configure added to a bare ttyS console

_CONSOLE = re.compile(r"[A-Za-z][A-Za-z0-9_./-]{0,31}(,[A-Za-z0-9]{1,16})?")
_HASH = re.compile(r"\$[0-9a-z]{1,4}\$[./0-9A-Za-z$=,+-]{1,512}")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


# --- files kept whole: written beside, renamed into place, mode and owner preserved ---


def _read_text(path: Path, what: str) -> tuple[str, os.stat_result]:
    """A regular file's text (never through a symlink), bounded in size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise PerceusError(f"{what} not found", str(path)) from exc
    except OSError as exc:
        raise PerceusError(f"cannot read {what}: {exc.strerror}", str(path)) from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PerceusError(f"{what} is not a regular file", str(path))
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise PerceusError(f"{what} is larger than {MAX_FILE_BYTES} bytes", str(path))
    try:
        return data.decode(), info
    except UnicodeDecodeError as exc:
        raise PerceusError(f"{what} is not UTF-8 text", str(path)) from exc


# --- the VNFS config file: KEY="value" lines, comments kept (common.shellvars) ---


def read_config(path: Path) -> dict[str, str]:
    """The VNFS config file's keys and values (the last assignment of a key wins)."""
    text, _ = _read_text(Path(path), "VNFS config")
    try:
        return shellvars.parse(text, str(path))
    except ShellVarsError as exc:
        raise PerceusError(exc.reason, exc.path) from None


def write_config(path: Path, values: Mapping[str, str]) -> None:
    """Set ``values`` in the config file; comments, order and other keys stay as they are.

    Each assignment of a given key gets the new value, double-quoted (its spacing around
    ``=`` and a trailing comment kept); keys not in the file yet are appended in the
    file's style. A missing file is created (0644). A key or value that cannot be
    written is the caller's mistake; a malformed file is refused, not rewritten.
    """
    path = Path(path)
    for key, value in values.items():
        try:
            shellvars.check_value(key, value, str(path))
        except ShellVarsError as exc:
            raise InvalidRequest(exc.reason, exc.path) from None
    try:
        text, info = _read_text(path, "VNFS config")
    except PerceusError:
        if os.path.lexists(path):
            raise
        text, info = "", None
    try:
        updated = shellvars.update(text, values, str(path))
    except ShellVarsError as exc:
        raise PerceusError(exc.reason, exc.path) from None
    atomic_write(path, updated, like=info)


def set_console(config_path: Path, console: str) -> str:
    """Make ``console=<console>`` the console argument in KERNEL_ARGS; returns the value set.

    Every existing ``console=`` argument is replaced by the one given (at the first's
    position, else at the end). A serial console without a speed (``ttyS1``) gets
    ``,115200``, as the original configure did.
    """
    if not _CONSOLE.fullmatch(console or ""):
        raise InvalidRequest(
            f"not a console device such as tty0 or ttyS0,115200: {console!r}", str(config_path)
        )
    if console.startswith("ttyS") and "," not in console:
        console = f"{console},{SERIAL_DEFAULT_SPEED}"
    args = read_config(config_path).get("KERNEL_ARGS", "").split()
    wanted = f"console={console}"
    updated: list[str] = []
    for arg in args:
        if arg.startswith("console="):
            if wanted not in updated:
                updated.append(wanted)
        else:
            updated.append(arg)
    if wanted not in updated:
        updated.append(wanted)
    write_config(config_path, {"KERNEL_ARGS": " ".join(updated)})
    return console


def _check_address(address: str, where: str) -> None:
    try:
        ipaddress.ip_address(address)
        return
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(address or ""):
        raise InvalidRequest(f"not an IP address or host name: {address!r}", where)


def set_master(config_path: Path, address: str) -> None:
    """Name the master in the config file: ``MASTER``, plus ``MASTERIP`` and a
    ``masterip=`` kernel argument where the file already has them (the original's names)."""
    _check_address(address, str(config_path))
    current = read_config(config_path)
    updates = {"MASTER": address}
    if "MASTERIP" in current:
        updates["MASTERIP"] = address
    if "KERNEL_ARGS" in current:
        args = current["KERNEL_ARGS"].split()
        if any(arg.startswith("masterip=") for arg in args):
            args = [f"masterip={address}" if arg.startswith("masterip=") else arg for arg in args]
            updates["KERNEL_ARGS"] = " ".join(args)
    write_config(config_path, updates)


# --- the root password in the tree's etc/shadow ---


def hash_password(password: str) -> str:
    """SHA-512 crypt of ``password`` with a random salt (``openssl passwd -6``)."""
    if not password or len(password) > MAX_PASSWORD or any(ch in password for ch in "\n\r\0"):
        raise InvalidRequest(f"a password is 1 to {MAX_PASSWORD} characters on one line", "root password")
    try:
        proc = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PerceusError(f"cannot run openssl to hash the password: {exc}", "root password") from exc
    hashed = proc.stdout.strip()
    if proc.returncode != 0 or not re.fullmatch(r"\$6\$[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}", hashed):
        raise PerceusError(f"openssl passwd failed: {proc.stderr.strip()[:200]}", "root password")
    return hashed


def _days_since_epoch() -> int:
    return int(time.time() // 86400)


def set_root_password(
    root: Path, password: str | None, *, hashed: str | None = None, lock: bool = False
) -> None:
    """Set root's password in the tree's ``etc/shadow`` (the line is added if missing).

    ``password`` is hashed; ``hashed`` is a ready crypt string used as is. With ``lock``
    the password field gets a leading ``!`` (the hash, if any, kept behind it, as
    ``usermod -L`` does), so root cannot log in with a password; an empty password is
    refused otherwise. The last-change day is set to today, as ``passwd`` does.
    """
    if hashed is not None:
        if not _HASH.fullmatch(hashed):
            raise InvalidRequest("not a crypt hash such as $6$salt$...", "root password")
        field: str | None = hashed
    elif password:
        field = hash_password(password)
    elif lock:
        field = None  # lock whatever is there
    else:
        raise InvalidRequest("refusing an empty root password (give one, or lock root)", "root password")
    etc = Path(root) / "etc"
    if etc.is_symlink() or not etc.is_dir():
        raise PerceusError("etc is not a directory in the VNFS", str(etc))
    shadow = etc / "shadow"
    text, info = _read_text(shadow, "shadow file")
    lines = text.splitlines()
    at = [index for index, line in enumerate(lines) if line.split(":", 1)[0] == "root"]
    if len(at) > 1:
        raise PerceusError(
            f"root appears {len(at)} times (lines {', '.join(str(i + 1) for i in at)})", str(shadow)
        )
    today = str(_days_since_epoch())
    if at:
        fields = lines[at[0]].split(":")
        if len(fields) != 9:
            raise PerceusError(
                f"malformed shadow entry for root: {len(fields)} fields, expected 9", f"{shadow}:{at[0] + 1}"
            )
        current = fields[1]
    else:
        fields = ["root", "", today, "0", "99999", "7", "", "", ""]
        current = ""
    new = field if field is not None else current
    if lock and not new.startswith("!"):
        new = "!" + (new if _HASH.fullmatch(new) else "")
    fields[1] = new
    fields[2] = today
    entry = ":".join(fields)
    if at:
        lines[at[0]] = entry
    else:
        lines.insert(0, entry)
    atomic_write(shadow, "\n".join(lines) + "\n", like=info)
