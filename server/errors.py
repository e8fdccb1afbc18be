"""The one exception type a user ever sees: it carries the exit status and where it happened."""


class PerceusError(Exception):
    """A failure reported as ``perceus: error: <what> (<where>)``.

    ``status`` is 2 for usage mistakes and 1 for everything else, following the
    command-line convention the CLI promises.
    """

    def __init__(self, what: str, where: str = "", status: int = 1) -> None:
        super().__init__(what)
        self.what = what
        self.where = where
        self.status = status

    def __str__(self) -> str:
        return f"{self.what} ({self.where})" if self.where else self.what


class UsageError(PerceusError):
    """A mistake in what the user typed: exit status 2."""

    def __init__(self, what: str, where: str = "") -> None:
        super().__init__(what, where, status=2)
