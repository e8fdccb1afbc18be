"""``perceus stage1``: what nodes boot first — the stage-one kernel, initramfs and payloads."""

import click

from perceus.server.cli.errors import PerceusGroup
from perceus.server.cli.stage1_build import build
from perceus.server.cli.stage1_flash import flash


@click.group("stage1", cls=PerceusGroup)
def stage1() -> None:
    """Build and install stage one: the first OS a node boots (by PXE or from flash)."""


stage1.add_command(build)
stage1.add_command(flash)
