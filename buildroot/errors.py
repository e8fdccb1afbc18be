"""Errors of the builders: one line, the reason and (if any) the path it concerns."""

from perceus.common.errors import ReasonError

__all__ = ["BuildError", "ReasonError"]


class BuildError(ReasonError, ValueError):
    """Something a build needs is missing or unusable (stub, objcopy, kernel, an input)."""
