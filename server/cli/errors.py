"""The one place where errors become ``perceus: error: <what> (<where>)`` and an exit status.

Services raise domain errors (``ReasonError`` and its kinds) that say what went wrong and,
where it matters, where (a file, a key, a value). A command adds itself as the *where* of an
error that names none, and turns the system's ``OSError`` into the same one-line form, so no
service ever takes the command's name as an argument.
"""

import click

from perceus.common.errors import InvalidInput, ReasonError
from perceus.server.errors import PerceusError

__all__ = ["PerceusCommand", "PerceusGroup", "exit_status", "format_error"]


def exit_status(exc: ReasonError) -> int:
    """2 for the caller's mistake, 1 for everything else."""
    return 2 if isinstance(exc, InvalidInput) else 1


def format_error(what: str, where: str) -> str:
    text = " ".join(what.split())
    return f"perceus: error: {text} ({where})" if where else f"perceus: error: {text}"


def command_where(ctx: click.Context) -> str:
    """``vnfs import`` for ``perceus vnfs import``: the where of an error that names none."""
    parts = ctx.command_path.split(" ", 1)
    return parts[1] if len(parts) > 1 else parts[0]


class PerceusCommand(click.Command):
    """A command whose errors name the command when they name nothing else."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ReasonError as exc:
            if exc.path is None:
                exc.path = command_where(ctx)
            raise
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise PerceusError(exc.strerror or str(exc), exc.filename or command_where(ctx)) from None


class PerceusGroup(click.Group):
    """A group whose commands (and sub-groups) are :class:`PerceusCommand` s."""

    command_class = PerceusCommand
    group_class = type  # sub-groups are PerceusGroups too
