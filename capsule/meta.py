"""What a capsule says about its tree: names, architecture, kernel, OS, and the VNFS files.

Everything read from a root tree is read the way the node will see it: symbolic links
resolve inside the tree (``/sbin/init -> /lib/systemd/systemd`` means the tree's
systemd, never the master's), and nothing outside the tree is ever opened.
"""

import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from perceus.capsule.format import CapsuleError, MetaError, open_regular
from perceus.capsule.names import (
    ARCHES,
    KINDS,
    NAME_RE,
    REVISION_RE,
    STATES,
    SUFFIXES,
    VERSION_RE,
    capsule_basename,
)
from perceus.common import shellvars
from perceus.imagefmt.tree import resolve_in_root


@dataclass(frozen=True)
class Meta:
    """What the packer is told; ``arch`` and ``os`` of None are read from the tree."""

    name: str
    version: str
    revision: str = "1"
    state: str | None = "stateless"
    arch: str | None = None
    os: str | None = None
    kernel_args: str = ""
    kind: str = "vnfs"

    def check(self) -> None:
        """Refuse metadata that would not survive the round trip through a file name."""
        if self.kind not in KINDS:
            raise MetaError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        for what, value, pattern in (
            ("name", self.name, NAME_RE),
            ("version", self.version, VERSION_RE),
            ("revision", self.revision, REVISION_RE),
        ):
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise MetaError(f"{what} {value!r} is not allowed: use letters, digits and {_allowed(what)}")
        if self.kind == "vnfs" and self.state not in STATES:
            raise MetaError(f"state must be one of {', '.join(STATES)}, not {self.state!r}")
        if self.kind == "module" and self.state not in (None, *STATES):
            raise MetaError(f"state must be one of {', '.join(STATES)} or none, not {self.state!r}")
        if self.arch is not None and self.arch not in ARCHES:
            raise MetaError(f"unknown architecture {self.arch!r} (known: {', '.join(ARCHES)})")
        if self.kind == "vnfs" and self.arch == "noarch":
            raise MetaError("a vnfs capsule needs a real architecture, not noarch")
        for what, value in (("kernel args", self.kernel_args), ("os", self.os or "")):
            if len(value) > 4096 or re.search(r"[\x00-\x1f\x7f]", value):
                raise MetaError(f"{what} must be one line of at most 4096 characters")


def _allowed(what: str) -> str:
    return {"name": "'._+-'", "version": "'._+~' (no '-')", "revision": "'_+~' (no '-' or '.')"}[what]


def capsule_filename(meta: "Meta | object") -> str:
    """``caos-nsa-node-1.0-1.stateless.x86_64.vnfs`` for a Meta or a Manifest (arch must be known)."""
    arch = meta.arch
    if arch is None:
        raise MetaError("the architecture is not known yet")
    base = capsule_basename(meta.kind, meta.name, meta.version, meta.revision, meta.state, arch)
    return base + SUFFIXES[meta.kind]


# -- reading the tree -----------------------------------------------------------------------


def resolve_in_tree(root: Path, path: str) -> Path | None:
    """``path`` inside ``root`` with symlinks followed as a chroot would; None if it does not exist."""
    relpath = resolve_in_root(root, path)
    return None if relpath is None else Path(root, relpath)


def _regular(root: Path, path: str) -> Path | None:
    found = resolve_in_tree(root, path)
    if found is None:
        return None
    try:
        return found if stat.S_ISREG(os.lstat(found).st_mode) else None
    except OSError:
        return None


# Programs whose ELF header tells the tree's architecture, in the order they are tried.
ARCH_PROBES = ("sbin/init", "init", "bin/busybox", "usr/bin/busybox", "bin/sh", "usr/bin/env")

# Names `uname -m` may give for the same ELF machine: --arch may use any of them.
_ARCH_FAMILY = {
    "i686": ("i386", "i486", "i586", "i686"),
    "armv7l": ("arm", "armv6l", "armv7l"),
}


def elf_arch(path: Path) -> str | None:
    """The architecture an ELF executable is for, as ``uname -m`` names it; None if not ELF."""
    with open_regular(path) as f:
        if f.read(4) != b"\x7fELF":
            return None
        f.seek(0)
        try:
            elf = ELFFile(f)
        except (ELFError, struct.error, ValueError) as exc:
            raise MetaError(f"unreadable ELF header: {exc}", path) from None
        machine, wide, little = elf.header["e_machine"], elf.elfclass == 64, elf.little_endian
    table = {
        "EM_X86_64": "x86_64",
        "EM_386": "i686",
        "EM_AARCH64": "aarch64",
        "EM_ARM": "armv7l",
        "EM_PPC64": "ppc64le" if little else "ppc64",
        "EM_PPC": "ppc",
        "EM_RISCV": "riscv64" if wide else None,
        "EM_S390": "s390x" if wide else None,
        "EM_MIPS": ("mips64" if wide else "mips") + ("el" if little else ""),
        "EM_LOONGARCH": "loongarch64",
        258: "loongarch64",
    }
    arch = table.get(machine)
    if arch is None:
        raise MetaError(f"ELF machine {machine} ({elf.elfclass}-bit) is not a known architecture", path)
    return arch


def same_arch(detected: str, asked: str) -> bool:
    return asked == detected or asked in _ARCH_FAMILY.get(detected, ())


def tree_arch(root: Path, asked: str | None) -> str:
    """The tree's architecture from its /sbin/init or busybox; ``asked`` must agree with it."""
    for probe in ARCH_PROBES:
        path = _regular(root, probe)
        if path is None:
            continue
        detected = elf_arch(path)
        if detected is None:
            continue  # a script: try the next probe
        if asked is not None and not same_arch(detected, asked):
            raise MetaError(f"architecture mismatch: --arch {asked} but the tree's /{probe} is {detected}")
        return asked or detected
    if asked is None:
        raise MetaError(
            "cannot tell the tree's architecture: no ELF /sbin/init or busybox in it (give --arch)", root
        )
    return asked


def tree_os(root: Path) -> str:
    """``ID-VERSION_ID`` from the tree's os-release (``debian-12``), else ``unknown``."""
    for candidate in ("etc/os-release", "usr/lib/os-release"):
        path = _regular(root, candidate)
        if path is None:
            continue
        with open_regular(path) as f:
            text = f.read(65536).decode("utf-8", "replace")
        try:
            fields = shellvars.parse(text, candidate)
        except shellvars.ShellVarsError:
            continue  # not what os-release(5) allows: as if there were none
        parts = [p for p in (fields.get("ID"), fields.get("VERSION_ID")) if p]
        name = re.sub(r"[^A-Za-z0-9._+~-]", "_", "-".join(parts))[:64]
        if name:
            return name
    return "unknown"


# -- the kernel -----------------------------------------------------------------------------

_KVER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}")


def bzimage_version(path: Path) -> str | None:
    """The version string of an x86 bzImage (setup header: pointer at 0x20E, string at +0x200)."""
    with open_regular(path) as f:
        head = f.read(0x10400)
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    protocol, pointer = struct.unpack_from("<H", head, 0x206)[0], struct.unpack_from("<H", head, 0x20E)[0]
    if protocol < 0x200 or pointer == 0:
        return None
    start = pointer + 0x200
    raw = head[start : start + 256].split(b"\0", 1)[0]
    words = raw.decode("ascii", "replace").split()
    if words and _KVER.fullmatch(words[0]):
        return words[0]
    return None


def kernel_version(path: Path) -> str | None:
    """From the bzImage header, else from a ``vmlinuz-VERSION`` style file name."""
    version = bzimage_version(path)
    if version:
        return version
    m = re.fullmatch(r"(?:vmlinuz|vmlinux|bzImage|Image|zImage)-(.+)", Path(path).name)
    if m and _KVER.fullmatch(m[1]):
        return m[1]
    return None


def tree_kernel(root: Path) -> tuple[Path, str] | None:
    """The tree's newest /boot/vmlinuz* (by mtime, then name) and its path inside the tree."""
    boot = resolve_in_tree(root, "boot")
    if boot is None or not boot.is_dir():
        return None
    found: dict[Path, tuple[float, str]] = {}
    for entry in sorted(os.listdir(boot)):
        if not entry.startswith("vmlinuz"):
            continue
        path = _regular(root, f"boot/{entry}")
        if path is not None:
            key = (os.stat(path).st_mtime, entry)
            if path not in found or key > found[path]:
                found[path] = key
    if not found:
        return None
    path, (_, entry) = max(found.items(), key=lambda item: item[1])
    return path, f"/boot/{entry}"


# -- the VNFS files beside the image (guide 4.3.5) ------------------------------------------


def config_text(kernel_args: str, kernel_version: str | None, arch: str, state: str | None) -> str:
    """The ``config`` member: KERNEL_ARGS and friends as shell ``KEY="value"`` lines to source."""
    return (
        "# VNFS configuration (perceus guide 4.3.5). Changes take effect the next time a node\n"
        "# is provisioned; KERNEL_ARGS is the only option that normally needs adjusting.\n"
        "\n"
        "# Arguments given to the VNFS kernel when a node boots it.\n"
        f"KERNEL_ARGS={shellvars.quote(kernel_args)}\n"
        "\n"
        "# What the capsule was built with (for reference; changing them changes nothing).\n"
        f"KERNEL_VERSION={shellvars.quote(kernel_version or '')}\n"
        f"ARCH={shellvars.quote(arch)}\n"
        f"STATE={shellvars.quote(state or '')}\n"
    )


def read_config(text: str, source: str = "config") -> dict[str, str]:
    """The ``KEY="value"`` lines of a config member (original capsules' too), read strictly as
    perceusd reads them; a line it cannot read is a :class:`CapsuleError` naming ``source:line``."""
    try:
        return shellvars.parse(text, source)
    except shellvars.ShellVarsError as exc:
        raise CapsuleError(exc.reason, exc.path) from None


DEFAULT_HYBRIDIZE = """\
# Paths left out of the node's in-memory root and replaced by symbolic links into the
# master's localstatedir mounted on the node (guide 4.3.4). Wildcards (*) are allowed.
# Never list the master's localstatedir (/var/lib/perceus) or anything containing it.
/usr/share/man
/usr/share/info
/usr/share/doc
/usr/share/gtk-doc
/usr/share/locale
/usr/include
/usr/src
"""

DEFAULT_LIVESYNC_SKIP = """\
# Left alone by 'perceus vnfs livesync' (guide 4.3.7): one path or partial name a line.
/proc
/sys
/dev
/run
/tmp
/var/tmp
/var/run
/var/lock
/var/log
/var/cache
/var/lib/perceus
/etc/fstab
/etc/mtab
/etc/hosts
/etc/hostname
/etc/resolv.conf
/etc/passwd
/etc/group
/etc/shadow
/etc/gshadow
/etc/machine-id
/etc/ssh/ssh_host_
/etc/sysconfig/network
"""
