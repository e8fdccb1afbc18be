"""pxelinux configurations: the default every node boots, and per-node overrides.

pxelinux asks TFTP for ``pxelinux.cfg/01-<mac>`` (lowercase, dashes) before falling back
to ``pxelinux.cfg/default``; a node's own file is how ``perceus node set boot`` sends it
to its local disk or explicitly to stage one. Per-node files start with a marker line
naming their choice, so ``perceus configure tftp`` can rewrite the ``perceus`` ones when
the master's address or the kernel arguments change.

``node delete`` and ``node replace`` commit the database first; the files then follow from
what it holds (:func:`sync_boot_files`), so a failure in between is mended by running it again.
"""

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from perceus.common.atomicfile import fsync_dir
from perceus.server.db import Database, Node
from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.macaddr import parse_mac
from perceus.server.netservices.files import install_text, remove

KERNEL = "perceus/vmlinuz"
INITRAMFS = "perceus/stage1.img"
# The serial console last: it becomes /dev/console, where stage one talks (cluster consoles are serial).
CONSOLE = "console=tty0 console=ttyS0,115200"
BOOT_CHOICES = ("local", "perceus", "default")
MARKER = "# perceus boot: "
_APPEND = re.compile(r"^[\x21-\x7e]+( [\x21-\x7e]+)*$")


def config_dir(tftp_root: Path) -> Path:
    return tftp_root / "pxelinux.cfg"


def mac_file(tftp_root: Path, nodeid: str) -> Path:
    """``pxelinux.cfg/01-aa-bb-cc-dd-ee-ff`` for MAC ``AA:BB:CC:DD:EE:FF``."""
    return config_dir(tftp_root) / ("01-" + nodeid.lower().replace(":", "-"))


def check_append(extra: str) -> str:
    """Extra kernel arguments: printable words separated by single spaces."""
    extra = " ".join(extra.split())
    if extra and (not _APPEND.match(extra) or len(extra) > 1024):
        raise InvalidRequest("--append takes printable kernel arguments on one line")
    return extra


def master_argument(address: str, port: int) -> str:
    """``masterip=`` for stage one; the port only when it is not perceusd's default."""
    return f"masterip={address}" if port == 987 else f"masterip={address}:{port}"


def perceus_label(master: str, extra: str = "") -> list[str]:
    """The stage-one entry: the kernel and initramfs ``configure tftp`` installed."""
    append = f"initrd={INITRAMFS} {master} {CONSOLE}" + (f" {extra}" if extra else "")
    return ["LABEL perceus", "  MENU LABEL Perceus stage one", f"  KERNEL {KERNEL}", f"  APPEND {append}"]


LOCAL_LABEL = ["LABEL local", "  MENU LABEL Boot from the local disk", "  LOCALBOOT 0"]


def render_default(master: str, extra: str = "") -> str:
    lines = [
        "# Written by 'perceus configure tftp'; rewritten each time it runs.",
        "# A node's own pxelinux.cfg/01-<mac> file ('perceus node set boot') comes first.",
        "DEFAULT perceus",
        "PROMPT 0",
        "TIMEOUT 0",
        "",
        *perceus_label(master, extra),
        "",
        *LOCAL_LABEL,
    ]
    return "\n".join(lines) + "\n"


def default_perceus_label(tftp_root: Path) -> list[str]:
    """The ``perceus`` entry of the installed default file, as a per-node file repeats it."""
    path = config_dir(tftp_root) / "default"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise PerceusError("the TFTP tree is not set up: run 'perceus configure tftp'", str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PerceusError(f"cannot read the pxelinux default: {exc}", str(path)) from None
    label: list[str] = []
    for line in lines:
        if line.strip().upper().startswith("LABEL "):
            if label:
                break
            if line.split(None, 1)[1].strip() == "perceus":
                label.append(line)
        elif label and line.strip():
            label.append(line)
    if not label:
        raise PerceusError("no 'LABEL perceus' entry: run 'perceus configure tftp' again", str(path))
    return label


def render_node(choice: str, perceus_entry: list[str]) -> str:
    """A node's own file for ``local`` or ``perceus``."""
    if choice == "local":
        body = ["DEFAULT local", "PROMPT 0", "TIMEOUT 0", "", *LOCAL_LABEL]
    elif choice == "perceus":
        body = ["DEFAULT perceus", "PROMPT 0", "TIMEOUT 0", "", *perceus_entry]
    else:
        raise ValueError(choice)
    return "\n".join([f"{MARKER}{choice}", "# Written by 'perceus node set boot'.", *body]) + "\n"


def node_choice(path: Path) -> str | None:
    """The choice a per-node file records in its marker line, if it is one of ours."""
    try:
        with open(path) as handle:
            first = handle.readline().rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return None
    return first[len(MARKER) :] if first.startswith(MARKER) else None


def check_boot(choice: str) -> None:
    """A boot choice ``node set boot`` knows, else InvalidRequest."""
    if choice not in BOOT_CHOICES:
        raise InvalidRequest(f"boot takes local, perceus or default, not {choice!r}")


def set_boot(tftp_root: Path, nodeids: list[str], choice: str) -> int:
    """Write (or for ``default`` remove) the nodes' own files; how many nodes that was.

    Everything that can fail is checked before the first file is written.
    """
    check_boot(choice)
    if choice == "default":
        for nodeid in nodeids:
            remove(mac_file(tftp_root, nodeid))
        return len(nodeids)
    text = render_node(choice, default_perceus_label(tftp_root))
    for nodeid in nodeids:
        install_text(mac_file(tftp_root, nodeid), text)
    return len(nodeids)


def refresh_nodes(tftp_root: Path) -> int:
    """Rewrite every per-node ``perceus`` file from the current default; how many there were."""
    directory = config_dir(tftp_root)
    entry: list[str] | None = None
    count = 0
    for path in sorted(directory.glob("01-*")):
        if node_choice(path) != "perceus":
            continue
        entry = entry or default_perceus_label(tftp_root)
        install_text(path, render_node("perceus", entry))
        count += 1
    return count


# -- following the database ------------------------------------------------------------

# pxelinux.cfg/.replace-01-<new mac>.json: a node replace's boot choice until it has moved.
PENDING = ".replace-"


@dataclass(frozen=True)
class BootMove:
    """A node's own boot choice on its way to new hardware (``node replace``)."""

    old: str  # the MAC the identity leaves
    new: str  # the MAC it goes to
    hostname: str  # the identity: what the database holds at ``new`` once the replace committed
    created: int
    text: str | None  # the old MAC's own file (one of ours), None for the default

    def committed(self, nodes: Mapping[str, Node]) -> bool:
        there = nodes.get(self.new)
        if self.old in nodes or there is None:
            return False
        return (there.hostname, there.created) == (self.hostname, self.created)


def _own_text(path: Path) -> str | None:
    """The file, if it is one of ours (its first line is the marker)."""
    if node_choice(path) is None:
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PerceusError(f"cannot read it: {exc}", str(path)) from None


def _pending_file(tftp_root: Path, nodeid: str) -> Path:
    return config_dir(tftp_root) / f"{PENDING}{mac_file(tftp_root, nodeid).name}.json"


@contextmanager
def boot_follows(
    tftp_root: Path, db: Database, old: Node, new: Node, warn: Callable[[str], None]
) -> Iterator[None]:
    """Around ``node replace``'s transaction: OLD's own boot choice goes to NEW's MAC once it commits.

    The move is written down beside the per-node files before the transaction (dropped if
    it fails), so that if the files cannot follow right after the commit, the next
    :func:`sync_boot_files` still moves it.
    """
    move = BootMove(
        old.nodeid, new.nodeid, old.hostname, old.created, _own_text(mac_file(tftp_root, old.nodeid))
    )
    pending = _pending_file(tftp_root, new.nodeid)
    needed = move.text is not None or node_choice(mac_file(tftp_root, new.nodeid)) is not None
    if needed:
        install_text(pending, json.dumps(asdict(move)) + "\n")
    try:
        yield
    except BaseException:
        if needed:
            _warned(warn, remove, pending)  # if left, the next sync drops it: the replace did not commit
        raise
    if needed and _warned(warn, _apply, tftp_root, move):
        _warned(warn, remove, pending)
    sync_boot_files(tftp_root, db.nodes(), warn)


def _apply(tftp_root: Path, move: BootMove) -> None:
    target = mac_file(tftp_root, move.new)
    if move.text is not None:
        install_text(target, move.text)
    elif node_choice(target) is not None:
        remove(target)  # the identity had the default: the new hardware gets it too


def _warned(warn: Callable[[str], None], step: Callable[..., None], *args: object) -> bool:
    """Run one file step after a commit: a failure is a warning (the database is already the
    truth) and the next sync tries again."""
    try:
        step(*args)
    except (PerceusError, OSError) as exc:
        warn(f"perceus: warning: {exc}; the next node delete or replace tries again")
        return False
    return True


def sync_boot_files(
    tftp_root: Path, nodes: Iterable[Node], warn: Callable[[str], None], forgotten: Iterable[str] = ()
) -> None:
    """Make the per-node files follow the committed database; idempotent, so safe to rerun.

    A written-down replace moves its boot choice if the database shows it committed, else it
    is dropped; files of ours for MACs the database no longer has go, and so do the files
    of ``forgotten`` MACs, ours or not (the nodes a delete just removed).
    """
    directory = config_dir(tftp_root)
    if not directory.is_dir():
        return
    known = {node.nodeid: node for node in nodes}
    for pending in sorted(directory.glob(f"{PENDING}*")):
        try:
            move = BootMove(**json.loads(pending.read_text()))
        except (OSError, ValueError, TypeError):
            move = None  # unreadable: drop it, nothing can be known from it
        if move is None or not move.committed(known) or _warned(warn, _apply, tftp_root, move):
            _warned(warn, remove, pending)
    for nodeid in forgotten:
        if nodeid not in known:
            _warned(warn, remove, mac_file(tftp_root, nodeid))
    for path in sorted(directory.glob("01-*")):
        nodeid = parse_mac(path.name[3:])
        if nodeid is not None and nodeid not in known and node_choice(path) is not None:
            _warned(warn, remove, path)
    _warned(warn, fsync_dir, directory)  # the removals durable
