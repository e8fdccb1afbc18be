"""The protocol package's shape: every name the one-module protocol had, and its modules bottom up."""

import ast
from pathlib import Path

from perceus.stage1 import protocol as P

# __all__ of stage1/protocol.py before it became a package.
ALL_BEFORE = {
    "CLOSED", "DEFAULT_PORT", "FLAG_MORE", "MAGIC", "MAX_ASSET_TAG", "MAX_CHUNKS", "MAX_ERROR_MESSAGE",
    "MAX_FRAME_PAYLOAD", "MAX_HOSTNAME", "MAX_HWADDR", "MAX_IFNAME", "MAX_INTERFACES", "MAX_KERNEL_ARGS",
    "MAX_LOG", "MAX_MESSAGE", "MAX_OBJECT_SIZE", "MAX_OFFER", "MAX_OUTPUT_TAIL", "MAX_REASON", "MAX_SCRIPT",
    "MAX_SERIAL", "MAX_STATE", "MAX_VERSIONS", "MAX_VNFS_NAME", "MAX_WAIT", "MESSAGES", "NEED_DATA",
    "PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "TIMEOUTS", "Assign", "AuthChallenge", "AuthResponse", "Bye",
    "ChunkEntry", "Connection", "Error", "ErrorCode", "Event", "Follows", "Frame", "Hello", "ImageData",
    "ImageOffer", "ImageRequest", "Interface", "LocalProtocolError", "Log", "MasterConnection", "Message",
    "MessageType", "NodeConnection", "ObjectKind", "Ping", "Pong", "ProtocolError", "RawBytes",
    "RemoteProtocolError", "Role", "Script", "ScriptResult", "State", "Wait", "check_site_key",
    "decode_frame", "decode_payload", "encode_frame", "encode_message", "encode_payload", "hello_digest",
    "master_proof", "node_response", "timeout_for_state",
}  # fmt: skip
# Its other public names (not imported modules): now in __all__ too.
ALSO_PUBLIC_BEFORE = {
    "CHUNK_ENTRY_SIZE", "HEADER", "HEADER_SIZE", "KNOWN_FLAGS", "MAX_SITE_KEY", "MIN_SITE_KEY",
    "NONCE_SIZE", "TAG_SIZE", "TRAILER", "TRAILER_SIZE", "new_nonce",
}  # fmt: skip

# Bottom up: each module imports only modules before it in this list.
LAYERS = "enums limits adapters sitekey messages errors codec framing machine connection".split()
PACKAGE = Path(P.__file__).parent


def test_every_public_name_is_still_importable_from_the_package():
    assert set(P.__all__) == ALL_BEFORE | ALSO_PUBLIC_BEFORE
    for name in P.__all__:
        assert getattr(P, name) is not None, name
    assert P._VNFS_RE.fullmatch("centos-7.9")  # perceusd checks VNFS names with it


def test_modules_import_only_the_layers_below():
    assert {p.stem for p in PACKAGE.glob("*.py")} == {*LAYERS, "__init__"}
    for i, name in enumerate(LAYERS):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        imported = {
            node.module.rpartition(".")[2]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("perceus.")
        }
        assert imported <= set(LAYERS[:i]), f"{name} imports {imported - set(LAYERS[:i])}"
