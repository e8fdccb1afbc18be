"""The master's domain errors: what went wrong and where (a file, a key, a node, a value).

They carry no exit status: the CLI decides that in one place (``cli.errors``), so the
services under it can be called from anything (tests, perceusd, a future REST API).
"""

from collections.abc import Callable

from perceus.common.errors import InvalidInput, ReasonError

__all__ = ["InvalidRequest", "PerceusError", "Warn"]

Warn = Callable[[str, str | None], None]
"""How a service reports a warning: what, and where. ``None`` for where is the caller's own
place, as for errors: the CLI names the command there (``cli/options.py: warner``)."""


class PerceusError(ReasonError):
    """A failure reported as ``perceus: error: <what> (<where>)``."""

    def __init__(self, what: str, where: object = "") -> None:
        super().__init__(what, where)

    @property
    def what(self) -> str:
        return self.reason

    @property
    def where(self) -> str:
        return self.path or ""


class InvalidRequest(PerceusError, InvalidInput):
    """What was asked for is wrong (a name, a value, a range): the CLI exits 2."""
