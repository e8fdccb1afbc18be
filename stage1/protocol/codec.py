"""A message and its payload bytes, both ways, with every rule broken reported as a ProtocolError.

Encoding raises LocalProtocolError (we were about to send it), decoding RemoteProtocolError
(the peer sent it); both are total: no other exception comes out, whatever the input.
"""

from dataclasses import fields

import construct as cs

from perceus.stage1.protocol.adapters import Invalid
from perceus.stage1.protocol.enums import ErrorCode
from perceus.stage1.protocol.errors import LocalProtocolError, RemoteProtocolError
from perceus.stage1.protocol.limits import MAX_MESSAGE, supported_types
from perceus.stage1.protocol.messages import MESSAGES, Message


def _reason(exc: cs.ConstructError) -> str:
    lines = str(exc).splitlines()
    where = lines[0].split("->", 1)[1].strip() if lines and "->" in lines[0] else ""
    text = lines[-1] if lines else type(exc).__name__
    if isinstance(exc, cs.TerminatedError):
        text = "trailing bytes after the last field"
    elif isinstance(exc, cs.StreamError):
        text = "truncated"
    return f"{text} (at {where})" if where else text


def encode_payload(message: Message) -> bytes:
    """The payload bytes of one message; LocalProtocolError if a field breaks its rule."""
    name = type(message).__name__
    if not isinstance(message, Message) or type(message) not in MESSAGES.values():
        raise LocalProtocolError(ErrorCode.INTERNAL, f"not a message: {name}")
    try:
        message._check()
        payload = message.STRUCT.build({f.name: getattr(message, f.name) for f in fields(message)})
    except Invalid as exc:
        raise LocalProtocolError(exc.code, f"{message.TYPE.name}: {exc}") from None
    except cs.ConstructError as exc:
        raise LocalProtocolError(ErrorCode.MALFORMED, f"{message.TYPE.name}: {_reason(exc)}") from None
    if len(payload) > MAX_MESSAGE[message.TYPE]:
        raise LocalProtocolError(
            ErrorCode.TOO_LARGE,
            f"{message.TYPE.name}: payload of {len(payload)} bytes, more than {MAX_MESSAGE[message.TYPE]}",
        )
    return payload


def decode_payload(type: int, payload: bytes) -> Message:
    """The message of ``type`` in a whole (reassembled) payload; RemoteProtocolError if bad."""
    cls = MESSAGES.get(type)
    if cls is None:
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type 0x{type:02x}; supported types: {supported_types()}",
        )
    if len(payload) > MAX_MESSAGE[cls.TYPE]:
        raise RemoteProtocolError(
            ErrorCode.TOO_LARGE,
            f"{cls.TYPE.name}: payload of {len(payload)} bytes, more than {MAX_MESSAGE[cls.TYPE]}",
        )
    try:
        parsed = cls.STRUCT.parse(payload)
        message = cls(**{f.name: parsed[f.name] for f in fields(cls)})
        message._check()
    except Invalid as exc:
        raise RemoteProtocolError(exc.code, f"{cls.TYPE.name}: {exc}") from None
    except cs.ConstructError as exc:
        raise RemoteProtocolError(ErrorCode.MALFORMED, f"{cls.TYPE.name}: {_reason(exc)}") from None
    return message
