"""The kernel modules stage one carries: chosen drivers, their dependencies, an alias index.

Everything is read from the modules themselves — each ``.ko``'s ``.modinfo`` section
(``depends=``, ``softdep=``, ``alias=``) via pyelftools — so the kernel tree needs no
``depmod`` run (Debian's packaged tree, unpacked, has none). The index written into the
image is the two files stage one reads: ``modules.dep`` (paths, dependencies first) and
``modules.alias`` (device patterns to module names).
"""

import fnmatch
import gzip
import io
import lzma
import os
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from perceus.buildroot.errors import BuildError

__all__ = ["DEFAULT_DRIVERS", "KernelModules", "ModuleInfo", "ModulesError", "modname"]

# Network and storage drivers worth carrying on a cluster node. Globs are matched against
# paths relative to lib/modules/VERSION/kernel; names (no slash) against module names.
DEFAULT_DRIVERS = (
    # paravirtual and emulated NICs
    "virtio_net", "virtio_pci", "vmxnet3", "e1000",
    # server NICs: Intel 1/10/25/40G, Broadcom, Realtek, Mellanox ConnectX-4 and later
    "e1000e", "igb", "igc", "ixgbe", "i40e", "tg3", "bnx2", "bnxt_en", "r8169", "mlx5_core",
    # storage: SATA/AHCI, NVMe, SCSI disks, virtio
    "ahci", "sd_mod", "nvme", "virtio_blk", "virtio_scsi",
)  # fmt: skip
# Left to --extra-modules (each costs 0.1-1.2 MiB of the 8 MiB budget): InfiniBand
# ("mlx5_ib,ib_ipoib": booting over IPoIB), ice, bnx2x, qede, cxgb4, sfc, nfp, mlx4_en,
# hv_netvsc, xen_netfront, ena, gve, megaraid_sas, mpt3sas, hpsa, smartpqi, filesystems.

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class ModulesError(BuildError):
    """The kernel tree is missing, or a module file cannot be read."""


def modname(path: str | Path) -> str:
    """A module's name as the kernel knows it: the file name, no suffix, ``-`` as ``_``."""
    name = os.path.basename(str(path))
    for suffix in MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def _decompress(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


@dataclass(frozen=True)
class ModuleInfo:
    """What one module's ``.modinfo`` says about loading it."""

    name: str
    relpath: str  # relative to lib/modules/VERSION
    depends: tuple[str, ...]
    softdeps: tuple[str, ...]
    aliases: tuple[str, ...]


def read_modinfo(path: Path, relpath: str) -> ModuleInfo:
    """Parse a module's ``.modinfo`` (NUL-separated ``key=value``) with pyelftools."""
    try:
        elf = ELFFile(io.BytesIO(_decompress(path)))
        section = elf.get_section_by_name(".modinfo")
        raw = section.data() if section is not None else b""
    except (OSError, ELFError, lzma.LZMAError, EOFError) as exc:
        raise ModulesError(f"not a readable kernel module ({exc})", path) from None
    depends: list[str] = []
    softdeps: list[str] = []
    aliases: list[str] = []
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if not sep:
            continue
        if key == "depends":
            depends.extend(d.replace("-", "_") for d in value.split(",") if d)
        elif key == "softdep":
            softdeps.extend(w.replace("-", "_") for w in value.split() if not w.endswith(":"))
        elif key == "alias":
            aliases.append(value)
    return ModuleInfo(modname(path), relpath, tuple(depends), tuple(softdeps), tuple(aliases))


@dataclass
class KernelModules:
    """One kernel version's module tree under ``root`` (``/`` or an unpacked package)."""

    root: Path
    version: str
    _paths: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def moddir(self) -> Path:
        return self.root / "lib" / "modules" / self.version

    def paths(self) -> dict[str, str]:
        """Module name -> path relative to the module directory."""
        if not self._paths:
            kernel = self.moddir / "kernel"
            if not kernel.is_dir():
                raise ModulesError(f"no kernel modules for {self.version}", self.moddir)
            for dirpath, _dirs, files in os.walk(kernel):
                for name in files:
                    if name.endswith(MODULE_SUFFIXES):
                        rel = os.path.relpath(os.path.join(dirpath, name), self.moddir)
                        self._paths.setdefault(modname(name), rel)
        return self._paths

    def select(self, patterns: tuple[str, ...]) -> list[str]:
        """Module names matching names or globs (paths under ``kernel/`` for globs with a ``/``)."""
        paths = self.paths()
        chosen: list[str] = []
        for pattern in patterns:
            if "/" in pattern:
                hits = sorted(
                    n for n, rel in paths.items() if fnmatch.fnmatchcase(rel.removeprefix("kernel/"), pattern)
                )
            else:
                key = pattern.replace("-", "_")
                hits = sorted(n for n in paths if fnmatch.fnmatchcase(n, key))
            if not hits and not any(ch in pattern for ch in "*?["):
                continue  # not built as a module in this kernel (built in, or absent)
            chosen.extend(h for h in hits if h not in chosen)
        return chosen

    def closure(self, names: list[str]) -> list[ModuleInfo]:
        """The modules and everything they depend on (hard and soft), dependencies first."""
        paths = self.paths()
        infos: dict[str, ModuleInfo] = {}
        order: list[ModuleInfo] = []

        def visit(name: str, stack: tuple[str, ...]) -> None:
            if name in stack or name not in paths or any(m.name == name for m in order):
                return
            info = infos.get(name)
            if info is None:
                info = infos[name] = read_modinfo(self.moddir / paths[name], paths[name])
            for dep in (*info.depends, *info.softdeps):
                visit(dep, (*stack, name))
            order.append(info)

        for name in names:
            visit(name, ())
        return order


def _dependency_paths(name: str, by_name: dict[str, ModuleInfo]) -> list[str]:
    """Paths of a module's dependencies, transitively, nearest first (as depmod lists them)."""
    paths: list[str] = []
    pending = list(by_name[name].depends)
    while pending:
        dep = pending.pop(0)
        if dep in by_name and by_name[dep].relpath not in paths:
            paths.append(by_name[dep].relpath)
            pending.extend(by_name[dep].depends)
    return paths


def modules_dep(infos: list[ModuleInfo]) -> str:
    """``modules.dep`` text: each module's path, then its dependencies' paths."""
    by_name = {m.name: m for m in infos}
    lines = [f"{info.relpath}: {' '.join(_dependency_paths(info.name, by_name))}".rstrip() for info in infos]
    return "\n".join(lines) + "\n"


def modules_alias(infos: list[ModuleInfo]) -> str:
    """``modules.alias`` text: ``alias PATTERN module`` for every alias of every module."""
    return "".join(f"alias {alias} {info.name}\n" for info in infos for alias in info.aliases)
