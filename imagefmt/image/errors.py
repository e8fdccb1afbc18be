"""The one error of image formats: a bad image, chunk table or tree, named in one line."""

__all__ = ["ImageError", "short"]


class ImageError(Exception):
    """A bad image, chunk table or tree; the message names the reason and where."""


def short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a message about untrusted data."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
