"""pxelinux configurations: the default every node boots, and per-node overrides.

pxelinux asks TFTP for ``pxelinux.cfg/01-<mac>`` (lowercase, dashes) before falling back
to ``pxelinux.cfg/default``; a node's own file is how ``perceus node set boot`` sends it
to its local disk or explicitly to stage one. Per-node files start with a marker line
naming their choice, so ``perceus configure tftp`` can rewrite the ``perceus`` ones when
the master's address or the kernel arguments change.
"""

import os
import re
from pathlib import Path

from perceus.common.atomicfile import fsync_dir
from perceus.server.errors import InvalidRequest, PerceusError
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


def move_boot(tftp_root: Path, old_nodeid: str, new_nodeid: str) -> None:
    """A node's own boot choice follows it to new hardware (``node replace``)."""
    old, new = mac_file(tftp_root, old_nodeid), mac_file(tftp_root, new_nodeid)
    if node_choice(old) is not None:
        os.replace(old, new)
        fsync_dir(new.parent)
    elif node_choice(new) is not None:
        remove(new)  # the identity had the default: the new hardware gets it too
