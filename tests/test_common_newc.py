"""perceus.common.newc and perceus.common.unpack: the one cpio newc reader, writer and unpacker.

Round trips (writer -> reader, write_tree -> GNU cpio's listing), then hostile archives:
every malformed, truncated or unsafe one is a NewcError naming the reason, never another
exception, and nothing appears outside the destination.
"""

import io
import os
import random
import stat
import subprocess
from pathlib import Path

import pytest

from perceus.common import newc
from perceus.common.unpack import Specials, Unpacker, extract

from tests.support.newc_archives import archive

REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
LNK = stat.S_IFLNK | 0o777


@pytest.fixture
def box(tmp_path: Path):
    """(dest, check): check() asserts nothing was written beside dest."""
    (tmp_path / "outside").mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()

    def check():
        assert sorted(os.listdir(tmp_path)) == ["dest", "outside"]
        assert os.listdir(tmp_path / "outside") == []

    yield dest, check
    check()


# -- round trips ---------------------------------------------------------------------------------


def test_writer_and_reader_round_trip_every_field():
    out = bytearray()
    newc.write_entry(out, "dev/null", mode=stat.S_IFCHR | 0o666, ino=9, uid=1, gid=2, mtime=3, nlink=2,
                     devmajor=4, devminor=5, rdevmajor=1, rdevminor=3)  # fmt: skip
    newc.write_entry(out, b"bin/\xffodd", mode=REG, data=b"abcde", ino=10)
    newc.write_entry(out, "link", mode=LNK, data=b"bin/sh")
    newc.write_trailer(out)
    assert len(out) % 4 == 0
    dev, odd, link = newc.read_entries(bytes(out))
    assert (dev.name, dev.mode, dev.ino, dev.uid, dev.gid, dev.mtime, dev.nlink) == (
        b"dev/null", stat.S_IFCHR | 0o666, 9, 1, 2, 3, 2,
    )  # fmt: skip
    assert (dev.devmajor, dev.devminor, dev.rdevmajor, dev.rdevminor) == (4, 5, 1, 3)
    assert (odd.name, odd.data, odd.filesize) == (b"bin/\xffodd", b"abcde", 5)
    assert link.data == b"bin/sh"
    assert newc.read_entries(bytes(out) + bytes(512)) == [dev, odd, link]  # zero padding after: fine


def test_header_encodes_as_parsed_and_refuses_what_newc_cannot_hold():
    raw = archive(("x", REG, b"1"))
    header = newc.parse_header(raw[:110])
    assert header.encode() == raw[:110] and header.namesize == 2 and header.filesize == 1
    with pytest.raises(newc.NewcError, match="mtime -1 does not fit"):
        newc.write_entry(bytearray(), "x", mode=REG, mtime=-1)
    with pytest.raises(newc.NewcError, match="uid 4294967296 does not fit"):
        newc.write_entry(bytearray(), "x", mode=REG, uid=1 << 32)
    with pytest.raises(newc.NewcError, match="name longer than 4095"):
        newc.write_entry(bytearray(), "x" * 4096, mode=REG)
    for bad in ("", "a\0b"):
        with pytest.raises(newc.NewcError, match="bad entry name"):
            newc.write_entry(bytearray(), bad, mode=REG)


def test_write_tree_is_read_back_by_gnu_cpio_and_by_the_reader(tmp_path: Path):
    src = tmp_path / "src"
    (src / "etc" / "sub").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("n1\n")
    (src / "etc" / "sub" / "big").write_bytes(os.urandom(3 * newc.PIECE + 5))
    (src / "link").symlink_to("etc/hostname")
    buf = io.BytesIO()
    size = newc.write_tree(buf, src)
    assert size == len(buf.getvalue())
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=buf.getvalue(), capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["etc", "etc/hostname", "etc/sub", "etc/sub/big", "link"]
    entries = {e.name: e for e in newc.read_entries(buf.getvalue())}
    assert entries[b"etc/sub/big"].data == (src / "etc" / "sub" / "big").read_bytes()
    assert [e.ino for e in entries.values()] == [1, 2, 3, 4, 5]


def test_reader_hands_out_data_in_pieces_and_skips_what_is_not_read():
    raw = archive(("a", REG, b"x" * 10), ("b", REG, b"yz"))
    reader = newc.Reader(io.BytesIO(raw))
    first = reader.next()
    assert first.name == b"a" and reader.read(3) == b"xxx"  # the rest of a's data is skipped
    second = reader.next()
    assert second.name == b"b" and reader.read(100) == b"yz" and reader.read(1) == b""
    assert reader.next() is None and reader.ended
    reader.finish()


def test_extract_round_trip(box):
    dest, _ = box
    raw = archive(
        ("d", DIR, b""), ("d/f", REG | 0o4000, b"data"), ("d/l", LNK, b"f"), ("p", stat.S_IFIFO | 0o600, b"")
    )
    assert extract(io.BytesIO(raw), dest, same_owner=False) == 4
    assert (dest / "d" / "f").read_bytes() == b"data"
    assert stat.S_IMODE((dest / "d" / "f").stat().st_mode) == 0o644  # setuid dropped without same_owner
    assert os.readlink(dest / "d" / "l") == "f" and stat.S_ISFIFO((dest / "p").lstat().st_mode)
    assert int((dest / "d").stat().st_mtime) == 1_000_000


# -- hostile archives ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, reason",
    [
        ("../evil", "'..' in path"),
        ("a/../../evil", "'..' in path"),
        ("./../evil", "'..' in path"),
        ("/etc/evil", "absolute path"),
        ("//evil", "absolute path"),
    ],
)
def test_escaping_names_are_refused(box, name, reason):
    dest, _ = box
    with pytest.raises(newc.NewcError, match=reason) as info:
        extract(io.BytesIO(archive((name, REG, b"pwned"))), dest)
    assert info.value.name == name and "\n" not in str(info.value)


def test_a_name_component_longer_than_name_max_is_refused(box):
    dest, _ = box
    with pytest.raises(newc.NewcError, match="path component longer than 255 bytes"):
        extract(io.BytesIO(archive(("d/" + "x" * 256, REG, b""))), dest)


def test_huge_namesize_is_refused_before_anything_is_read():
    raw = bytearray(archive(("x", REG, b"")))
    raw[94:102] = b"FFFFFFFF"  # namesize
    with pytest.raises(newc.NewcError, match="name size 4294967295 out of range 1..4096") as info:
        newc.read_entries(bytes(raw))
    assert info.value.offset == 0


def test_huge_filesize_is_truncation_not_an_allocation():
    raw = bytearray(archive(("x", REG, b"abcd")))
    raw[54:62] = b"FFFFFFFF"  # filesize: 4 GiB - 1 declared, 4 bytes there
    with pytest.raises(newc.NewcError, match="truncated archive"):
        list(newc.iter_entries(io.BytesIO(bytes(raw))))  # read in pieces: nothing of 4 GiB is allocated
    reader = newc.Reader(io.BytesIO(bytes(raw)), size=len(raw), unit="chunk")
    with pytest.raises(newc.NewcError, match="declared size 4294967295 goes beyond the chunk") as info:
        reader.next()
    assert info.value.name == "x"


@pytest.mark.parametrize("cut", [0, 1, 50, 109, 110, 113, 116, 120, -1, -4, -20])
def test_truncated_archives_are_errors(box, cut):
    dest, _ = box
    good = archive(("f", REG, b"0123456789"))
    with pytest.raises(newc.NewcError, match="truncated archive|ends without TRAILER"):
        extract(io.BytesIO(good[:cut]), dest)


@pytest.mark.parametrize(
    "mangle, reason",
    [
        (lambda raw: b"070707" + raw[6:], "bad magic"),
        (lambda raw: raw[:14] + b"000081G4" + raw[22:], "bad header field mode"),
        (lambda raw: raw[:14] + b" 00081A4" + raw[22:], "bad header field mode"),
        (lambda raw: raw[:94] + b"00000000" + raw[102:], "name size 0 out of range"),
        (lambda raw: raw[:111] + b"x" + raw[112:], "not NUL-terminated"),
        (lambda raw: raw + b"junk", "junk after TRAILER!!!"),
    ],
)
def test_malformed_archives_are_errors(mangle, reason):
    with pytest.raises(newc.NewcError, match=reason):
        newc.read_entries(mangle(archive(("f", REG, b"data"))))


def test_symlinks_are_never_written_through(box, tmp_path):
    dest, _ = box
    (dest / "planted").symlink_to(tmp_path / "outside")
    for raw in (
        archive(("esc", LNK, str(tmp_path / "outside").encode()), ("esc/pwned", REG, b"x")),
        archive(("rel", LNK, b"../outside"), ("rel/pwned", REG, b"x")),
        archive(("planted/pwned", REG, b"x")),
    ):
        with pytest.raises(newc.NewcError, match="is a symlink: refusing to write through it"):
            extract(io.BytesIO(raw), dest)


def test_follow_inside_follows_only_symlinks_that_stay_inside(box, tmp_path):
    dest, _ = box
    (dest / "usr" / "lib").mkdir(parents=True)
    (dest / "lib").symlink_to("usr/lib")
    (dest / "deep").symlink_to("usr/lib/../lib/../..")  # climbs to the root, not above it
    (dest / "up").symlink_to("../outside")
    (dest / "abs").symlink_to(tmp_path / "outside")
    (dest / "loop").symlink_to("loop")
    follow = {"follow_inside": True}
    assert (
        extract(io.BytesIO(archive(("lib/m.conf", REG, b"m"), ("deep/top", REG, b"t"))), dest, **follow) == 2
    )
    assert (dest / "usr/lib/m.conf").read_bytes() == b"m" and (dest / "top").read_bytes() == b"t"
    for name, reason in (("up/x", "leaving the destination"), ("abs/x", "leaving the destination"),
                         ("loop/x", "too many levels")):  # fmt: skip
        with pytest.raises(newc.NewcError, match=reason):
            extract(io.BytesIO(archive((name, REG, b"x"))), dest, **follow)


def test_keep_and_skipped_specials(box):
    dest, _ = box
    (dest / "mine").write_text("kept")
    raw = archive(("mine", REG, b"new"), ("other", REG, b"o"), ("null", stat.S_IFCHR | 0o666, b""))
    assert extract(io.BytesIO(raw), dest, keep=lambda st: True, specials=Specials.SKIP) == 1
    assert (dest / "mine").read_text() == "kept" and (dest / "other").read_text() == "o"
    assert not (dest / "null").exists()
    with pytest.raises(newc.NewcError, match="device node not allowed"):
        extract(io.BytesIO(raw), dest, specials=Specials.NO_DEVICES)


def test_a_non_empty_directory_is_never_replaced(box):
    dest, _ = box
    raw = archive(("d", DIR, b""), ("d/f", REG, b"x"), ("d", REG, b"file now"))
    with pytest.raises(newc.NewcError, match="would replace a non-empty directory"):
        extract(io.BytesIO(raw), dest)


def test_unpacker_counts_entries_and_what_it_made(box):
    dest, _ = box
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    unpacker = Unpacker(fd, same_owner=False, specials=Specials.SKIP)
    try:
        unpacker.archive(
            newc.Reader(io.BytesIO(archive((".", DIR, b""), ("f", REG, b"1"), ("p", stat.S_IFIFO, b""))))
        )
        unpacker.finish()
    finally:
        unpacker.close()
        os.close(fd)
    assert (unpacker.entries, unpacker.written) == (3, 1)


def test_random_damage_is_always_a_clean_error(tmp_path: Path):
    """Flipped, cut and spliced archives: a NewcError or a clean unpack, nothing else, never outside."""
    rng = random.Random(10)
    good = archive(
        ("d", DIR, b""), ("d/f", REG, b"x" * 300), ("d/l", LNK, b"../outside"), ("g", REG, b"y" * 7),
    )  # fmt: skip
    (tmp_path / "outside").mkdir()
    for i in range(400):
        raw = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            what = rng.random()
            at = rng.randrange(len(raw))
            if what < 0.5:
                raw[at] = rng.randrange(256)
            elif what < 0.7:
                raw[at] = rng.choice(b"0123456789ABCDEF/.")
            elif what < 0.85:
                del raw[at:]
            else:
                raw[at:at] = rng.randbytes(rng.randrange(1, 20))
        dest = tmp_path / f"d{i}"
        try:
            extract(io.BytesIO(bytes(raw)), dest, follow_inside=bool(i % 2))
        except newc.NewcError as exc:
            assert "\n" not in str(exc)
        assert os.listdir(tmp_path / "outside") == []
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("d")) == ["outside"]
