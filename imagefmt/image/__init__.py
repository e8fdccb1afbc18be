"""Node images: a root tree as a sequence of zstd-compressed cpio newc chunks.

An image member is a run of zstd frames, one per *chunk*. Each chunk decompresses to a
complete cpio newc archive (its own ``TRAILER!!!``) of whole files, about ``chunk_size``
(4 MiB) uncompressed: a file larger than that gets a chunk of its own, and a hard-link
group always stays within one chunk (the kernel forgets inode numbers at each trailer).
The Linux kernel unpacks such concatenated, separately compressed archives as one
initramfs; one cpio stream cut at arbitrary offsets would not boot. The chunk table
(:class:`Chunk`: offset, sizes, sha256 of the compressed frame) lets packing run on
every core, a transfer resume at any chunk, a node verify each frame as it arrives, and
a rebuilt image reuse the frames of unchanged chunks: chunk boundaries fall at
content-defined cut points where they can, and inode numbers restart in every chunk, so
an unchanged run of files yields byte-identical frames.

One job per module:

- ``table``: the chunk table (:class:`Chunk`);
- ``entries``: the typed entry records and archive names;
- ``plan``: the tree walk and the cut into chunks;
- ``compress``: one chunk into one zstd frame (native cpio writer, zstd parameters);
- ``pack``: :func:`pack_tree`, the compression pool writing frames in order;
- ``overlay``: :func:`build_archive`, the per-node overlay;
- ``frames``: checked frames: :func:`verify`, :func:`iter_frames`, :func:`archive_directories`;
- ``extraction``: :func:`extract`, safe unpacking into a directory.
"""

from perceus.imagefmt.image.entries import MAX_NEWC_FILESIZE
from perceus.imagefmt.image.errors import ImageError
from perceus.imagefmt.image.extraction import extract
from perceus.imagefmt.image.frames import archive_directories, iter_frames, verify
from perceus.imagefmt.image.overlay import build_archive
from perceus.imagefmt.image.pack import DEFAULT_CHUNK_SIZE, PackResult, pack_tree
from perceus.imagefmt.image.table import Chunk

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_NEWC_FILESIZE",
    "Chunk",
    "ImageError",
    "PackResult",
    "archive_directories",
    "build_archive",
    "extract",
    "iter_frames",
    "pack_tree",
    "verify",
]
