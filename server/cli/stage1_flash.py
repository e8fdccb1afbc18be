"""``perceus stage1 flash``: stage one as an embedded payload (guide 6.3, "Rapid Boot").

A node whose firmware boots from its own flash needs no PXE: the stage-one kernel,
initramfs and command line go into one EFI program (a unified kernel image) that the
firmware starts. This command builds that image (``--uki``), writes it to a flash chip
with flashrom (``--programmer``), or both. Building needs no initialised perceus, only
the kernel and initramfs ``perceus stage1 build`` made (or ``--kernel``/``--initramfs``).
"""

import tempfile
from pathlib import Path

import click

from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusCommand
from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.netservices.pxelinux import CONSOLE

WHERE = "stage1 flash"
DEFAULT_CMDLINE = CONSOLE  # the same consoles as a PXE-booted stage one


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def kernel_cmdline(cmdline: str | None, master: str | None) -> str:
    """The command line the UKI carries: ``--cmdline`` (or the default) plus ``masterip=``."""
    text = " ".join((DEFAULT_CMDLINE if cmdline is None else cmdline).split())
    if master is not None:
        from perceus.stage1.cmdline import parse_masters

        try:
            masters = parse_masters(master)
        except ValueError as exc:
            raise InvalidRequest(f"--master: {exc}", WHERE) from None
        if not masters:
            raise InvalidRequest("--master: no address given", WHERE)
        if any(word.startswith("masterip=") for word in text.split()):
            raise InvalidRequest(
                "--cmdline already has masterip=: give it there or with --master, not both", WHERE
            )
        text = f"{text} masterip={','.join(str(m) for m in masters)}".strip()
    return text


def _input(given: Path | None, default: Path, what: str, option: str) -> Path:
    path = given if given is not None else default
    if given is None and not path.exists():
        raise PerceusError(f"no stage-one {what}: run 'perceus stage1 build' or give {option}", str(path))
    return path


def _build(app: App, kernel: Path, initramfs: Path, cmdline: str, out: Path, keep: bool = True) -> None:
    from perceus.buildroot import uki

    try:
        size = uki.build_uki(kernel, initramfs, cmdline, out)
        layout = uki.read_pe(out)
    except uki.BuildError as exc:
        raise PerceusError(exc.reason, exc.path or WHERE) from None
    except OSError as exc:
        raise PerceusError(exc.strerror or str(exc), exc.filename or WHERE) from None
    name = str(out) if keep else "(temporary, for flashing)"
    app.info(f"UKI {name}: {_size(size)}, command line: {cmdline}")
    sources = {".linux": kernel, ".initrd": initramfs}
    for name in uki.SECTIONS:
        section = layout.section(name)
        assert section is not None  # build_uki checked every section landed
        source = f"  {sources[name]}" if name in sources else ""
        app.info(
            f"  {name:<9} {section.virtual_size:>10} bytes at {layout.image_base + section.rva:#010x}{source}"
        )


def _flash(app: App, programmer: str, image: Path, chip: str | None, label: str | None = None) -> None:
    from perceus.buildroot import flash as flashing

    try:
        result = flashing.write_flash(programmer, image, chip=chip)
    except flashing.FlashError as exc:
        raise PerceusError(exc.reason, exc.path or WHERE) from None
    chip_text = f"{_size(result.chip_size)} ({result.chip_size} bytes)"
    payload_text = f"{_size(result.payload_size)} ({result.payload_size} bytes, the rest 0xFF)"
    app.info(f"Flashed {label or image} with {programmer}: chip {chip_text}, payload {payload_text}")
    app.info(f"  verified by read-back, sha256 {result.sha256} ({result.seconds:.1f} s)")


@click.command("flash", cls=PerceusCommand)
@click.option(
    "--uki",
    "uki_out",
    metavar="OUT.efi",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Build the unified kernel image and write it to OUT.efi.",
)
@click.option(
    "--programmer",
    metavar="PROG",
    help="Write the payload to flash with flashrom's programmer PROG (e.g. internal, ch341a_spi).",
)
@click.option("--chip", metavar="NAME", help="flashrom's chip name, when the programmer finds several.")
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Flash this file instead of a freshly built UKI.",
)
@click.option(
    "--kernel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Kernel for the UKI (default: the one 'perceus stage1 build' keeps).",
)
@click.option(
    "--initramfs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Stage-one initramfs for the UKI (default: the one 'perceus stage1 build' made).",
)
@click.option("--cmdline", metavar="TEXT", help=f"Kernel command line (default: {DEFAULT_CMDLINE}).")
@click.option("--master", metavar="ADDR", help="Add masterip=ADDR: the perceusd the node asks first.")
@pass_app
def flash(
    app: App,
    uki_out: Path | None,
    programmer: str | None,
    chip: str | None,
    image: Path | None,
    kernel: Path | None,
    initramfs: Path | None,
    cmdline: str | None,
    master: str | None,
) -> None:
    """Make stage one a UKI flash payload and write it to a chip.

    --uki builds the unified kernel image, --programmer writes it (or --image) to flash
    with flashrom, padded with 0xFF to the chip's size, and verifies it by reading back.
    """
    if image is not None and programmer is None:
        raise InvalidRequest("--image needs --programmer: it names what to flash", WHERE)
    if uki_out is None and programmer is None:
        raise InvalidRequest("give --uki OUT.efi, --programmer PROG, or both", WHERE)
    if chip is not None and programmer is None:
        raise InvalidRequest("--chip needs --programmer", WHERE)
    if programmer is not None and not programmer.strip():
        raise InvalidRequest("--programmer is empty", WHERE)
    if image is not None:
        building = {"--uki": uki_out, "--kernel": kernel, "--initramfs": initramfs}
        building |= {"--cmdline": cmdline, "--master": master}
        given = [option for option, value in building.items() if value is not None]
        if given:
            raise InvalidRequest(f"--image flashes a ready file: {', '.join(given)} would build one", WHERE)
        _flash(app, programmer, image, chip)
        return

    text = kernel_cmdline(cmdline, master)
    kernel = _input(kernel, app.paths.stage1_kernel, "kernel", "--kernel")
    initramfs = _input(initramfs, app.paths.stage1_initramfs, "initramfs", "--initramfs")
    if uki_out is not None:
        _build(app, kernel, initramfs, text, uki_out)
        if programmer is not None:
            _flash(app, programmer, uki_out, chip)
        return
    assert programmer is not None
    with tempfile.TemporaryDirectory(prefix="perceus-uki.") as scratch:
        payload = Path(scratch) / "stage1.efi"
        _build(app, kernel, initramfs, text, payload, keep=False)
        _flash(app, programmer, payload, chip, label="the UKI")
