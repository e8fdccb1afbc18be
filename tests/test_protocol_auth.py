"""The optional site key: HMAC-SHA256 challenge-response, both ways, bound to the HELLO.

master proof = HMAC(key, "perceus/1 master proof\\0" || sha256(HELLO payload) || master nonce)
node tag     = HMAC(key, "perceus/1 node response\\0" || sha256(HELLO payload) || master nonce)

The HELLO payload holds the node's fresh nonce, so a proof is good for one session only;
the master's nonce makes a node tag good for one challenge only.
"""

import hashlib
import hmac

import pytest

from perceus.stage1 import protocol as P
from perceus.stage1.protocol import (
    Assign,
    AuthChallenge,
    AuthResponse,
    ErrorCode,
    Hello,
    LocalProtocolError,
    MasterConnection,
    NodeConnection,
    RemoteProtocolError,
    State,
    Wait,
)

from tests.support.protocol_harness import (
    DOC,
    KEY,
    MAC,
    Pair,
    deliver,
    example_hello,
    make_objects,
    provision,
)

OTHER_KEY = b"another site key, also 32 bytes!"


def test_right_key_passes_both_ways():
    pair = Pair(40, "one", node_key=KEY, master_key=KEY, auth_required=True)
    pair.hello()
    pair.authenticate()
    assert pair.master.authenticated and pair.node.authenticated
    provision(pair, make_objects(pair.rng, 2000))


def test_wrong_key_at_the_node_fails_at_the_master():
    pair = Pair(41, "random", master_key=KEY)
    hello = pair.hello()
    challenge = pair.master.challenge()
    pair.to_node(challenge)
    digest = P.hello_digest(P.encode_payload(hello))
    forged = AuthResponse(P.node_response(OTHER_KEY, digest, challenge.nonce))
    with pytest.raises(RemoteProtocolError) as info:
        pair.to_master(forged)
    assert info.value.code is ErrorCode.AUTH_FAILED
    # a node that fails gets nothing: only an ERROR can still be sent to it
    for message in (Assign("n1"), Wait(5)):
        with pytest.raises(LocalProtocolError):
            pair.master.send(message)
    error = info.value.to_event()
    assert deliver(pair.node, pair.master.send(error), pair.rng, "whole") == [error]


def test_wrong_key_at_the_master_fails_at_the_node():
    pair = Pair(42, "random", node_key=KEY, master_key=OTHER_KEY)
    pair.hello()
    with pytest.raises(RemoteProtocolError) as info:
        pair.to_node(pair.master.challenge())
    assert info.value.code is ErrorCode.AUTH_FAILED
    assert "does not hold this site key" in info.value.message


def test_keyless_node_and_required_auth():
    pair = Pair(43, "small", master_key=KEY, auth_required=True)
    pair.hello()
    pair.to_node(pair.master.challenge())
    assert pair.node.auth_response() == AuthResponse(b"")
    with pytest.raises(RemoteProtocolError) as info:
        pair.to_master(pair.node.auth_response())
    assert info.value.code is ErrorCode.AUTH_REQUIRED


def test_node_with_a_key_refuses_a_master_without_one():
    pair = Pair(44, "small", node_key=KEY)
    pair.hello()
    with pytest.raises(RemoteProtocolError) as info:
        pair.to_node(Assign("n1"))
    assert info.value.code is ErrorCode.AUTH_FAILED
    assert "did not prove the site key" in info.value.message
    # unless told to accept one
    pair = Pair(45, "small", node_key=KEY, require_master_auth=False)
    pair.hello()
    assert pair.to_node(Assign("n1")) == [Assign("n1")]
    assert not pair.node.authenticated


def test_replayed_response_fails_against_a_new_challenge():
    # session 1, observed on the wire: HELLO, challenge, good response
    first = Pair(46, "whole", node_key=KEY, master_key=KEY)
    hello_bytes = first.node.send(first.node.make_hello(MAC, "init"))
    deliver(first.master, hello_bytes, first.rng, "whole")
    first.to_node(first.master.challenge())
    response_bytes = first.node.send(first.node.auth_response())
    assert deliver(first.master, response_bytes, first.rng, "whole")
    assert first.master.authenticated
    # session 2: the attacker replays the same HELLO and response to a fresh master
    second = Pair(47, "whole", master_key=KEY)
    deliver(second.master, hello_bytes, second.rng, "whole")
    second.master.send(second.master.challenge())  # a new nonce the attacker cannot answer
    with pytest.raises(RemoteProtocolError) as info:
        deliver(second.master, response_bytes, second.rng, "whole")
    assert info.value.code is ErrorCode.AUTH_FAILED


def test_replayed_challenge_fails_against_a_new_hello():
    first = Pair(48, "whole", node_key=KEY, master_key=KEY)
    first.hello()
    challenge_bytes = first.master.send(first.master.challenge())
    # a fake master replays that challenge to the node's next session (a new node nonce)
    second = Pair(49, "whole", node_key=KEY)
    second.node.send(second.node.make_hello(MAC, "init"))
    with pytest.raises(RemoteProtocolError) as info:
        deliver(second.node, challenge_bytes, second.rng, "whole")
    assert info.value.code is ErrorCode.AUTH_FAILED


def test_tampered_hello_fails():
    """A man in the middle turns the node's `ready` into `init`: neither side's HMAC matches."""
    pair = Pair(50, "whole", node_key=KEY, master_key=KEY)
    sent = pair.node.make_hello(MAC, "ready")
    pair.node.send(sent)
    tampered = Hello(**{**sent.__dict__, "state": "init"})
    deliver(pair.master, P.encode_message(tampered), pair.rng, "whole")
    challenge = pair.master.challenge()
    with pytest.raises(RemoteProtocolError):
        deliver(pair.node, pair.master.send(challenge), pair.rng, "whole")
    real_tag = P.node_response(KEY, P.hello_digest(P.encode_payload(sent)), challenge.nonce)
    with pytest.raises(RemoteProtocolError) as info:
        deliver(pair.master, P.encode_message(AuthResponse(real_tag)), pair.rng, "whole")
    assert info.value.code is ErrorCode.AUTH_FAILED


def test_auth_rules_on_send():
    keyed = Pair(51, "whole", master_key=KEY)
    with pytest.raises(LocalProtocolError):
        keyed.master.challenge()  # before HELLO
    keyed.hello()
    with pytest.raises(LocalProtocolError) as info:
        keyed.master.send(Assign("n1"))  # a master with a key challenges first
    assert "before AUTH_CHALLENGE" in info.value.message
    with pytest.raises(LocalProtocolError):
        keyed.master.send(AuthChallenge(bytes(32), bytes(32)))  # a proof that is not the master's
    with pytest.raises(LocalProtocolError):
        keyed.node.auth_response()  # nothing to respond to yet
    keyless = Pair(52, "whole")
    keyless.hello()
    with pytest.raises(LocalProtocolError):
        keyless.master.challenge()
    with pytest.raises(LocalProtocolError):
        keyless.master.send(AuthChallenge(bytes(32), bytes(32)))
    assert keyless.master.state is State.ANSWER


def test_hmac_construction():
    digest = hashlib.sha256(b"payload").digest()
    nonce = bytes(range(32))
    assert (
        P.master_proof(KEY, digest, nonce)
        == hmac.new(KEY, b"perceus/1 master proof\x00" + digest + nonce, hashlib.sha256).digest()
    )
    assert (
        P.node_response(KEY, digest, nonce)
        == hmac.new(KEY, b"perceus/1 node response\x00" + digest + nonce, hashlib.sha256).digest()
    )
    assert P.master_proof(KEY, digest, nonce) != P.node_response(KEY, digest, nonce)  # no reflection


def test_tags_are_compared_in_constant_time(monkeypatch):
    calls = []
    original = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    pair = Pair(53, "whole", node_key=KEY, master_key=KEY)
    pair.hello()
    pair.authenticate()
    assert len(calls) == 3  # master checks its own proof on send, node checks it, master checks the tag
    assert all(len(a) == len(b) == P.TAG_SIZE for a, b in calls)


def test_site_key_bounds():
    for bad in (b"", b"x" * 15, "a string key of enough length", b"x" * 4097):
        with pytest.raises(ValueError):
            MasterConnection(site_key=bad)
        with pytest.raises(ValueError):
            NodeConnection(site_key=bad)


def test_docs_test_vector():
    digest = P.hello_digest(P.encode_payload(example_hello()))
    key, nonce = b"example site key (32 bytes) !!!!", b"\xa5" * 32
    text = DOC.read_text()
    assert f"digest = {digest.hex()}" in text
    assert f"proof  = {P.master_proof(key, digest, nonce).hex()}" in text
    assert f"tag    = {P.node_response(key, digest, nonce).hex()}" in text
