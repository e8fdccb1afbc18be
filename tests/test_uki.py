"""The UKI flash payload: section layout, contents, failures, and a real boot under OVMF.

The boot test is what an embedded node does: firmware (OVMF) starts the UKI as
``EFI/BOOT/BOOTX64.EFI``; systemd's stub hands Debian's kernel its built-in command line
and initramfs; the initramfs's busybox /init prints the command line it got and powers
off. Sections are checked with ``objdump -h`` (not with the module's own PE reader).
"""

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from perceus.buildroot import uki
from perceus.common.newc import write_entry, write_trailer

from tests.support.ovmf import boot_uki

KERNEL = Path(__file__).resolve().parents[1] / ".cache" / "debian-kernel" / "root" / "boot" / "vmlinuz"
BUSYBOX = Path("/bin/busybox")
MARKER = "PERCEUS-UKI-BOOTED"
CMDLINE = "console=ttyS0,115200 panic=-1 perceus.test=uki-7"

INIT = f"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
efi=$($B test -d /sys/firmware/efi && echo yes)
echo "{MARKER} cmdline=[$($B cat /proc/cmdline)] efi=$efi" > /dev/console
$B poweroff -f
"""

_SECTION = re.compile(r"^\s*\d+\s+(\S+)\s+([0-9a-f]{8})\s+([0-9a-f]{16})\s+[0-9a-f]{16}\s+([0-9a-f]{8})\s")


def objdump_sections(path: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (size, vma, file offset) as binutils reads the PE file."""
    out = subprocess.run(["objdump", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        m = _SECTION.match(line)
        if m:
            found[m[1]] = (int(m[2], 16), int(m[3], 16), int(m[4], 16))
    return found


def size_of_image(path: Path) -> int:
    out = subprocess.run(["objdump", "-p", str(path)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^SizeOfImage\s+([0-9a-f]+)", out, re.M)[1], 16)


def make_initramfs(path: Path) -> Path:
    """A zstd-compressed cpio newc of busybox and an /init that reports and powers off."""
    archive = bytearray()
    entries = [
        ("bin", dict(mode=stat.S_IFDIR | 0o755)),
        ("dev", dict(mode=stat.S_IFDIR | 0o755)),
        ("proc", dict(mode=stat.S_IFDIR | 0o755)),
        ("sys", dict(mode=stat.S_IFDIR | 0o755)),
        ("dev/console", dict(mode=stat.S_IFCHR | 0o600, rdevmajor=5, rdevminor=1)),
        ("bin/busybox", dict(mode=stat.S_IFREG | 0o755, data=BUSYBOX.read_bytes())),
        ("init", dict(mode=stat.S_IFREG | 0o755, data=INIT.encode())),
    ]
    for ino, (name, fields) in enumerate(entries, 1):
        write_entry(archive, name, ino=ino, **fields)
    write_trailer(archive)
    raw = path.with_suffix(".cpio")
    raw.write_bytes(archive)
    subprocess.run(["zstd", "-q", "-f", "-19", str(raw), "-o", str(path)], check=True, timeout=120)
    raw.unlink()
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(UKI, initramfs) built once for the module."""
    assert KERNEL.exists(), f"{KERNEL} is missing: run `make kernel`"
    root = tmp_path_factory.mktemp("uki")
    initrd = make_initramfs(root / "initrd.zst")
    out = root / "stage1.efi"
    size = uki.build_uki(KERNEL, initrd, CMDLINE, out)
    assert size == out.stat().st_size
    return out, initrd


def test_sections_are_where_objdump_sees_them_and_never_overlap(built):
    out, initrd = built
    sections = objdump_sections(out)
    stub = objdump_sections(uki.DEFAULT_STUB)
    assert set(stub) < set(sections)
    assert list(sections)[-4:] == list(uki.SECTIONS)
    spans = sorted((vma, vma + size, name) for name, (size, vma, _) in sections.items())
    for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"{first} and {second} overlap"
    stub_end = max(vma + size for size, vma, _ in stub.values())
    assert sections[".osrel"][1] >= max(stub_end, size_of_image(uki.DEFAULT_STUB))
    for name in uki.SECTIONS:
        assert sections[name][1] % 0x1000 == 0, name
    assert size_of_image(out) >= spans[-1][1]

    data = out.read_bytes()

    def content(name: str) -> bytes:
        size, _, offset = sections[name]
        return data[offset : offset + size]

    assert content(".linux") == KERNEL.read_bytes()
    assert content(".initrd") == initrd.read_bytes()
    assert content(".cmdline") == CMDLINE.encode()
    assert b"ID=perceus-stage1" in content(".osrel")


def test_large_kernel_and_initramfs_do_not_overlap(tmp_path: Path):
    # The old fixed recipe (.linux at 0x2000000, .initrd at 0x3000000) breaks past 16 MiB.
    kernel, initrd = tmp_path / "kernel", tmp_path / "initrd"
    kernel.write_bytes(b"MZ" + b"K" * ((20 << 20) - 2))
    initrd.write_bytes(b"I" * (40 << 20))
    out = tmp_path / "big.efi"
    uki.build_uki(kernel, initrd, "quiet", out)
    sections = objdump_sections(out)
    size, vma, _ = sections[".linux"]
    assert size == 20 << 20 and sections[".initrd"][1] >= vma + size
    assert size_of_image(out) >= sections[".initrd"][1] + (40 << 20)


def test_section_addresses_follow_the_stub_whatever_the_sizes():
    stub = uki.PeLayout(
        image_base=0x140000000,
        section_alignment=0x200,
        file_alignment=0x200,
        size_of_image=0x19300,
        sections=(uki.PeSection(".sdmagic", 0x19100, 0x34, 0x200, 0x11200),),
    )
    sizes = {".osrel": 141, ".cmdline": 1, ".linux": 300 << 20, ".initrd": 3 << 30}
    got = uki.section_addresses(stub, sizes)
    assert got[".osrel"] == 0x140000000 + 0x1A000
    order = [got[name] for name in uki.SECTIONS]
    assert order == sorted(order)
    for name, following in zip(uki.SECTIONS, uki.SECTIONS[1:], strict=False):
        assert got[name] + sizes[name] <= got[following]
        assert got[following] % 0x1000 == 0


@pytest.mark.qemu
def test_uki_boots_under_ovmf(built, tmp_path: Path):
    out, _ = built
    with boot_uki(out, tmp_path / "serial.log") as vm:
        seconds = vm.wait_for(MARKER, timeout=180)
        status = vm.wait_exit(timeout=60)
        log = vm.text()
    print(f"UKI booted to /init under OVMF in {seconds:.1f} s")
    line = next(ln for ln in log.splitlines() if MARKER in ln)
    assert f"cmdline=[{CMDLINE}]" in line, line  # the .cmdline section reached the kernel
    assert "efi=yes" in line, line
    assert status == 0, log[-2000:]  # poweroff -f with -no-reboot: QEMU exits cleanly


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_missing_inputs_are_build_errors_and_leave_nothing(tmp_path: Path, monkeypatch):
    kernel, initrd = tmp_path / "kernel", tmp_path / "initrd"
    kernel.write_bytes(b"MZ" + b"K" * 4094)
    initrd.write_bytes(b"I" * 4096)
    out = tmp_path / "out" / "stage1.efi"
    out.parent.mkdir()
    out.write_bytes(b"old payload")

    cases = [
        (dict(kernel=tmp_path / "none"), "kernel: No such file"),
        (dict(kernel=initrd), "not an EFI-bootable kernel"),
        (dict(initrd=tmp_path / "empty"), "initramfs is empty"),
        (dict(stub=tmp_path / "nostub"), "EFI stub not found"),
        (dict(stub=kernel), "not a PE file"),
        (dict(output=tmp_path / "nodir" / "x.efi"), "no such directory"),
        (dict(cmdline="a\nb"), "one line"),
    ]
    (tmp_path / "empty").touch()
    for changes, message in cases:
        args = dict(kernel=kernel, initrd=initrd, cmdline="quiet", output=out) | changes
        with pytest.raises(uki.BuildError, match=message) as info:
            uki.build_uki(**args)
        assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    with pytest.raises(uki.BuildError, match="objcopy not found"):
        uki.build_uki(kernel, initrd, "quiet", out)
    assert out.read_bytes() == b"old payload"
    assert _leftovers(out.parent) == []


def test_objcopy_failure_keeps_the_old_file(tmp_path: Path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "objcopy").write_text('#!/bin/sh\nfor a; do last=$a; done\necho partial > "$last"\n'
                                  'echo "objcopy: out of cheese" >&2\nexit 1\n')  # fmt: skip
    os.chmod(fake / "objcopy", 0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    kernel, initrd, out = tmp_path / "k", tmp_path / "i", tmp_path / "out.efi"
    kernel.write_bytes(b"MZ")
    initrd.write_bytes(b"i")
    out.write_bytes(b"old")
    with pytest.raises(uki.BuildError, match="objcopy failed: objcopy: out of cheese"):
        uki.build_uki(kernel, initrd, "quiet", out)
    assert out.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []
