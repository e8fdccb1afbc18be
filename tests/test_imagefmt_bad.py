"""perceus.imagefmt.image.extract/verify/iter_frames on untrusted images.

Every bad input is refused with an ImageError whose message names the reason (and the
chunk / entry), and nothing is ever written outside the destination: each test extracts
into ``tmp/dest`` beside an empty ``tmp/outside`` that symlinks in the archive point at,
and checks afterwards that ``outside`` is still empty and nothing else appeared in ``tmp``.
"""

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest
import zstandard

from perceus.common import newc
from perceus.imagefmt.image import Chunk, ImageError, extract, iter_frames, pack_tree, verify

REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
LNK = stat.S_IFLNK | 0o777


def archive(*entries: dict, trailer: bool = True) -> bytes:
    """A newc archive of the entries, owned by whoever runs the test (so extraction, which
    restores owners, needs no root: no test here is about owners)."""
    out = bytearray()
    for i, e in enumerate(entries):
        e = {"uid": os.getuid(), "gid": os.getgid(), **e}
        newc.write_entry(out, e.pop("name"), ino=e.pop("ino", i + 1), **e)
    if trailer:
        newc.write_trailer(out)
    return bytes(out)


def image(*archives: bytes, content_size: bool = True) -> tuple[bytes, list[Chunk]]:
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=content_size)
    data, chunks = b"", []
    for raw in archives:
        frame = cctx.compress(raw)
        chunks.append(Chunk(len(data), len(frame), len(raw), hashlib.sha256(frame).hexdigest()))
        data += frame
    return data, chunks


def rehash(data: bytes, chunks: list[Chunk]) -> list[Chunk]:
    """The table an attacker who can also write the table would publish."""
    return [Chunk(c.offset, c.csize, c.usize, hashlib.sha256(data[c.offset : c.offset + c.csize]).hexdigest())
            for c in chunks]  # fmt: skip


@pytest.fixture
def box(tmp_path: Path):
    """(dest, check): check() asserts nothing was written outside dest."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "bystander").write_bytes(b"untouched")
    dest = tmp_path / "dest"

    def check():
        assert sorted(os.listdir(tmp_path)) == sorted(
            ["outside", "bystander", *(["dest"] if dest.exists() else [])]
        )
        assert os.listdir(outside) == []
        assert (tmp_path / "bystander").read_bytes() == b"untouched"

    yield dest, check
    check()


def refused(data: bytes, chunks, dest: Path, match: str, **kw) -> ImageError:
    with pytest.raises(ImageError, match=match) as info:
        extract(io.BytesIO(data), chunks, dest, **kw)
    assert "\n" not in str(info.value)
    return info.value


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[bytes, list[Chunk]]:
    root = tmp_path_factory.mktemp("tree")
    for i in range(30):
        (root / f"f{i}").write_bytes(os.urandom(50) + b"text " * 400 * i)
    buf = io.BytesIO()
    result = pack_tree(root, buf, chunk_size=16 << 10)
    assert len(result.chunks) > 3
    return buf.getvalue(), result.chunks


# --------------------------------------------------------------------------- transport damage


def test_truncated_image(packed, box):
    data, chunks = packed
    dest, check = box
    cut = data[: chunks[-1].offset + chunks[-1].csize // 2]
    err = refused(cut, chunks, dest, r"chunk \d+: truncated")
    assert f"chunk {len(chunks) - 1}:" in str(err)
    with pytest.raises(ImageError, match="truncated"):
        verify(io.BytesIO(cut), chunks)
    with pytest.raises(ImageError, match="truncated"):
        list(iter_frames(io.BytesIO(cut), chunks))
    check()


def test_flipped_byte(packed, box):
    data, chunks = packed
    dest, check = box
    bad = bytearray(data)
    bad[chunks[2].offset + chunks[2].csize // 2] ^= 0x40
    refused(bytes(bad), chunks, dest, r"chunk 2: sha256 mismatch")
    with pytest.raises(ImageError, match="chunk 2: sha256 mismatch"):
        verify(io.BytesIO(bytes(bad)), chunks)
    assert list(iter_frames(io.BytesIO(bytes(bad)), chunks, start=3))  # later chunks are still good
    with pytest.raises(ImageError, match="chunk 2: sha256 mismatch"):
        list(iter_frames(io.BytesIO(bytes(bad)), chunks, start=1))
    check()


def test_hash_mismatch_in_table(packed, box):
    data, chunks = packed
    dest, _ = box
    table = list(chunks)
    table[1] = Chunk(table[1].offset, table[1].csize, table[1].usize, "0" * 64)
    refused(data, table, dest, r"chunk 1: sha256 mismatch")


def test_flipped_magic_with_matching_hash(packed, box):
    data, chunks = packed
    dest, _ = box
    bad = bytearray(data)
    bad[chunks[0].offset] ^= 0xFF
    refused(bytes(bad), rehash(bytes(bad), chunks), dest, r"chunk 0: not a zstd frame")


def test_cut_frame_with_matching_hash(box):
    dest, _ = box
    data, chunks = image(archive({"name": "f", "mode": REG, "data": os.urandom(5000)}))
    short = data[:-40]
    table = rehash(short, [Chunk(0, len(short), chunks[0].usize, chunks[0].sha256)])
    refused(short, table, dest, r"chunk 0: (corrupt zstd data|truncated archive)")


def test_chunk_past_end_of_image(packed, box):
    data, chunks = packed
    dest, _ = box
    table = [*chunks, Chunk(len(data) + 100, 10, 10, "0" * 64)]
    refused(data, table, dest, rf"chunk {len(chunks)}: truncated: 0 of 10 bytes")


# --------------------------------------------------------------------------- hostile names


@pytest.mark.parametrize(
    "name, reason",
    [
        ("../evil", "'..' in path"),
        ("a/../../evil", "'..' in path"),
        ("./../outside/evil", "'..' in path"),
        ("/tmp/evil", "absolute path"),
        ("//evil", "absolute path"),
    ],
)
def test_escaping_names(box, name, reason):
    dest, _ = box
    data, chunks = image(archive({"name": "a", "mode": DIR}, {"name": name, "mode": REG, "data": b"pwned"}))
    err = refused(data, chunks, dest, reason)
    assert name in str(err) and "chunk 0" in str(err)


def test_empty_name(box):
    dest, _ = box
    raw = archive({"name": "x", "mode": REG})
    raw = raw[:94] + b"00000001" + raw[102:110] + b"\0\0" + raw[112:]
    data, chunks = image(raw)
    refused(data, chunks, dest, "empty entry name")


@pytest.mark.parametrize("target_kind", ["relative", "absolute"])
def test_symlink_then_write_through_it(box, tmp_path, target_kind):
    dest, _ = box
    target = "../outside" if target_kind == "relative" else str(tmp_path / "outside")
    data, chunks = image(
        archive(
            {"name": "d", "mode": DIR},
            {"name": "d/esc", "mode": LNK, "data": target.encode()},
            {"name": "d/esc/pwned", "mode": REG, "data": b"pwned"},
        )
    )
    refused(data, chunks, dest, r"chunk 0: d/esc/pwned: d/esc is a symlink: refusing to write through it")


def test_symlink_then_directory_and_device_through_it(box, tmp_path):
    dest, _ = box
    for entry in ({"name": "esc/sub", "mode": DIR}, {"name": "esc/null", "mode": stat.S_IFCHR | 0o666,
                                                     "rdevmajor": 1, "rdevminor": 3}):  # fmt: skip
        data, chunks = image(
            archive({"name": "esc", "mode": LNK, "data": str(tmp_path / "outside").encode()}, entry)
        )
        refused(data, chunks, dest, "esc is a symlink")


def test_symlink_escape_across_chunks(box, tmp_path):
    """The symlink comes in one chunk, the write through it in the next."""
    dest, _ = box
    data, chunks = image(
        archive({"name": "esc", "mode": LNK, "data": b"../outside"}),
        archive({"name": "esc/pwned", "mode": REG, "data": b"pwned"}),
    )
    refused(data, chunks, dest, r"chunk 1: esc/pwned: esc is a symlink")
    assert os.readlink(dest / "esc") == "../outside"  # the symlink itself is harmless


def test_planted_symlink_in_destination(box, tmp_path):
    dest, _ = box
    dest.mkdir()
    (dest / "pre").symlink_to(tmp_path / "outside")
    (dest / "prefile").symlink_to(tmp_path / "bystander")
    data, chunks = image(archive({"name": "pre/x", "mode": REG, "data": b"pwned"}))
    refused(data, chunks, dest, "pre is a symlink")
    data, chunks = image(archive({"name": "prefile", "mode": REG, "data": b"replaced"}))
    extract(io.BytesIO(data), chunks, dest)  # replaces the symlink, never writes through it
    assert (dest / "prefile").read_bytes() == b"replaced" and not (dest / "prefile").is_symlink()


def test_hard_link_to_a_symlink_is_never_written_through(box, tmp_path):
    dest, _ = box
    data, chunks = image(
        archive(
            {"name": "victim", "mode": REG, "ino": 7, "nlink": 2},
            {"name": "victim", "mode": LNK, "ino": 8, "data": str(tmp_path / "bystander").encode()},
            {"name": "other", "mode": REG, "ino": 7, "nlink": 2, "data": b"pwned"},
        )
    )
    refused(data, chunks, dest, r"chunk 0: (cannot write|other)")


def test_hard_link_through_a_replaced_directory(box, tmp_path):
    dest, _ = box
    data, chunks = image(
        archive(
            {"name": "d", "mode": DIR},
            {"name": "d/f", "mode": REG, "ino": 7, "nlink": 2},
            {"name": "d", "mode": LNK, "ino": 9, "data": str(tmp_path / "outside").encode()},
            {"name": "g", "mode": REG, "ino": 7, "nlink": 2, "data": b"pwned"},
        )
    )
    refused(data, chunks, dest, r"(would replace a non-empty directory|hard link to d/f failed)")


def test_hard_links_only_within_a_chunk(box):
    """Inode numbers restart at each trailer: a later chunk's member is a new file."""
    dest, _ = box
    data, chunks = image(
        archive({"name": "a", "mode": REG, "ino": 5, "nlink": 2, "data": b"first"}),
        archive({"name": "b", "mode": REG, "ino": 5, "nlink": 2, "data": b"second"}),
    )
    extract(io.BytesIO(data), chunks, dest)
    assert (dest / "a").read_bytes() == b"first" and (dest / "b").read_bytes() == b"second"
    assert not (dest / "a").samefile(dest / "b")


# --------------------------------------------------------------------------- devices


@pytest.mark.root  # the allowed device node is made
@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK])
def test_device_nodes_refused_unless_allowed(box, kind):
    dest, _ = box
    data, chunks = image(archive({"name": "dev", "mode": DIR}, {"name": "dev/sda", "mode": kind | 0o660,
                                                                "rdevmajor": 8, "rdevminor": 0}))  # fmt: skip
    refused(data, chunks, dest, r"chunk 0: dev/sda: device node not allowed", allow_devices=False)
    extract(io.BytesIO(data), chunks, dest)
    st = (dest / "dev" / "sda").lstat()
    assert stat.S_IFMT(st.st_mode) == kind and os.major(st.st_rdev) == 8


def test_fifo_is_not_a_device(box):
    dest, _ = box
    data, chunks = image(archive({"name": "p", "mode": stat.S_IFIFO | 0o600}))
    assert extract(io.BytesIO(data), chunks, dest, allow_devices=False) == 1
    assert stat.S_ISFIFO((dest / "p").lstat().st_mode)


# --------------------------------------------------------------------------- sizes and bombs


def test_chunk_larger_than_limit(packed, box):
    data, chunks = packed
    dest, check = box
    refused(
        data,
        chunks,
        dest,
        rf"chunk 0: declared usize {chunks[0].usize} exceeds the limit 1000",
        max_usize=1000,
    )
    total = sum(c.usize for c in chunks)
    refused(data, chunks, dest, rf"image declares {total} uncompressed bytes", max_usize=total - 1)
    assert not dest.exists()  # refused before anything was written
    check()


def test_frame_declaring_more_than_the_table(box):
    dest, _ = box
    raw = archive({"name": "f", "mode": REG, "data": bytes(1 << 20)})
    data, chunks = image(raw)
    table = rehash(data, [Chunk(0, len(data), 1000, "")])
    refused(data, table, dest, r"chunk 0: frame declares \d+ bytes, the table 1000")


def test_bomb_without_content_size(box):
    """A frame that does not declare its size and expands far beyond its table entry is cut
    off just past the declared usize: it never gets decompressed in full."""
    dest, _ = box
    good = archive({"name": "g", "mode": REG, "data": b"x" * 100})
    cobj = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    zeros = bytes(8 << 20)
    parts = [cobj.compress(good), *(cobj.compress(zeros) for _ in range(64)), cobj.flush()]
    frame = b"".join(parts)  # 512 MiB of zeros after the trailer, a few KiB compressed
    assert len(frame) < 1 << 20
    table = [Chunk(0, len(frame), len(good), hashlib.sha256(frame).hexdigest())]
    refused(frame, table, dest, r"chunk 0: decompresses beyond its declared usize")
    table = [Chunk(0, len(frame), 4096, hashlib.sha256(frame).hexdigest())]
    refused(frame, table, dest, r"chunk 0: decompresses beyond its declared usize")


def test_entry_larger_than_its_chunk(box):
    dest, _ = box
    raw = archive({"name": "f", "mode": REG, "data": b"abcd"})
    raw = raw.replace(b"00000004", b"7FFFFFF0", 1)  # filesize field of the only entry
    data, chunks = image(raw)
    refused(data, chunks, dest, r"chunk 0: f: declared size 2147483632 goes beyond the chunk")


def test_table_smaller_than_the_archive(box):
    dest, _ = box
    raw = archive({"name": "f", "mode": REG, "data": b"abcd" * 100})
    data, chunks = image(raw, content_size=False)
    table = [Chunk(0, chunks[0].csize, 200, chunks[0].sha256)]
    refused(data, table, dest, r"chunk 0: (f: declared size 400 goes beyond the chunk|decompresses beyond)")


def test_table_larger_than_the_archive(box):
    dest, _ = box
    raw = archive({"name": "f", "mode": REG, "data": b"abcd"})
    data, chunks = image(raw, content_size=False)
    table = [Chunk(0, chunks[0].csize, len(raw) + 64, chunks[0].sha256)]
    refused(data, table, dest, rf"chunk 0: decompressed {len(raw)} bytes, the table declares {len(raw) + 64}")


# --------------------------------------------------------------------------- malformed archives


@pytest.mark.parametrize(
    "mangle, reason",
    [
        (lambda raw: b"070707" + raw[6:], "bad magic"),
        (lambda raw: raw[:14] + b"000081G4" + raw[22:], "bad header field"),
        (lambda raw: raw[:14] + b"+00081A4" + raw[22:], "bad header field"),
        (lambda raw: raw[:94] + b"00000000" + raw[102:], "name size 0 out of range"),
        (lambda raw: raw[:94] + b"00100000" + raw[102:], "name size 1048576 out of range"),
        (lambda raw: raw[:112] + b"x" + raw[113:], "not NUL-terminated"),
        (lambda raw: raw[: raw.index(b"070701", 10)], "ends without TRAILER!!!"),
        (lambda raw: raw + b"junk", "junk after TRAILER!!!"),
        (lambda raw: raw[:-4], "truncated archive"),
    ],
)
def test_malformed_archive(box, mangle, reason):
    dest, _ = box
    raw = archive({"name": "ff", "mode": REG, "data": b"data"})
    data, chunks = image(mangle(raw))
    err = refused(data, chunks, dest, reason)
    assert "chunk 0" in str(err)


@pytest.mark.parametrize(
    "entry, reason",
    [
        ({"name": "l", "mode": LNK, "data": b""}, "bad symlink target"),
        ({"name": "l", "mode": LNK, "data": b"a\0b"}, "bad symlink target"),
        ({"name": "l", "mode": LNK, "data": b"x" * 5000}, "symlink target longer than 4095"),
        ({"name": "d", "mode": DIR, "data": b"data"}, "a directory with data"),
        ({"name": "p", "mode": stat.S_IFIFO | 0o600, "data": b"data"}, "special file with data"),
        ({"name": "u", "mode": 0o644, "data": b""}, "unknown file type"),
        ({"name": ".", "mode": REG, "data": b""}, "root entry is not a directory"),
    ],
)
def test_bad_entries(box, entry, reason):
    dest, _ = box
    data, chunks = image(archive(entry))
    refused(data, chunks, dest, reason)


def test_non_empty_directory_is_not_replaced(box):
    dest, _ = box
    data, chunks = image(
        archive(
            {"name": "d", "mode": DIR}, {"name": "d/f", "mode": REG, "data": b"x"}, {"name": "d", "mode": REG}
        )
    )
    refused(data, chunks, dest, "d: would replace a non-empty directory")


# --------------------------------------------------------------------------- the chunk table


@pytest.mark.parametrize(
    "d, reason",
    [
        ([1, 2, 3], "not a mapping"),
        ({"offset": 0, "csize": 1, "usize": 1}, "missing keys"),
        ({"offset": 0, "csize": 1, "usize": 1, "sha256": "0" * 64, "x": 1}, "unknown keys"),
        ({"offset": -1, "csize": 1, "usize": 1, "sha256": "0" * 64}, "offset -1"),
        ({"offset": True, "csize": 1, "usize": 1, "sha256": "0" * 64}, "offset True"),
        ({"offset": 0, "csize": "1", "usize": 1, "sha256": "0" * 64}, "csize '1'"),
        ({"offset": 0, "csize": 1, "usize": 1 << 63, "sha256": "0" * 64}, "usize"),
        ({"offset": 0, "csize": 0, "usize": 1, "sha256": "0" * 64}, "csize 0"),
        ({"offset": 0, "csize": 1, "usize": 1, "sha256": "A" * 64}, "sha256"),
        ({"offset": 0, "csize": 1, "usize": 1, "sha256": "0" * 63}, "sha256"),
    ],
)
def test_chunk_from_dict_validates(d, reason):
    with pytest.raises(ImageError, match=reason):
        Chunk.from_dict(d)


def test_table_of_wrong_things(box):
    dest, _ = box
    with pytest.raises(ImageError, match="chunk 0: not a Chunk"):
        extract(io.BytesIO(b""), [{"offset": 0}], dest)
    with pytest.raises(ImageError, match="chunk 0: not a Chunk"):
        verify(io.BytesIO(b""), [(0, 1, 1, "")])


def test_nested_directory_replaced_then_siblings_written(box):
    """Replacing an (empty) directory forgets only its own cached fd: the parent's stays good."""
    dest, _ = box
    data, chunks = image(
        archive(
            {"name": "a", "mode": DIR},
            {"name": "a/b", "mode": DIR},
            {"name": "a/b/c", "mode": DIR},
            {"name": "a/b/c", "mode": REG, "data": b"now a file"},
            {"name": "a/b/d", "mode": REG, "data": b"sibling"},
            {"name": "a/b/c2", "mode": LNK, "data": b"c"},
        )
    )
    assert extract(io.BytesIO(data), chunks, dest) == 6
    assert (dest / "a/b/c").read_bytes() == b"now a file" and (dest / "a/b/d").read_bytes() == b"sibling"
    assert os.readlink(dest / "a/b/c2") == "c"


def test_paths_deeper_than_the_fd_cache(box):
    dest, _ = box
    deep = "/".join(f"d{i}" for i in range(90))
    other = "/".join(f"e{i}" for i in range(90))
    dirs = [{"name": "/".join(p.split("/")[: i + 1]), "mode": DIR} for p in (deep, other) for i in range(90)]
    data, chunks = image(
        archive(
            *dirs,
            {"name": f"{deep}/one", "mode": REG, "ino": 5000, "nlink": 2},
            {"name": f"{other}/two", "mode": REG, "ino": 5000, "nlink": 2, "data": b"shared"},
        )
    )
    extract(io.BytesIO(data), chunks, dest)
    assert (dest / deep / "one").samefile(dest / other / "two")
    assert (dest / deep / "one").read_bytes() == b"shared"
