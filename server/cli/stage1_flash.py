"""``perceus stage1 flash``: stage one as an embedded payload (guide 6.3, "Rapid Boot").

A node whose firmware boots from its own flash needs no PXE: the stage-one kernel,
initramfs and command line go into one EFI program (a unified kernel image) that the
firmware starts. This command builds that image (``--uki``), writes it to a flash chip
with flashrom (``--programmer``), or both. Building needs no initialised perceus, only
the kernel and initramfs ``perceus stage1 build`` made (or ``--kernel``/``--initramfs``).
"""

from pathlib import Path

import click

from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusCommand
from perceus.server.cli.output import human_size
from perceus.server.errors import InvalidRequest
from perceus.server.services import stage1 as service
from perceus.server.services.stage1 import DEFAULT_CMDLINE


def _show_uki(app: App, built: service.UkiBuilt, name: str) -> None:
    app.info(f"UKI {name}: {human_size(built.size)}, command line: {built.cmdline}")
    for section in built.sections:
        source = f"  {section.source}" if section.source is not None else ""
        app.info(f"  {section.name:<9} {section.size:>10} bytes at {section.address:#010x}{source}")


def _flash(app: App, programmer: str, image: Path, chip: str | None, label: str | None = None) -> None:
    result = service.write_flash(programmer, image, chip)
    chip_text = f"{human_size(result.chip_size)} ({result.chip_size} bytes)"
    payload_text = f"{human_size(result.payload_size)} ({result.payload_size} bytes, the rest 0xFF)"
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
        raise InvalidRequest("--image needs --programmer: it names what to flash")
    if uki_out is None and programmer is None:
        raise InvalidRequest("give --uki OUT.efi, --programmer PROG, or both")
    if chip is not None and programmer is None:
        raise InvalidRequest("--chip needs --programmer")
    if programmer is not None and not programmer.strip():
        raise InvalidRequest("--programmer is empty")
    if image is not None:
        building = {"--uki": uki_out, "--kernel": kernel, "--initramfs": initramfs}
        building |= {"--cmdline": cmdline, "--master": master}
        given = [option for option, value in building.items() if value is not None]
        if given:
            raise InvalidRequest(f"--image flashes a ready file: {', '.join(given)} would build one")
        _flash(app, programmer, image, chip)
        return

    text = service.uki_cmdline(cmdline, master)
    kernel, initramfs = service.uki_inputs(app.paths, kernel, initramfs)
    if uki_out is not None:
        _show_uki(app, service.build_uki(kernel, initramfs, text, uki_out), str(uki_out))
        if programmer is not None:
            _flash(app, programmer, uki_out, chip)
        return
    assert programmer is not None
    with service.temporary_uki(kernel, initramfs, text) as built:
        _show_uki(app, built, "(temporary, for flashing)")
        _flash(app, programmer, built.path, chip, label="the UKI")
