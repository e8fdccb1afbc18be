"""Every number the protocol fixes: versions, port, frame layout, and a bound on each length a peer states.

A peer is untrusted: each length it can state is checked against one of these before
anything is read or buffered for it.
"""

from typing import Final

from perceus.stage1.protocol.enums import MessageType

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)  # every version this code speaks, ascending
DEFAULT_PORT: Final = 987  # the original Perceus port

MAGIC: Final = b"\x89PRC"  # high bit first: 7-bit mangling and text protocols fail at byte 0
HEADER_SIZE: Final = 12
TRAILER_SIZE: Final = 4  # CRC-32 (zlib / IEEE 802.3) of header + payload, big-endian
FLAG_MORE: Final = 0x0001  # another frame of the same message follows
KNOWN_FLAGS: Final = FLAG_MORE

MAX_FRAME_PAYLOAD: Final = 1 << 20  # bytes of payload in one frame
MAX_SCRIPT: Final = 4 << 20  # bytes of nodescript in one SCRIPT message (several frames)
MAX_CHUNKS: Final = 65536  # entries in an IMAGE_OFFER chunk table
CHUNK_ENTRY_SIZE: Final = 48  # csize u64, usize u64, sha256
MAX_OFFER: Final = 4 << 20  # bytes of IMAGE_OFFER payload (several frames)
MAX_VERSIONS: Final = 16
MAX_STATE: Final = 32
MAX_HOSTNAME: Final = 63
MAX_VNFS_NAME: Final = 128
MAX_IFNAME: Final = 15  # IFNAMSIZ - 1
MAX_HWADDR: Final = 32  # MAX_ADDR_LEN: Ethernet is 6, InfiniBand 20
MAX_INTERFACES: Final = 64
MAX_SERIAL: Final = 128
MAX_ASSET_TAG: Final = 128
MAX_KERNEL_ARGS: Final = 4096
MAX_OUTPUT_TAIL: Final = 64 << 10
MAX_LOG: Final = 4096
MAX_ERROR_MESSAGE: Final = 1024
MAX_REASON: Final = 256
MAX_WAIT: Final = 86400  # seconds
MAX_OBJECT_SIZE: Final = 1 << 40  # image, overlay or kernel
NONCE_SIZE: Final = 32
TAG_SIZE: Final = 32  # HMAC-SHA256
MIN_SITE_KEY: Final = 16
MAX_SITE_KEY: Final = 4096
U32: Final = (1 << 32) - 1
U64: Final = (1 << 64) - 1
I63: Final = (1 << 63) - 1

assert 1024 + MAX_CHUNKS * CHUNK_ENTRY_SIZE + MAX_KERNEL_ARGS + MAX_VNFS_NAME < MAX_OFFER

# Largest payload of one message (after reassembly of its frames).
MAX_MESSAGE: Final = {t: MAX_FRAME_PAYLOAD for t in MessageType} | {
    MessageType.SCRIPT: MAX_SCRIPT,
    MessageType.IMAGE_OFFER: MAX_OFFER,
}


def supported_types() -> str:
    """The message types, for an error message that refuses another."""
    return ", ".join(f"0x{t.value:02x} {t.name}" for t in MessageType)


def supported_versions() -> str:
    """The protocol versions, for an error message that refuses another."""
    return ", ".join(map(str, SUPPORTED_VERSIONS))
