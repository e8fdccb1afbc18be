"""What capsules are called: the guide's ``name-version-revision.state.arch`` convention.

The kinds, states and architectures a capsule may declare, the patterns its name,
version and revision must match, and the file name built from them (and read back).
Both the manifest parser (``format``) and the packer's metadata (``meta``) use these;
this module imports neither.
"""

import os
import re

__all__ = [
    "ARCHES",
    "KINDS",
    "NAME_RE",
    "REVISION_RE",
    "STATES",
    "SUFFIXES",
    "VERSION_RE",
    "capsule_basename",
    "parse_capsule_filename",
]

KINDS = ("vnfs", "module")
STATES = ("stateless", "stateful")
SUFFIXES = {"vnfs": ".vnfs", "module": ".pmod"}

# Architectures by the name `uname -m` gives; the ELF reader maps e_machine onto these.
ARCHES = tuple(
    "x86_64 i386 i486 i586 i686 aarch64 armv7l armv6l arm ppc64le ppc64 ppc riscv64 s390x "
    "mips mipsel mips64 mips64el loongarch64 noarch".split()
)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~]{0,63}")
REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+~]{0,31}")


def capsule_basename(kind: str, name: str, version: str, revision: str, state: str | None, arch: str) -> str:
    """The guide's ``name-version-revision.state.arch`` (modules have no state)."""
    if kind == "module" or state is None:
        return f"{name}-{version}-{revision}.{arch}"
    return f"{name}-{version}-{revision}.{state}.{arch}"


_VNFS_NAME = re.compile(
    r"(?P<name>.+)-(?P<version>[^-/]+)-(?P<revision>[^-./]+)"
    r"\.(?P<state>stateless|stateful|statefull)\.(?P<arch>[^./]+)\.vnfs"
)
_PMOD_NAME = re.compile(r"(?P<name>.+)-(?P<version>[^-/]+)-(?P<revision>[^-./]+)\.(?P<arch>[^./]+)\.pmod")


def parse_capsule_filename(filename: str) -> dict[str, str] | None:
    """The fields of a conventional capsule file name, or None if the name does not follow it.

    The guide's own example ``gentoo-2007.0-1.statefull.x86_64.vnfs`` is read as stateful.
    """
    base = os.path.basename(filename)
    m = _VNFS_NAME.fullmatch(base)
    if m:
        fields = m.groupdict()
        fields["kind"] = "vnfs"
        if fields["state"] == "statefull":
            fields["state"] = "stateful"
    else:
        m = _PMOD_NAME.fullmatch(base)
        if not m:
            return None
        fields = m.groupdict() | {"kind": "module", "state": None}
    ok = (
        NAME_RE.fullmatch(fields["name"])
        and VERSION_RE.fullmatch(fields["version"])
        and REVISION_RE.fullmatch(fields["revision"])
        and fields["arch"] in ARCHES
    )
    return fields if ok else None
