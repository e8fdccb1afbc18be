"""The chunk table: where each zstd frame of an image lies, its sizes and its sha256.

It lets packing run on every core, a transfer resume at any chunk, a node verify each
frame as it arrives, and a rebuilt image reuse the frames of unchanged chunks.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from perceus.imagefmt.image.errors import ImageError, short

__all__ = ["Chunk", "check_table"]

_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class Chunk:
    """One entry of the chunk table."""

    offset: int  # byte offset of this zstd frame from the start of the image member
    csize: int  # compressed size
    usize: int  # uncompressed size (the cpio archive)
    sha256: str  # hex sha256 of the compressed frame

    def as_dict(self) -> dict:
        return {"offset": self.offset, "csize": self.csize, "usize": self.usize, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d) -> "Chunk":
        """A Chunk from untrusted data (a manifest): exact keys, types and ranges."""
        if not isinstance(d, Mapping):
            raise ImageError(f"chunk table entry is not a mapping: {type(d).__name__}")
        keys = {"offset", "csize", "usize", "sha256"}
        if set(d) != keys:
            missing, extra = sorted(keys - set(d)), sorted(map(str, set(d) - keys))
            raise ImageError(f"chunk table entry has missing keys {missing} / unknown keys {short(extra)}")
        for key in ("offset", "csize", "usize"):
            value = d[key]
            if type(value) is not int or not 0 <= value <= _INT64_MAX:
                raise ImageError(f"chunk table entry: {key} {short(value)} is not an integer in 0..2**63-1")
        if d["csize"] == 0:
            raise ImageError("chunk table entry: csize 0 (a zstd frame is never empty)")
        digest = d["sha256"]
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
            raise ImageError(f"chunk table entry: sha256 {short(digest)} is not 64 lowercase hex digits")
        return cls(d["offset"], d["csize"], d["usize"], digest)


def check_table(chunks: Sequence[Chunk]) -> list[Chunk]:
    """The table as a list, every entry a :class:`Chunk` (a caller's table is not trusted to be)."""
    table = list(chunks)
    for i, c in enumerate(table):
        if not isinstance(c, Chunk):
            raise ImageError(f"chunk {i}: not a Chunk but {type(c).__name__}")
    return table
