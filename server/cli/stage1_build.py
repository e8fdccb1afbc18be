"""``perceus stage1 build``: the stage-one initramfs (and its kernel) that nodes boot.

By default the initramfs goes to ``$STATEDIR/stage1/initramfs.img`` and the kernel whose
drivers it carries beside it as ``vmlinuz``, where ``configure tftp`` and ``stage1 flash``
look for them. Building needs no initialised perceus.
"""

from pathlib import Path

import click

from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusCommand
from perceus.server.errors import InvalidRequest, PerceusError

WHERE = "stage1 build"


def _modules(values: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(n.strip() for v in values for n in v.split(",") if n.strip())
    for name in names:
        if not all(c.isalnum() or c in "_-*?[]/." for c in name):
            raise InvalidRequest(f"--extra-modules: {name!r} is not a module name or pattern", WHERE)
    return names


def _master(text: str | None) -> str:
    if not text:
        return ""
    from perceus.stage1.cmdline import parse_masters

    try:
        masters = parse_masters(text)
    except ValueError as exc:
        raise InvalidRequest(f"--master: {exc}", WHERE) from None
    return ",".join(str(m) for m in masters)


def _site_key(path: Path | None) -> bytes | None:
    if path is None:
        return None
    from perceus.stage1.protocol import check_site_key

    try:
        return check_site_key(path.read_bytes())
    except OSError as exc:
        raise PerceusError(f"cannot read the site key: {exc.strerror}", str(path)) from None
    except ValueError as exc:
        raise PerceusError(f"bad site key: {exc}", str(path)) from None


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
    from perceus.buildroot.stage1 import BuildError, BuildOptions, build_stage1, install_kernel

    opts = BuildOptions(
        output=output or app.paths.stage1_initramfs,
        kernel_root=kernel_root,
        kernel_version=kernel_version,
        extra_modules=_modules(extra_modules),
        master=_master(master),
        site_key=_site_key(site_key),
    )
    try:
        result = build_stage1(opts)
        if output is None:
            install_kernel(result.kernel, app.paths.stage1_kernel)
    except BuildError as exc:
        raise PerceusError(exc.reason, exc.path or WHERE) from None
    except OSError as exc:
        raise PerceusError(f"cannot write: {exc.strerror}", str(exc.filename or opts.output)) from None
    for line in result.report():
        app.info(line)
    app.info(f"wrote {result.output} for kernel {result.kernel_version} in {result.seconds:.1f} s")
    if output is None:
        app.info(f"kernel: {app.paths.stage1_kernel}")
    else:
        app.info(f"boot it with the kernel {result.kernel}")
