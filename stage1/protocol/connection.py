"""One session seen from one end, in h11's manner: bytes in, events out; events in, bytes out.

``receive_data(bytes)`` then ``next_event()`` until NEED_DATA; ``send(event)`` returns the
bytes to write. The glue between a :class:`~.framing.FrameReader`, the codec, the tables of
:mod:`.machine` and the site-key proofs; nothing here touches a socket or a clock.
"""

import os
from collections.abc import Callable

from perceus.stage1.protocol.codec import decode_payload, encode_payload
from perceus.stage1.protocol.enums import ErrorCode, Follows, MessageType, ObjectKind, Role, State
from perceus.stage1.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from perceus.stage1.protocol.framing import FrameReader, frames
from perceus.stage1.protocol.limits import NONCE_SIZE, SUPPORTED_VERSIONS, supported_versions
from perceus.stage1.protocol.machine import (
    AFTER_RAW,
    ANNOUNCED,
    ENDED,
    EXPECTED,
    ROUTES,
    SPEAKER,
    TRANSITIONS,
    check_turn,
    timeout_for_state,
)
from perceus.stage1.protocol.messages import (
    CLOSED,
    NEED_DATA,
    Assign,
    AuthChallenge,
    AuthResponse,
    Error,
    Event,
    Hello,
    ImageData,
    ImageOffer,
    ImageRequest,
    Message,
    RawBytes,
    Sentinel,
    Wait,
)
from perceus.stage1.protocol.sitekey import (
    check_site_key,
    hello_digest,
    master_proof,
    master_proof_holds,
    node_response,
    node_response_holds,
)

_T = MessageType


class Connection:
    """One session seen from one end; see :class:`NodeConnection` and :class:`MasterConnection`."""

    role: Role
    peer: Role

    def __init__(
        self, *, site_key: bytes | None = None, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.site_key = None if site_key is None else check_site_key(site_key)
        self._random = random_bytes
        self._state = State.HELLO
        self.hello: Hello | None = None
        self.assignment: Assign | None = None
        self.offer: ImageOffer | None = None
        self.authenticated = False  # the peer proved it holds the site key
        self.peer_error: Error | None = None  # the ERROR the peer sent, if any
        self._digest: bytes | None = None  # hello_digest of the HELLO payload
        self._nonce: bytes | None = None  # the master's challenge nonce
        self._request: tuple[ObjectKind, int, int] | None = None  # pending (kind, offset, length)
        self._route: tuple[State, ...] = ()  # the steps the ASSIGN announced, not yet taken
        self._raw_owed = 0  # master: raw bytes of the IMAGE_DATA sent, not yet sent
        self._error_sent = False
        self._failure: RemoteProtocolError | None = None
        self._reader = FrameReader()
        self._eof = False
        self.version = self._reader.version  # the highest both ends speak, once HELLO is through

    # -- what the I/O layer asks --

    @property
    def state(self) -> State:
        return self._state

    @property
    def our_turn(self) -> bool:
        """True when the next move that advances the session is ours (or ours to stream)."""
        return SPEAKER.get(self._state) is self.role

    @property
    def waiting_for(self) -> frozenset[MessageType]:
        """What the peer may send next to advance the session (IMAGE_DATA in RAW: its bytes)."""
        if SPEAKER.get(self._state) is not self.peer:
            return frozenset()
        return EXPECTED[self._state]

    @property
    def timeout(self) -> float | None:
        """Idle seconds to allow the peer now; None when it is our move or the session has ended."""
        return None if self.our_turn else timeout_for_state(self._state)

    def deadline(self, now: float) -> float | None:
        """``now`` plus :attr:`timeout` (any monotonic clock), or None when there is nothing to wait for."""
        timeout = self.timeout
        return None if timeout is None else now + timeout

    @property
    def raw_remaining(self) -> int:
        """Raw bytes of the current IMAGE_DATA not yet handed out (node) or not yet sent (master)."""
        return self._reader.raw_left

    # -- receiving --

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means it closed its side. Feed only after NEED_DATA."""
        if not data:
            self._eof = True
            return
        if self._eof or self._state in ENDED or self._failure is not None:
            return
        self._reader.feed(data)

    def next_event(self) -> Event | Sentinel:
        """The next event from the peer, NEED_DATA, or CLOSED; raises RemoteProtocolError."""
        if self._failure is not None:
            raise self._failure
        if self._state in ENDED:
            return CLOSED
        try:
            event = self._next_event()
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise
        except Exception as exc:  # never reached by any input the tests know; keeps the parse total
            self._fail(
                RemoteProtocolError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
            )
            raise self._failure from exc
        if event is NEED_DATA and self._eof:
            where = " in the middle of a frame" if self._reader.buffered else ""
            self._fail(
                RemoteProtocolError(
                    ErrorCode.CONNECTION_LOST,
                    f"the {self.peer.value} closed the connection{where} in state {self._state.name}",
                )
            )
            raise self._failure
        return event

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._failure = exc
        self._state = State.FAILED
        self._reader.clear()

    def _next_event(self) -> Event | Sentinel:
        reader = self._reader
        got = reader.next(self._check_peer_header)
        if got is None:
            return NEED_DATA
        if got.__class__ is RawBytes:
            if not reader.raw_left:
                self._state = AFTER_RAW
            return got
        t, payload = got
        message = decode_payload(t, payload)
        self._advance(message, payload, RemoteProtocolError)
        return message

    def _check_peer_header(self, t: MessageType) -> None:
        check_turn(self._state, self.peer, t, RemoteProtocolError)

    # -- sending --

    def send(self, event: Event) -> bytes:
        """The bytes that carry ``event`` to the peer; LocalProtocolError (and no change) if forbidden."""
        if isinstance(event, RawBytes):
            return self._send_raw(event.data)
        if not isinstance(event, Message):
            raise LocalProtocolError(ErrorCode.INTERNAL, f"cannot send {type(event).__name__}")
        if isinstance(event, Error):
            return self._send_error(event)
        check_turn(self._state, self.role, event.TYPE, LocalProtocolError, self._raw_owed)
        payload = encode_payload(event)
        self._advance(event, payload, LocalProtocolError)
        return frames(event.TYPE, payload, self.version)

    def _send_raw(self, data: bytes) -> bytes:
        self._account_raw(len(data))
        return bytes(data)

    def _account_raw(self, count: int) -> None:
        raise LocalProtocolError(ErrorCode.UNEXPECTED, f"the {self.role.value} never sends raw bytes")

    def _send_error(self, event: Error) -> bytes:
        if self._error_sent or self._state is State.DONE:
            raise LocalProtocolError(ErrorCode.UNEXPECTED, "ERROR after the session ended")
        payload = encode_payload(event)
        self._error_sent = True
        self._state = State.FAILED
        if self._raw_owed:
            # An ERROR cannot be framed in the middle of raw bytes: drop it; the I/O layer closes.
            self._raw_owed = 0
            return b""
        return frames(_T.ERROR, payload, self.version)

    # -- the rules --

    def _advance(self, m: Message, payload: bytes, err: type[ProtocolError]) -> None:
        """Apply ``m`` (its turn already checked): its own checks first (raising ``err``), then changes."""
        following = TRANSITIONS[(self._state, m.TYPE)]
        effect = _EFFECTS.get(m.TYPE)
        if effect is not None:
            effect(self, m, payload, err)
        if following is ANNOUNCED:
            following, self._route = self._route[0], self._route[1:]
        elif following is State.RAW and not self.raw_remaining:
            following = AFTER_RAW
        self._state = following

    def _on_error(self, m: Error, payload: bytes, err: type[ProtocolError]) -> None:
        self.peer_error = m

    def _on_hello(self, m: Hello, payload: bytes, err: type[ProtocolError]) -> None:
        versions = sorted(set(m.versions) & set(SUPPORTED_VERSIONS))
        if not versions:
            offered = ", ".join(map(str, m.versions))
            raise err(
                ErrorCode.UNSUPPORTED_VERSION,
                f"the node speaks versions {offered}; supported versions: {supported_versions()}",
            )
        self.version = self._reader.version = versions[-1]
        self.hello, self._digest = m, hello_digest(payload)

    def _on_auth_challenge(self, m: AuthChallenge, payload: bytes, err: type[ProtocolError]) -> None:
        self._on_challenge(m, err)
        self._nonce = m.nonce

    def _on_auth_response(self, m: AuthResponse, payload: bytes, err: type[ProtocolError]) -> None:
        self.authenticated = self._on_response(m, err)

    def _on_assign(self, m: Assign, payload: bytes, err: type[ProtocolError]) -> None:
        if self._state is State.ANSWER:
            self._on_unchallenged(m, err)
        self.assignment = m
        self._route = ROUTES[Follows(m.follows)]

    def _on_wait(self, m: Wait, payload: bytes, err: type[ProtocolError]) -> None:
        if self._state is State.ANSWER:
            self._on_unchallenged(m, err)

    def _on_image_offer(self, m: ImageOffer, payload: bytes, err: type[ProtocolError]) -> None:
        self.offer = m

    def _on_image_request(self, m: ImageRequest, payload: bytes, err: type[ProtocolError]) -> None:
        assert self.offer is not None
        size = self.offer.size_of(m.kind)
        length = m.length or size - m.offset
        if m.offset > size or m.offset + length > size:
            raise err(
                ErrorCode.BAD_RANGE,
                f"IMAGE_REQUEST for {m.kind.name} bytes {m.offset}+{m.length}: the {m.kind.name} has {size}",
            )
        self._request = (m.kind, m.offset, length)

    def _on_image_data(self, m: ImageData, payload: bytes, err: type[ProtocolError]) -> None:
        assert self._request is not None  # IMAGE_DATA is only in turn after an IMAGE_REQUEST
        if (m.kind, m.offset, m.length) != self._request:
            asked = "{} {}+{}".format(self._request[0].name, *self._request[1:])
            raise err(
                ErrorCode.UNEXPECTED,
                f"IMAGE_DATA {m.kind.name} {m.offset}+{m.length} does not answer the request ({asked})",
            )
        self._request = None
        self._expect_raw(m.length)

    # role hooks
    def _on_challenge(self, m: AuthChallenge, err: type[ProtocolError]) -> None:
        raise NotImplementedError

    def _on_response(self, m: AuthResponse, err: type[ProtocolError]) -> bool:
        raise NotImplementedError

    def _on_unchallenged(self, m: Assign | Wait, err: type[ProtocolError]) -> None:
        raise NotImplementedError

    def _expect_raw(self, length: int) -> None:
        """An IMAGE_DATA announced ``length`` raw bytes: the node is to receive them, the master owes them."""
        raise NotImplementedError


# What a message does to the session besides moving it to its next state (checks, then records).
_EFFECTS: dict[MessageType, Callable[[Connection, Message, bytes, type[ProtocolError]], None]] = {
    _T.ERROR: Connection._on_error,
    _T.HELLO: Connection._on_hello,
    _T.AUTH_CHALLENGE: Connection._on_auth_challenge,
    _T.AUTH_RESPONSE: Connection._on_auth_response,
    _T.ASSIGN: Connection._on_assign,
    _T.WAIT: Connection._on_wait,
    _T.IMAGE_OFFER: Connection._on_image_offer,
    _T.IMAGE_REQUEST: Connection._on_image_request,
    _T.IMAGE_DATA: Connection._on_image_data,
}


class NodeConnection(Connection):
    """The node's end: sends HELLO first, runs what the master sends, receives raw image bytes.

    With a ``site_key`` the node also requires the master to prove the key (in AUTH_CHALLENGE)
    before it accepts an ASSIGN or WAIT, unless ``require_master_auth`` is False.
    """

    role = Role.NODE
    peer = Role.MASTER

    def __init__(
        self,
        *,
        site_key: bytes | None = None,
        require_master_auth: bool = True,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(site_key=site_key, random_bytes=random_bytes)
        self.require_master_auth = require_master_auth and site_key is not None

    def make_hello(self, nodeid: str, state: str, **facts) -> Hello:
        """A HELLO with a fresh node nonce from this connection's random source."""
        return Hello(nodeid, state, node_nonce=self._random(NONCE_SIZE), **facts)

    def raw_wanted(self) -> int:
        """Raw bytes the node may take straight from its receive buffer now (see :meth:`take_raw`)."""
        if self._failure is not None or self._eof or self._state is not State.RAW:
            return 0
        return self._reader.raw_wanted

    def take_raw(self, count: int) -> int:
        """Consume up to ``count`` freshly received bytes as raw image bytes without copying them.

        For a node that hashes raw bytes where they landed: when :meth:`raw_wanted` is non-zero,
        the first ``min(count, raw_wanted())`` bytes just received are raw bytes the caller
        consumes itself (as if they had come out as RawBytes); it passes only the rest to
        :meth:`receive_data`. Returns how many it took; 0 when raw bytes cannot be taken now.
        """
        if self._failure is not None or self._eof or self._state is not State.RAW:
            return 0
        reader = self._reader
        k = reader.take_raw(count)
        if k and not reader.raw_left:
            self._state = AFTER_RAW
        return k

    def auth_response(self) -> AuthResponse:
        """The answer to the challenge received: the HMAC tag, or empty without a site key."""
        if self._nonce is None or self._digest is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED, "no AUTH_CHALLENGE to respond to")
        if self.site_key is None:
            return AuthResponse(b"")
        return AuthResponse(node_response(self.site_key, self._digest, self._nonce))

    def _expect_raw(self, length: int) -> None:
        self._reader.expect_raw(length)

    def _on_challenge(self, m: AuthChallenge, err: type[ProtocolError]) -> None:
        if self.site_key is None:
            return
        assert self._digest is not None
        if not master_proof_holds(self.site_key, self._digest, m.nonce, m.proof):
            raise err(ErrorCode.AUTH_FAILED, "the master's proof is wrong: it does not hold this site key")
        self.authenticated = True

    def _on_response(self, m: AuthResponse, err: type[ProtocolError]) -> bool:
        return self.authenticated

    def _on_unchallenged(self, m: Assign | Wait, err: type[ProtocolError]) -> None:
        if self.require_master_auth:
            raise err(ErrorCode.AUTH_FAILED, f"{m.TYPE.name} from a master that did not prove the site key")


class MasterConnection(Connection):
    """The master's end (perceusd, one per node connection).

    With a ``site_key`` the master must challenge after HELLO (ASSIGN and WAIT are refused
    until the node answered); a node with a wrong tag fails; a node that answers without a
    tag passes unauthenticated unless ``auth_required`` (``node auth = required``).
    """

    role = Role.MASTER
    peer = Role.NODE

    def __init__(
        self,
        *,
        site_key: bytes | None = None,
        auth_required: bool = False,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if auth_required and site_key is None:
            raise ValueError("node auth = required needs a site key")
        super().__init__(site_key=site_key, random_bytes=random_bytes)
        self.auth_required = auth_required

    @property
    def raw_remaining(self) -> int:
        """Raw bytes of the current IMAGE_DATA not yet sent."""
        return self._raw_owed

    def challenge(self) -> AuthChallenge:
        """An AUTH_CHALLENGE for the HELLO received: a fresh nonce and the master's proof."""
        if self.site_key is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED, "no site key to challenge with")
        if self._digest is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED, "AUTH_CHALLENGE before HELLO")
        nonce = self._random(NONCE_SIZE)
        return AuthChallenge(nonce, master_proof(self.site_key, self._digest, nonce))

    def image_data(self) -> ImageData:
        """The IMAGE_DATA header that answers the pending IMAGE_REQUEST."""
        if self._request is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED, "no IMAGE_REQUEST to answer")
        return ImageData(*self._request)

    @property
    def pending_request(self) -> tuple[ObjectKind, int, int] | None:
        """(kind, offset, length) the node asked for and the master has yet to announce."""
        return self._request

    def raw_sent(self, count: int) -> None:
        """Record ``count`` raw bytes written outside :meth:`send` (by sendfile); 0 is a no-op.

        Account for them before reading further input: the node may answer as soon as they arrive.
        """
        self._account_raw(count)

    def _account_raw(self, count: int) -> None:
        if not count:
            return
        if self._state is not State.RAW:
            raise LocalProtocolError(ErrorCode.UNEXPECTED, f"raw bytes in state {self._state.name}")
        if count > self._raw_owed:
            raise LocalProtocolError(
                ErrorCode.BAD_RANGE, f"{count} raw bytes, but only {self._raw_owed} remain of the IMAGE_DATA"
            )
        self._raw_owed -= count
        if not self._raw_owed:
            self._state = AFTER_RAW

    def _expect_raw(self, length: int) -> None:
        self._raw_owed = length

    def _on_challenge(self, m: AuthChallenge, err: type[ProtocolError]) -> None:
        if self.site_key is None:
            raise err(ErrorCode.UNEXPECTED, "AUTH_CHALLENGE without a site key")
        assert self._digest is not None
        if not master_proof_holds(self.site_key, self._digest, m.nonce, m.proof):
            raise err(ErrorCode.AUTH_FAILED, "AUTH_CHALLENGE proof does not match this HELLO and nonce")

    def _on_response(self, m: AuthResponse, err: type[ProtocolError]) -> bool:
        assert self.site_key is not None and self._digest is not None and self._nonce is not None
        if not m.tag:
            if self.auth_required:
                raise err(ErrorCode.AUTH_REQUIRED, "this master requires the site key (node auth = required)")
            return False
        if not node_response_holds(self.site_key, self._digest, self._nonce, m.tag):
            raise err(ErrorCode.AUTH_FAILED, "wrong AUTH_RESPONSE: the node does not hold this site key")
        return True

    def _on_unchallenged(self, m: Assign | Wait, err: type[ProtocolError]) -> None:
        if self.site_key is not None:
            raise err(
                ErrorCode.UNEXPECTED, f"{m.TYPE.name} before AUTH_CHALLENGE: this master has a site key"
            )
