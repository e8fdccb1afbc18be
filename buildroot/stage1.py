"""``perceus stage1 build``: the stage-one initramfs a node PXE-boots (or carries in flash).

Parts, each charged in the size report: busybox (Debian's busybox-static: the shell that
runs nodescripts, and the rescue shell); the interpreter (Debian's ``python3.11`` with
exactly the libraries its ELF headers name); the program (trimmed standard library,
``perceus.stage1``, construct and pyroute2, compiled into one zip) and the shared objects
it imports; the kernel's network and storage drivers with an alias index; ``/init``.
The whole is one cpio newc archive in one zstd frame. The budget is 8 MiB compressed
(Debian's own initrd for the same kernel is about 30 MB).
"""

import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from perceus.buildroot.elfdeps import needed_closure
from perceus.buildroot.errors import BuildError
from perceus.buildroot.kmods import DEFAULT_DRIVERS, KernelModules, modules_alias, modules_dep
from perceus.buildroot.pyfreeze import freeze
from perceus.buildroot.tree import InitramfsTree
from perceus.common.atomicfile import beside

__all__ = ["BUDGET", "BuildError", "BuildOptions", "BuildResult", "build_stage1", "kernel_versions"]

BUDGET = 8 * 1024 * 1024
PYTHON = Path("/usr/bin/python3.11")
BUSYBOX = Path("/bin/busybox")
PYLIB = "usr/lib/python3.11"
ZIP_PATH = "usr/lib/python311.zip"  # on the interpreter's default sys.path when PYTHONHOME=/usr

PARTS = ("busybox", "python", "program", "extensions", "modules", "base")
PART_TITLES = {
    "busybox": "busybox (static)",
    "python": "python3.11 + libraries",
    "program": "stdlib + perceus.stage1 + construct + pyroute2 (.pyc zip)",
    "extensions": "extension modules + their libraries",
    "modules": "kernel modules + index",
    "base": "/init, config, directories",
}

INIT = """#!/bin/sh
# perceus stage one. The program below is PID 1's child: if it ever returns, a shell stays.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONHOME=/usr PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONUTF8=1 HOME=/root
mkdir -p /proc /sys /dev /run /tmp /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "perceus: stage one starting ($(uname -r))"
/usr/bin/python3 -m perceus.stage1 --mode initramfs
echo "perceus: stage one returned (status $?); here is a shell"
exec setsid cttyhack /bin/sh
"""


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    kernel_root: Path = Path("/")
    kernel_version: str = ""
    extra_modules: tuple[str, ...] = ()
    master: str = ""  # baked-in default for nodes booted without masterip=
    site_key: bytes | None = None
    drivers: tuple[str, ...] = DEFAULT_DRIVERS


@dataclass
class BuildResult:
    output: Path
    kernel_version: str
    kernel: Path  # the image the modules came from: boot it with this initramfs
    compressed_size: int
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)  # part -> (raw, zstd alone)
    modules: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> list[str]:
        lines = [f"{'part':<62} {'raw':>9} {'zstd':>9}"]
        for part in PARTS:
            raw, packed = self.parts.get(part, (0, 0))
            lines.append(f"{PART_TITLES[part]:<62} {_mib(raw):>9} {_mib(packed):>9}")
        raw_total = sum(raw for raw, _ in self.parts.values())
        verdict = "within" if self.compressed_size <= BUDGET else "OVER"
        lines.append(f"{'total (one zstd frame)':<62} {_mib(raw_total):>9} {_mib(self.compressed_size):>9}")
        lines.append(
            f"budget {_mib(BUDGET)} without the kernel: {verdict}; {len(self.modules)} kernel modules"
        )
        return lines


def _mib(n: int) -> str:
    return f"{n / 1048576:.2f} MiB"


def kernel_versions(root: Path) -> list[str]:
    """Kernel versions that have both a kernel image and modules under ``root``."""
    moddir = root / "lib" / "modules"
    try:
        found = [d.name for d in moddir.iterdir() if (d / "kernel").is_dir()]
    except OSError:
        return []
    return sorted(v for v in found if (root / "boot" / f"vmlinuz-{v}").exists())


def _choose_version(opts: BuildOptions) -> str:
    versions = kernel_versions(opts.kernel_root)
    if opts.kernel_version:
        if opts.kernel_version not in versions:
            raise BuildError(
                f"kernel {opts.kernel_version} not found under {opts.kernel_root} "
                f"(need boot/vmlinuz-VERSION and lib/modules/VERSION; have: {', '.join(versions) or 'none'})"
            )
        return opts.kernel_version
    running = os.uname().release
    if running in versions:
        return running
    if len(versions) == 1:
        return versions[0]
    if not versions:
        raise BuildError(f"no kernel with modules under {opts.kernel_root} (boot/vmlinuz-*, lib/modules/*)")
    raise BuildError(
        f"several kernels under {opts.kernel_root}: choose one with --kernel-version ({', '.join(versions)})"
    )


def _add_busybox(tree: InitramfsTree) -> None:
    if not BUSYBOX.exists():
        raise BuildError(f"{BUSYBOX} not found: install busybox-static")
    key = tree.mirror(BUSYBOX, "busybox")
    listing = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True, timeout=10
    )
    for applet in listing.stdout.split():
        if os.path.basename(applet) in ("busybox", "init", "linuxrc"):
            continue
        link = tree.resolve(applet)
        if link not in tree.entries:
            tree.add_symlink(link, "/" + key, "busybox")


def _add_python(tree: InitramfsTree) -> None:
    if not PYTHON.exists():
        raise BuildError(f"{PYTHON} not found: install python3.11 (Debian's interpreter)")
    if sys.version_info[:2] != (3, 11) or not Path(sys.base_prefix).samefile("/usr"):
        raise BuildError(f"build with Debian's python3.11 (this is {sys.base_prefix}): its stdlib must match")
    tree.mirror(PYTHON, "python")
    tree.add_symlink("usr/bin/python3", "python3.11", "python")
    for lib in needed_closure([PYTHON]):
        tree.mirror(lib, "python")


def _add_program(tree: InitramfsTree) -> None:
    frozen = freeze()
    if frozen.missing:
        raise BuildError(f"cannot find modules stage one needs: {', '.join(frozen.missing)}")
    tree.add_file(ZIP_PATH, frozen.zip_bytes, 0o644, "program")
    for rel, data in frozen.disk_files.items():
        tree.add_file(f"{PYLIB}/{rel}", data, 0o644, "extensions")
    for name, path in sorted(frozen.extensions.items()):
        package = name.rpartition(".")[0]
        where = f"{PYLIB}/{package.replace('.', '/')}" if package else f"{PYLIB}/lib-dynload"
        tree.add_file(f"{where}/{path.name}", path.read_bytes(), 0o644, "extensions")
    have = {k for k, e in tree.entries.items() if e.part == "python"}
    for lib in needed_closure(frozen.extensions.values()):
        if tree.resolve(str(lib)) not in have:
            tree.mirror(lib, "extensions")


def _add_modules(tree: InitramfsTree, kmods: KernelModules, patterns: tuple[str, ...]) -> list[str]:
    names = kmods.select(patterns)
    infos = kmods.closure(names)
    base = f"usr/lib/modules/{kmods.version}"
    for info in infos:
        tree.add_file(f"{base}/{info.relpath}", (kmods.moddir / info.relpath).read_bytes(), 0o644, "modules")
    tree.add_file(f"{base}/modules.dep", modules_dep(infos).encode(), 0o644, "modules")
    tree.add_file(f"{base}/modules.alias", modules_alias(infos).encode(), 0o644, "modules")
    return [info.name for info in infos]


def _add_base(tree: InitramfsTree, opts: BuildOptions) -> None:
    for d in ("proc", "sys", "dev", "run", "tmp", "root", "etc/perceus", "mnt"):
        tree.add_dir(d)
    tree.entries["tmp"].mode = stat.S_IFDIR | 0o1777
    tree.add_device("dev/console", stat.S_IFCHR, 5, 1)
    tree.add_device("dev/null", stat.S_IFCHR, 1, 3, 0o666)
    tree.add_file("init", INIT.encode(), 0o755)
    tree.add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    tree.add_file("etc/group", b"root:x:0:\n")
    if opts.master:
        tree.add_file("etc/perceus/masterip", f"{opts.master}\n".encode())
    if opts.site_key is not None:
        tree.add_file("etc/perceus/site.key", opts.site_key, 0o600)


def build_stage1(opts: BuildOptions) -> BuildResult:
    """Build the initramfs into ``opts.output`` (written beside and renamed); returns the report."""
    started = time.monotonic()
    version = _choose_version(opts)
    kmods = KernelModules(opts.kernel_root, version)
    missing = [m for m in opts.extra_modules if not kmods.select((m,))]
    if missing:
        raise BuildError(f"no such kernel module in {version}: {', '.join(missing)}")
    tree = InitramfsTree()
    tree.host_layout()
    _add_base(tree, opts)
    _add_busybox(tree)
    _add_python(tree)
    _add_program(tree)
    modules = _add_modules(tree, kmods, (*opts.drivers, *opts.extra_modules))
    image = tree.compressed()
    parts = {}
    raw = tree.part_sizes()
    for part in PARTS:
        parts[part] = (raw.get(part, 0), len(tree.compressed({part})))
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    with beside(opts.output, 0o600 if opts.site_key is not None else 0o644) as tmp:
        tmp.write_bytes(image)
    kernel = opts.kernel_root / "boot" / f"vmlinuz-{version}"
    return BuildResult(opts.output, version, kernel, len(image), parts, modules, time.monotonic() - started)


def install_kernel(kernel: Path, dest: Path) -> None:
    """Copy the kernel the initramfs was built for beside it (atomically): the two must match."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with beside(dest) as tmp:
        shutil.copyfile(kernel, tmp)
