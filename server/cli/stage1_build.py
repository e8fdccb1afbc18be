"""``perceus stage1 build``: the stage-one initramfs (and its kernel) that nodes boot.

By default the initramfs goes to ``$STATEDIR/stage1/initramfs.img`` and the kernel whose
drivers it carries beside it as ``vmlinuz``, where ``configure tftp`` and ``stage1 flash``
look for them. Building needs no initialised perceus.
"""

from pathlib import Path

import click

from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusCommand
from perceus.server.services import stage1 as service


@click.command("build", cls=PerceusCommand)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Initramfs file to write."
)
@click.option(
    "--kernel-version", default="", help="Kernel whose drivers to carry (default: the running one)."
)
@click.option(
    "--kernel-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Where boot/vmlinuz-VERSION and lib/modules/VERSION are (an unpacked kernel package).",
)
@click.option(
    "--extra-modules", multiple=True, metavar="MODS", help="More drivers: names or globs, comma lists."
)
@click.option("--master", metavar="ADDRESS", help="Master for nodes booted without masterip= (comma list).")
@click.option("--site-key", type=click.Path(dir_okay=False, path_type=Path), help="Site key to bake in.")
@pass_app
def build(
    app: App,
    output: Path | None,
    kernel_version: str,
    kernel_root: Path,
    extra_modules: tuple[str, ...],
    master: str | None,
    site_key: Path | None,
) -> None:
    """Build the stage-one initramfs: busybox, Python, the stage-one program and the drivers."""
    request = service.BuildRequest(
        output=output,
        kernel_root=kernel_root,
        kernel_version=kernel_version,
        extra_modules=tuple(n.strip() for v in extra_modules for n in v.split(",") if n.strip()),
        master=master,
        site_key=site_key,
    )
    built = service.build(app.paths, request)
    result = built.result
    for line in result.report():
        app.info(line)
    app.info(f"wrote {result.output} for kernel {result.kernel_version} in {result.seconds:.1f} s")
    if built.kernel is not None:
        app.info(f"kernel: {built.kernel}")
    else:
        app.info(f"boot it with the kernel {result.kernel}")
