"""The protocol's errors: a broken rule, on our side (nothing was sent) or the peer's (the session ends)."""

from perceus.stage1.protocol.adapters import ONE_LINE_BAD
from perceus.stage1.protocol.enums import ErrorCode
from perceus.stage1.protocol.limits import MAX_ERROR_MESSAGE
from perceus.stage1.protocol.messages import Error


class ProtocolError(Exception):
    """A broken rule of the protocol: ``code`` (an :class:`ErrorCode`) and a one-line message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = _error_code(code)
        self.message = message

    def to_event(self) -> Error:
        """The ERROR message that tells the peer about this error."""
        return Error(int(self.code), _clip(ONE_LINE_BAD.sub("?", self.message), MAX_ERROR_MESSAGE))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class LocalProtocolError(ProtocolError):
    """This side tried to send something the protocol forbids; nothing was sent."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; the session is over."""


def _error_code(code: int) -> int:
    try:
        return ErrorCode(code)
    except ValueError:
        return code


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw.decode("utf-8")
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."
