"""Errors of the builders: one line, the reason and (if any) the path it concerns."""

__all__ = ["BuildError", "ReasonError"]


class ReasonError(Exception):
    """``str()`` is ``reason (path)``: what the CLI prints after ``perceus: error:``."""

    def __init__(self, reason: str, path: object = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return f"{self.reason} ({self.path})" if self.path else self.reason


class BuildError(ReasonError, ValueError):
    """Something a build needs is missing or unusable (stub, objcopy, kernel, an input)."""
