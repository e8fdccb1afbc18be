"""The reason-and-path error every room raises, and the mark of a caller's mistake.

``str()`` is ``reason (path)``: what the CLI prints after ``perceus: error:``. The CLI
maps :class:`InvalidInput` to exit status 2 and every other :class:`ReasonError` to 1, in
one place; the rooms never decide exit statuses.
"""

__all__ = ["InvalidInput", "ReasonError"]


class ReasonError(Exception):
    """A refusal or failure in one line: what went wrong, and where (a file, a key, a value)."""

    def __init__(self, reason: str, path: object = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = None if path is None or path == "" else str(path)

    def __str__(self) -> str:
        return f"{self.reason} ({self.path})" if self.path else self.reason


class InvalidInput(ReasonError):
    """What was asked for is wrong (a name, a value, an option): the caller's mistake."""
