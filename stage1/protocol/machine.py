"""The session's rules as data: who speaks in each state, and ``(state, message type) -> next state``.

Both ends consult the same tables: a connection checks a message against :func:`check_turn`
before it is sent or while its first header arrives, and moves to ``TRANSITIONS[(state,
type)]`` once the message is whole. Two steps depend on the message itself: an ASSIGN
leads where it announced (:data:`ROUTES`), and the RAW state that an IMAGE_DATA opens
closes once its bytes are through (at once for none).
"""

from typing import Final

from perceus.stage1.protocol.enums import ErrorCode, Follows, MessageType, Role, State
from perceus.stage1.protocol.errors import ProtocolError

_T = MessageType
_S = State

# Who may send each type at all.
SENDERS: Final[dict[MessageType, frozenset[Role]]] = (
    {t: frozenset({Role.NODE, Role.MASTER}) for t in MessageType}
    | {
        t: frozenset({Role.NODE})
        for t in (_T.HELLO, _T.AUTH_RESPONSE, _T.SCRIPT_RESULT, _T.IMAGE_REQUEST, _T.BYE)
    }
    | {
        t: frozenset({Role.MASTER})
        for t in (_T.AUTH_CHALLENGE, _T.ASSIGN, _T.WAIT, _T.SCRIPT, _T.IMAGE_OFFER, _T.IMAGE_DATA)
    }
)

# Whose move it is in each state of a live session (in RAW: the master's, streaming raw bytes).
SPEAKER: Final[dict[State, Role]] = {
    _S.HELLO: Role.NODE,
    _S.ANSWER: Role.MASTER,
    _S.AUTH: Role.NODE,
    _S.ASSIGN: Role.MASTER,
    _S.SCRIPT: Role.MASTER,
    _S.SCRIPT_RESULT: Role.NODE,
    _S.OFFER: Role.MASTER,
    _S.REQUEST: Role.NODE,
    _S.IMAGE_DATA: Role.MASTER,
    _S.RAW: Role.MASTER,
    _S.FINISH: Role.NODE,
}
ENDED: Final = frozenset({_S.DONE, _S.FAILED})
ANYTIME: Final = frozenset({_T.LOG, _T.PING, _T.PONG})  # either side, after HELLO, before the end


class _Announced:
    """In TRANSITIONS: the next of the steps the ASSIGN announced (see ROUTES)."""

    def __repr__(self) -> str:
        return "ANNOUNCED"


ANNOUNCED: Final = _Announced()
AFTER_RAW: Final = _S.REQUEST  # where RAW leads once the IMAGE_DATA's bytes are all through

# The moves that advance a session.
_ADVANCING: Final[dict[tuple[State, MessageType], State | _Announced]] = {
    (_S.HELLO, _T.HELLO): _S.ANSWER,
    (_S.ANSWER, _T.AUTH_CHALLENGE): _S.AUTH,
    (_S.ANSWER, _T.ASSIGN): ANNOUNCED,
    (_S.ANSWER, _T.WAIT): _S.DONE,
    (_S.AUTH, _T.AUTH_RESPONSE): _S.ASSIGN,
    (_S.ASSIGN, _T.ASSIGN): ANNOUNCED,
    (_S.ASSIGN, _T.WAIT): _S.DONE,
    (_S.SCRIPT, _T.SCRIPT): _S.SCRIPT_RESULT,
    (_S.SCRIPT_RESULT, _T.SCRIPT_RESULT): ANNOUNCED,
    (_S.OFFER, _T.IMAGE_OFFER): _S.REQUEST,
    (_S.REQUEST, _T.IMAGE_REQUEST): _S.IMAGE_DATA,
    (_S.REQUEST, _T.BYE): _S.DONE,
    (_S.IMAGE_DATA, _T.IMAGE_DATA): _S.RAW,
    (_S.FINISH, _T.BYE): _S.DONE,
}
# What the peer may send to advance the session in each state (RAW: IMAGE_DATA's bytes).
EXPECTED: Final[dict[State, frozenset[MessageType]]] = {
    state: frozenset(t for (s, t) in _ADVANCING if s is state) for state in SPEAKER
} | {_S.RAW: frozenset({_T.IMAGE_DATA})}

# (state, message type) -> the next state: the advancing moves, LOG/PING/PONG in place after
# HELLO, and ERROR, which ends any live session.
TRANSITIONS: Final[dict[tuple[State, MessageType], State | _Announced]] = (
    _ADVANCING
    | {(s, t): s for s in SPEAKER if s is not _S.HELLO for t in ANYTIME}
    | {(s, _T.ERROR): _S.FAILED for s in SPEAKER}
)

# The steps an ASSIGN announces, in order: each ANNOUNCED transition takes the next one.
ROUTES: Final[dict[Follows, tuple[State, ...]]] = {
    Follows.NOTHING: (_S.FINISH,),
    Follows.SCRIPT: (_S.SCRIPT, _S.FINISH),
    Follows.IMAGE: (_S.OFFER,),
    Follows.SCRIPT | Follows.IMAGE: (_S.SCRIPT, _S.OFFER),
}

# Idle seconds a side waits for the peer's next move in each state (the I/O layer enforces
# them; in RAW the time between received bytes). SCRIPT_RESULT covers the nodescript's run.
TIMEOUTS: Final = {
    _S.HELLO: 30.0,
    _S.ANSWER: 60.0,
    _S.AUTH: 30.0,
    _S.ASSIGN: 60.0,
    _S.SCRIPT: 60.0,
    _S.SCRIPT_RESULT: 1800.0,
    _S.OFFER: 120.0,
    _S.REQUEST: 60.0,
    _S.IMAGE_DATA: 60.0,
    _S.RAW: 60.0,
    _S.FINISH: 60.0,
}


def timeout_for_state(state: State) -> float | None:
    """Seconds the waiting side allows the speaking side in ``state`` (None once ended)."""
    return TIMEOUTS.get(state)


def _names(types: frozenset[MessageType]) -> str:
    return " | ".join(sorted(t.name for t in types))


def check_turn(
    state: State, sender: Role, t: MessageType, err: type[ProtocolError], raw_owed: int = 0
) -> None:
    """Raise ``err`` unless ``sender`` may send a ``t`` in ``state``.

    ``raw_owed``: raw bytes the sender still owes of an IMAGE_DATA; nothing but an ERROR
    may be framed before they are sent.
    """
    if state in ENDED:
        raise err(ErrorCode.UNEXPECTED, f"{t.name} after the session ended")
    if sender not in SENDERS[t]:
        (only,) = SENDERS[t]
        raise err(ErrorCode.UNEXPECTED, f"{t.name} is sent by the {only.value}, not the {sender.value}")
    if t is _T.ERROR:
        return
    if raw_owed:
        raise err(ErrorCode.UNEXPECTED, f"{t.name} while {raw_owed} raw bytes are still owed")
    if t in ANYTIME:
        if state is _S.HELLO:
            raise err(ErrorCode.UNEXPECTED, f"{t.name} before HELLO")
        return
    speaker = SPEAKER[state]
    if sender is not speaker or (state, t) not in _ADVANCING:
        expected = "raw bytes" if state is _S.RAW else _names(EXPECTED[state])
        raise err(
            ErrorCode.UNEXPECTED,
            f"{t.name} from the {sender.value} in state {state.name}; expected {expected} from the "
            f"{speaker.value}",
        )
