"""Writing the stage-one payload to flash, against flashrom's emulated SPI chip.

``-p dummy:emulate=W25Q128FV,image=FILE`` is a 16 MiB Winbond chip kept in FILE between
runs (flashrom creates FILE on the first write), so what a write left on the "chip" can
be read straight from FILE as well as through ``flashrom -r``.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from perceus.buildroot import flash, uki
from perceus.server.cli import run

KERNEL = Path(__file__).resolve().parents[1] / ".cache" / "debian-kernel" / "root" / "boot" / "vmlinuz"
CHIP = 16 << 20
UKI_SIZE = 9_256_289  # what the Debian kernel and a small stage one come to


def dummy(image: Path) -> str:
    return f"dummy:emulate=W25Q128FV,image={image}"


@pytest.fixture(autouse=True)
def sbin_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian installs flashrom in /usr/sbin, which only root's PATH holds; it needs no root here."""
    monkeypatch.setenv("PATH", f"{os.environ['PATH']}{os.pathsep}/usr/sbin")


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary directory, to prove nothing is left behind in it."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def fake_flashrom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """Put a shell script named flashrom first on PATH."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    (bindir / "flashrom").write_text(f"#!/bin/sh\n{body}\n")
    os.chmod(bindir / "flashrom", 0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


@pytest.mark.slow
def test_write_pads_with_ff_verifies_and_reads_back(tmp_path: Path, scratch: Path):
    chip = tmp_path / "chip.bin"
    payload = os.urandom(UKI_SIZE)
    image = tmp_path / "stage1.efi"
    image.write_bytes(payload)
    result = flash.write_flash(dummy(chip), image)

    whole = payload + b"\xff" * (CHIP - UKI_SIZE)
    assert (result.chip_size, result.payload_size) == (CHIP, UKI_SIZE)
    assert result.sha256 == hashlib.sha256(whole).hexdigest()
    assert result.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert result.seconds > 0
    assert chip.read_bytes() == whole  # the emulated chip itself
    back = tmp_path / "back.bin"
    subprocess.run(
        ["flashrom", "-p", dummy(chip), "-r", str(back)], capture_output=True, check=True, timeout=120
    )
    assert back.read_bytes() == whole  # and an independent read through flashrom
    assert list(scratch.iterdir()) == []


@pytest.mark.slow
def test_a_smaller_payload_leaves_no_trace_of_the_old_one(tmp_path: Path):
    chip = tmp_path / "chip.bin"
    (tmp_path / "big").write_bytes(b"\x00" * (CHIP - 1))
    (tmp_path / "small").write_bytes(b"new")
    flash.write_flash(dummy(chip), tmp_path / "big")
    result = flash.write_flash(dummy(chip), tmp_path / "small", chip="W25Q128.V")
    assert chip.read_bytes() == b"new" + b"\xff" * (CHIP - 3)
    assert result.payload_size == 3


@pytest.mark.slow
def test_payload_larger_than_the_chip_is_refused_before_writing(tmp_path: Path, scratch: Path):
    chip = tmp_path / "chip.bin"
    (tmp_path / "small").write_bytes(b"old")
    flash.write_flash(dummy(chip), tmp_path / "small")
    before = chip.read_bytes()
    (tmp_path / "huge").write_bytes(b"x" * (CHIP + 1))
    with pytest.raises(flash.FlashError, match=f"{CHIP + 1} bytes, larger than the {CHIP}-byte chip"):
        flash.write_flash(dummy(chip), tmp_path / "huge")
    assert chip.read_bytes() == before
    assert list(scratch.iterdir()) == []


def test_flashrom_errors_come_back_as_one_line(tmp_path: Path, scratch: Path):
    payload = tmp_path / "p"
    payload.write_bytes(b"p")
    for programmer, message in (
        ("nosuch", 'flashrom probe failed: Error: Unknown programmer "nosuch"'),
        ("dummy:emulate=NOPE", "Invalid chip specified for emulation: NOPE"),
    ):
        with pytest.raises(flash.FlashError) as info:
            flash.write_flash(programmer, payload)
        assert message in str(info.value) and "\n" not in str(info.value)
        assert "Valid choices" not in str(info.value) and "free software" not in str(info.value)
    with pytest.raises(flash.FlashError, match="Unknown chip"):
        flash.write_flash(dummy(tmp_path / "chip.bin"), payload, chip="NOSUCH")
    with pytest.raises(flash.FlashError, match="No such file"):
        flash.write_flash(dummy(tmp_path / "chip.bin"), tmp_path / "missing")
    assert list(scratch.iterdir()) == []


@pytest.mark.slow
def test_a_chip_that_reads_back_wrong_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # flashrom's own verify passes; the separate read-back returns one flipped byte.
    fake_flashrom(
        tmp_path, monkeypatch,
        f'{shutil.which("flashrom")} "$@" || exit $?\nfor a; do last=$a; done\n'
        'case " $* " in *" -r "*) printf X | dd of="$last" bs=1 seek=100 conv=notrunc 2>/dev/null;; esac',
    )  # fmt: skip
    (tmp_path / "p").write_bytes(b"payload")
    with pytest.raises(flash.FlashError, match="the chip does not hold what was written"):
        flash.write_flash(dummy(tmp_path / "chip.bin"), tmp_path / "p")


def test_flashrom_missing_or_hanging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "p").write_bytes(b"payload")
    with monkeypatch.context() as m:
        m.setenv("PATH", str(tmp_path / "nothing"))
        with pytest.raises(flash.FlashError, match="flashrom not found"):
            flash.write_flash("dummy", tmp_path / "p")
    fake_flashrom(tmp_path, monkeypatch, "exec sleep 60")
    with pytest.raises(flash.FlashError, match="flashrom probe took more than 1 s"):
        flash.write_flash("dummy", tmp_path / "p", timeout=1)


def test_condense_keeps_the_error_lines():
    output = (
        "flashrom v1.3 on Linux\nflashrom is free software, get the source code at https://flashrom.org\n\n"
        "Using clock_gettime for delay loops (clk_id: 1, resolution: 1ns).\n"
        "Found chip X.\nlinux_spi_init: failed to open /dev/spidev0.0: No such file or directory\n"
        "Error: Programmer initialization failed.\n"
    )
    assert flash.condense(output) == (
        "linux_spi_init: failed to open /dev/spidev0.0: No such file or directory; "
        "Error: Programmer initialization failed."
    )
    assert flash.condense("") == "no message"
    assert len(flash.condense("Error: " + "x" * 1000)) == 300


# --- perceus stage1 flash ---


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PERCEUS_SYSCONFDIR", str(tmp_path / "etc"))
    monkeypatch.setenv("PERCEUS_STATEDIR", str(tmp_path / "var"))
    return tmp_path


def perceus(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, list[str]]:
    status = run(["stage1", "flash", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err.splitlines()


def failed(capsys, status: int, *args: str) -> str:
    got, out, err = perceus(capsys, *args)
    assert got == status, (got, out, err)
    assert len(err) == 1 and err[0].startswith("perceus: error: "), err
    return err[0]


def small_initramfs(path: Path) -> Path:
    path.write_bytes(os.urandom(200_000))
    return path


@pytest.mark.slow
def test_cli_builds_the_uki_and_flashes_it(env: Path, capsys, scratch: Path):
    initrd = small_initramfs(env / "initrd.img")
    out, chip = env / "stage1.efi", env / "chip.bin"
    status, text, err = perceus(
        capsys, "--uki", str(out), "--programmer", dummy(chip),
        "--kernel", str(KERNEL), "--initramfs", str(initrd), "--master", "10.0.0.1",
    )  # fmt: skip
    assert status == 0, err
    payload = out.read_bytes()
    assert chip.read_bytes() == payload + b"\xff" * (CHIP - len(payload))
    lines = text.splitlines()
    assert lines[0].startswith(f"UKI {out}: ")
    assert lines[0].endswith("command line: console=tty0 console=ttyS0,115200 masterip=10.0.0.1:987")
    sections = uki.read_pe(out)
    for name in uki.SECTIONS:
        row = next(line for line in lines if line.split()[:1] == [name])
        assert f" {sections.section(name).virtual_size} bytes at " in row
    assert f"{KERNEL.stat().st_size} bytes" in next(line for line in lines if ".linux" in line)
    whole = hashlib.sha256(chip.read_bytes()).hexdigest()
    assert (
        f"chip 16.0 MiB ({CHIP} bytes), payload" in text and f"({len(payload)} bytes, the rest 0xFF)" in text
    )
    assert f"verified by read-back, sha256 {whole}" in text
    assert list(scratch.iterdir()) == []


def test_cli_defaults_to_what_stage1_build_made(env: Path, capsys):
    stage1 = env / "var" / "stage1"
    stage1.mkdir(parents=True)
    (stage1 / "vmlinuz").write_bytes(KERNEL.read_bytes())
    small_initramfs(stage1 / "initramfs.img")
    out = env / "stage1.efi"
    status, text, err = perceus(capsys, "--uki", str(out), "--cmdline", "console=ttyS1  quiet")
    assert status == 0, err
    data = out.read_bytes()
    section = uki.read_pe(out).section(".cmdline")
    assert data[section.raw_offset : section.raw_offset + section.virtual_size] == b"console=ttyS1 quiet"
    assert str(stage1 / "initramfs.img") in text


@pytest.mark.slow
def test_cli_flashes_a_given_image_only_with_a_programmer(env: Path, capsys, scratch: Path):
    image, chip = env / "payload.bin", env / "chip.bin"
    image.write_bytes(b"\x5a" * 1000)
    status, text, err = perceus(capsys, "--programmer", dummy(chip), "--image", str(image))
    assert status == 0, err
    assert chip.read_bytes()[:1001] == b"\x5a" * 1000 + b"\xff"
    assert "UKI" not in text and "payload 1000 bytes (1000 bytes" in text
    assert list(scratch.iterdir()) == []


def test_cli_usage_mistakes_exit_2(env: Path, capsys):
    image = env / "payload.bin"
    image.write_bytes(b"x")
    assert "give --uki OUT.efi, --programmer PROG, or both (stage1 flash)" in failed(capsys, 2)
    assert "--image needs --programmer" in failed(capsys, 2, "--image", str(image))
    assert "--uki would build one" in failed(
        capsys, 2, "--image", str(image), "--programmer", "dummy", "--uki", str(env / "o.efi")
    )
    assert "--master" in failed(capsys, 2, "--uki", str(env / "o.efi"), "--master", "a b")
    assert "not both" in failed(
        capsys, 2, "--uki", str(env / "o.efi"), "--master", "10.0.0.1", "--cmdline", "masterip=10.0.0.2"
    )
    assert "--chip needs --programmer" in failed(capsys, 2, "--uki", str(env / "o.efi"), "--chip", "X")
    assert "--kernel" in failed(capsys, 2, "--uki", str(env / "o.efi"), "--kernel", str(env / "missing"))
    assert not (env / "o.efi").exists()


def test_cli_failures_are_one_line_and_leave_nothing(env: Path, capsys, scratch: Path):
    out, chip = env / "stage1.efi", env / "chip.bin"
    line = failed(capsys, 1, "--uki", str(out))
    assert "no stage-one kernel: run 'perceus stage1 build' or give --kernel" in line
    assert str(env / "var" / "stage1" / "vmlinuz") in line

    out.write_bytes(b"old payload")
    empty = env / "empty"
    empty.touch()
    line = failed(capsys, 1, "--uki", str(out), "--kernel", str(KERNEL), "--initramfs", str(empty))
    assert line == f"perceus: error: initramfs is empty ({empty})"
    assert out.read_bytes() == b"old payload"

    huge = env / "huge.bin"
    huge.write_bytes(b"\0" * (CHIP + 4096))
    line = failed(capsys, 1, "--programmer", dummy(chip), "--image", str(huge))
    assert f"the payload is {CHIP + 4096} bytes, larger than the {CHIP}-byte chip" in line
    assert not chip.exists()  # nothing was written to the chip

    initrd = small_initramfs(env / "initrd.img")
    line = failed(capsys, 1, "--programmer", "nosuch", "--kernel", str(KERNEL), "--initramfs", str(initrd))
    assert line.startswith('perceus: error: flashrom probe failed: Error: Unknown programmer "nosuch"')
    assert sorted(p.name for p in env.iterdir() if p.name.startswith(".")) == []
    assert list(scratch.iterdir()) == []
