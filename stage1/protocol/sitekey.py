"""Site-key proofs: each end shows it holds the shared key, bound to this HELLO and a fresh nonce.

The master proves itself first (AUTH_CHALLENGE), so a node never answers an impostor; the
two HMACs carry different labels, so neither can be reflected as the other. Tags are
compared in constant time.
"""

import hashlib
import hmac
import os
from typing import Final

from perceus.stage1.protocol.limits import MAX_SITE_KEY, MIN_SITE_KEY, NONCE_SIZE

_LABEL_MASTER: Final = b"perceus/1 master proof\x00"
_LABEL_NODE: Final = b"perceus/1 node response\x00"


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def check_site_key(key: bytes) -> bytes:
    """The key if it is usable (bytes, 16..4096 long); ValueError otherwise."""
    if not isinstance(key, bytes) or not MIN_SITE_KEY <= len(key) <= MAX_SITE_KEY:
        raise ValueError(f"a site key is {MIN_SITE_KEY}..{MAX_SITE_KEY} bytes")
    return key


def hello_digest(hello_payload: bytes) -> bytes:
    """SHA-256 of the HELLO payload: binds the node nonce, NodeID, state and facts into auth."""
    return hashlib.sha256(hello_payload).digest()


def master_proof(key: bytes, digest: bytes, nonce: bytes) -> bytes:
    """HMAC-SHA256(key, "perceus/1 master proof\\0" || hello digest || master nonce)."""
    return hmac.new(key, _LABEL_MASTER + digest + nonce, hashlib.sha256).digest()


def node_response(key: bytes, digest: bytes, nonce: bytes) -> bytes:
    """HMAC-SHA256(key, "perceus/1 node response\\0" || hello digest || master nonce)."""
    return hmac.new(key, _LABEL_NODE + digest + nonce, hashlib.sha256).digest()


def master_proof_holds(key: bytes, digest: bytes, nonce: bytes, proof: bytes) -> bool:
    """Whether ``proof`` is the master's proof for this HELLO digest and nonce."""
    return hmac.compare_digest(proof, master_proof(key, digest, nonce))


def node_response_holds(key: bytes, digest: bytes, nonce: bytes, tag: bytes) -> bool:
    """Whether ``tag`` is the node's response for this HELLO digest and nonce."""
    return hmac.compare_digest(tag, node_response(key, digest, nonce))
