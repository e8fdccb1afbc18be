"""The self-describing zstd container behind ``.vnfs`` capsules and ``.pmod`` modules.

One file: an 80-byte header (magic, format version, flags, where the manifest is, its
sha256, a CRC of the header), the members, and a JSON manifest naming every member's
offset, size and sha256. The root tree is the member ``rootfs``: ``imagefmt``'s chunked
image (whole cpio archives, one zstd frame each), bootable as an initramfs as it lies.
``docs/capsule-format.md`` is the byte-level specification.

The API (everything raises :class:`CapsuleError`, whose ``str()`` is one line naming
the reason; :class:`MetaError`, a subclass, means the metadata asked for is wrong)::

    manifest = capsule.pack(root, out, capsule.Meta(name, version, ...), kernel=..., ...)
    plan = capsule.plan_pack(...); capsule.write_capsule(plan)  # the same, in two steps
    with capsule.open(path) as c:      # header + manifest checked
        c.manifest                     # Manifest: kind, name, ..., members
        c.read_member("config")        # bytes, sha256-checked
        c.copy_member("kernel", f)     # streamed, sha256-checked at the end
        c.rootfs_chunks, c.rootfs_base # for imagefmt.image (serve/extract from c.fileobj)
    capsule.verify(path)               # every byte; returns the manifest
    capsule.unpack(path, dest)         # dest/rootfs + the other members beside it
    capsule.legacy.convert(old, out)   # an original bzip2-tar capsule into a capsule
    capsule.capsule_filename(meta_or_manifest)  # name-version-revision.state.arch.vnfs

Writes are atomic: built beside the target, fsynced, renamed.
"""

from perceus.capsule import legacy
from perceus.capsule.format import (
    FORMAT_VERSION,
    MAGIC,
    CapsuleError,
    Manifest,
    Member,
    MetaError,
    open_regular,
)
from perceus.capsule.meta import Meta, capsule_filename, read_config
from perceus.capsule.names import parse_capsule_filename
from perceus.capsule.plan import ImageSource, PackOptions, PackPlan, plan_pack
from perceus.capsule.reader import Capsule, unpack, verify
from perceus.capsule.reader import open_capsule as open  # noqa: A004 - capsule.open(path)
from perceus.capsule.writer import output_path, pack, write_capsule

__all__ = [
    "FORMAT_VERSION",
    "Capsule",
    "ImageSource",
    "CapsuleError",
    "Manifest",
    "Member",
    "Meta",
    "MetaError",
    "PackOptions",
    "PackPlan",
    "capsule_filename",
    "is_capsule",
    "legacy",
    "open",
    "output_path",
    "pack",
    "parse_capsule_filename",
    "plan_pack",
    "read_config",
    "unpack",
    "verify",
    "write_capsule",
]


def is_capsule(path) -> bool:
    """Whether the file starts with the capsule magic (it may still be damaged)."""
    with open_regular(path) as f:
        return f.read(len(MAGIC)) == MAGIC
