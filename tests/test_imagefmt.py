"""perceus.imagefmt: a root tree packed into chunked zstd cpio images and extracted again.

A generated tree holding every kind of entry newc carries (regular files empty, small and
larger than a chunk, nested directories, relative/absolute/dangling symlinks, hard-link
groups, a fifo, character and block devices, setuid/setgid/sticky/0600 modes, owner
1234, set mtimes) must come back exactly. The native cpio writer is cross-checked
byte for byte against the pure-Python reference writer on seeded random trees, and GNU
cpio must read every chunk. Those trees need root (device nodes, chown): their tests are
marked ``root``.
"""

import hashlib
import io
import os
import random
import stat
import subprocess
from pathlib import Path

import pytest
import zstandard

from perceus.common import newc
from perceus.imagefmt import image
from perceus.imagefmt.image import Chunk, ImageError, build_archive, extract, iter_frames, pack_tree, verify
from perceus.imagefmt.image.plan import Planner, plan_tree
from perceus.native import cpiopack

KiB = 1 << 10
CHUNK = 64 * KiB  # small chunks so a test tree spans many of them
MTIME = 1_600_000_000


def _text(rng: random.Random, n: int) -> bytes:
    words = [b"alpha", b"beta", b"gamma", b"delta", b"kernel", b"node", b"perceus", b"vnfs", b"=", b"\n"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def make_tree(root: Path, seed: int = 1) -> Path:
    """Every kind of entry, with odd modes, owners and mtimes; returns root."""
    rng = random.Random(seed)
    root.mkdir()
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(_text(rng, 3 * CHUNK + 7) + rng.randbytes(1000))
    deep = root / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "file").write_bytes(_text(rng, 5000))
    for i in range(40):  # enough small files to need several chunks
        (root / "a" / f"f{i:02d}.conf").write_bytes(_text(rng, rng.randrange(0, 6000)))
    (root / "rel").symlink_to("a/b/c/d/file")
    (root / "abs").symlink_to("/etc/passwd")
    (root / "dangling").symlink_to("../nowhere/at/all")
    (root / "hl").mkdir()
    (root / "hl" / "one").write_bytes(_text(rng, 3000))
    os.link(root / "hl" / "one", root / "hl" / "two")
    os.link(root / "hl" / "one", root / "a" / "three")
    (root / "hl" / "empty1").write_bytes(b"")
    os.link(root / "hl" / "empty1", root / "hl" / "empty2")
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.link(root / "null", root / "null-again")  # a hard-linked device node
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "suid", 0o4755)
    (root / "secret").write_bytes(b"key\n")
    os.chmod(root / "secret", 0o600)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "sgid").mkdir()
    os.chmod(root / "sgid", 0o2750)
    (root / "sgid" / "inside").write_bytes(b"x")
    (root / "owned").write_bytes(b"mine\n")
    os.chown(root / "owned", 1234, 1234)
    os.chown(root / "sgid", 1234, 4321)
    os.chown(root / "rel", 1234, 1234, follow_symlinks=False)
    (root / "etc").mkdir()
    (root / "etc" / "fstab").write_bytes(b"proc /proc proc defaults 0 0\n")
    os.chmod(root / "etc" / "fstab", 0o640)
    os.chown(root / "etc" / "fstab", 1234, 1234)
    set_mtimes(root)
    return root


def set_mtimes(root: Path) -> None:
    """Distinct whole-second mtimes everywhere, deepest first so directories keep theirs."""
    paths = sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for i, path in enumerate([*paths, root]):
        os.utime(path, (MTIME + i, MTIME + i), follow_symlinks=False)


def snapshot(root: Path) -> dict:
    """relpath -> everything that must survive: type, mode, owner, mtime, contents/target/rdev,
    and the set of paths sharing its inode."""
    inodes: dict[tuple[int, int], list[str]] = {}
    out = {}
    for path in [root, *root.rglob("*")]:
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        if stat.S_ISREG(st.st_mode):
            body = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            body = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            body = (os.major(st.st_rdev), os.minor(st.st_rdev))
        else:
            body = None
        out[rel] = [st.st_mode, st.st_uid, st.st_gid, int(st.st_mtime), body, (st.st_dev, st.st_ino)]
    for entry in out.values():
        key = entry.pop()
        if not stat.S_ISDIR(entry[0]):
            entry.append(sorted(inodes[key]))
    return out


def pack(root: Path, **kw) -> tuple[bytes, image.PackResult]:
    buf = io.BytesIO()
    result = pack_tree(root, buf, chunk_size=kw.pop("chunk_size", CHUNK), **kw)
    return buf.getvalue(), result


def frames_of(data: bytes, chunks) -> list[bytes]:
    return [data[c.offset : c.offset + c.csize] for c in chunks]


def archives_of(data: bytes, chunks) -> list[bytes]:
    return [zstandard.ZstdDecompressor().decompress(f) for f in frames_of(data, chunks)]


@pytest.fixture
def tree(tmp_path: Path, needs_root: None) -> Path:
    """make_tree's tree of every kind of entry (device nodes and other owners need root)."""
    return make_tree(tmp_path / "root")


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("threads", [1, 2])
def test_round_trip_is_exact(tree: Path, tmp_path: Path, threads: int):
    data, result = pack(tree, threads=threads)
    dest = tmp_path / "out"
    written = extract(io.BytesIO(data), result.chunks, dest)
    assert written == result.entries == len(snapshot(tree))
    assert snapshot(dest) == snapshot(tree)
    assert len(result.chunks) > 3


def test_output_is_deterministic_and_thread_count_free(tree: Path):
    assert pack(tree, threads=1)[0] == pack(tree, threads=2)[0] == pack(tree, threads=0)[0]


def test_default_chunk_size_round_trip(tree: Path, tmp_path: Path):
    data, result = pack(tree, chunk_size=image.DEFAULT_CHUNK_SIZE)
    assert len(result.chunks) == 1  # the whole test tree fits one 4 MiB chunk
    extract(io.BytesIO(data), result.chunks, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(tree)


def test_streamed_big_chunk_round_trip(tree: Path, tmp_path: Path, monkeypatch):
    """A chunk above the streaming threshold is built piece by piece and compressed by zstd's
    workers as one frame: same archive, same round trip."""
    monkeypatch.setattr(image.pack, "STREAM_OVER", 0)
    monkeypatch.setattr(image.compress, "STREAM_PIECE", 10_000)
    rng = random.Random(5)
    (tree / "huge.bin").write_bytes(_text(rng, 5 * CHUNK) + rng.randbytes(5 * CHUNK))
    os.utime(tree / "huge.bin", (MTIME, MTIME))
    os.utime(tree, (MTIME, MTIME))
    data, result = pack(tree, threads=2)
    big = [c for c in result.chunks if c.usize > 4 * CHUNK]
    assert big
    for frame in frames_of(data, big):
        assert zstandard.get_frame_parameters(frame).content_size == big[0].usize
    monkeypatch.undo()
    plain_data, plain = pack(tree, threads=2)
    assert archives_of(data, result.chunks) == archives_of(plain_data, plain.chunks)
    extract(io.BytesIO(data), result.chunks, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(tree)


def test_pack_appends_at_current_position(tree: Path):
    buf = io.BytesIO()
    buf.write(b"PREFIX" * 7)
    result = pack_tree(tree, buf, chunk_size=CHUNK)
    data = buf.getvalue()
    assert len(data) == 42 + result.csize
    verify(io.BytesIO(data), result.chunks, base=42)
    assert extract(io.BytesIO(data), result.chunks, tree.parent / "out", base=42) == result.entries


def test_progress_reports_every_chunk(tree: Path):
    seen: list[int] = []
    _, result = pack(tree, progress=seen.append)
    assert seen == [c.usize for c in result.chunks]
    assert sum(seen) == result.usize


# --------------------------------------------------------------------------- chunk layout


def test_chunks_are_complete_archives_and_contiguous(tree: Path):
    data, result = pack(tree)
    pos = 0
    for c in result.chunks:
        assert c.offset == pos
        pos += c.csize
        frame = data[c.offset : c.offset + c.csize]
        assert hashlib.sha256(frame).hexdigest() == c.sha256
        assert zstandard.get_frame_parameters(frame).content_size == c.usize
    assert pos == result.csize == len(data)
    archives = archives_of(data, result.chunks)
    assert [len(a) for a in archives] == [c.usize for c in result.chunks]
    assert sum(len(a) for a in archives) == result.usize
    total = 0
    for raw in archives:
        assert raw.endswith(b"TRAILER!!!\0\0\0\0")
        assert len(raw) % 4 == 0
        total += len(newc.read_entries(raw))  # strict: exactly one archive, nothing after
    assert total == result.entries
    names = [e.name for e in newc.read_entries(archives[0])]
    assert names[0] == b"."


def test_directories_come_before_their_contents(tree: Path):
    data, result = pack(tree)
    seen: set[bytes] = set()
    for raw in archives_of(data, result.chunks):
        for e in newc.read_entries(raw):
            parent = e.name.rpartition(b"/")[0] or b"."
            assert e.name == b"." or parent in seen, e.name
            seen.add(e.name)


def test_hard_link_groups_stay_in_one_chunk_with_data_on_the_last(tree: Path):
    data, result = pack(tree)
    where: dict[bytes, tuple[int, newc.Entry]] = {}
    for i, raw in enumerate(archives_of(data, result.chunks)):
        for e in newc.read_entries(raw):
            where[e.name] = (i, e)
    group = [b"a/three", b"hl/one", b"hl/two"]
    chunk_ids = {where[n][0] for n in group}
    assert len(chunk_ids) == 1
    entries = [where[n][1] for n in group]
    assert {e.ino for e in entries} == {entries[0].ino} and all(e.nlink == 3 for e in entries)
    i = chunk_ids.pop()
    members = [e for e in newc.read_entries(archives_of(data, result.chunks)[i]) if e.name in group]
    assert [e.filesize for e in members][:-1] == [0, 0] and members[-1].data == (tree / "hl/one").read_bytes()
    dev = [where[b"null"], where[b"null-again"]]
    assert dev[0][0] == dev[1][0] and dev[0][1].ino == dev[1][1].ino and dev[0][1].nlink == 2


def test_hard_link_groups_never_span_chunks_on_random_trees(tmp_path: Path):
    rng = random.Random(77)
    root = tmp_path / "r"
    root.mkdir()
    files = []
    for i in range(120):
        d = root / f"d{i % 7}"
        d.mkdir(exist_ok=True)
        p = d / f"f{i}"
        p.write_bytes(rng.randbytes(rng.randrange(0, 3000)))
        files.append(p)
    for i in range(60):  # random extra names for random files: groups scattered over the walk
        src = rng.choice(files)
        dst = root / f"d{rng.randrange(7)}" / f"link{i}"
        os.link(src, dst)
    data, result = pack(root, chunk_size=4 * KiB)
    by_inode: dict[int, set[int]] = {}
    for i, raw in enumerate(archives_of(data, result.chunks)):
        for e in newc.read_entries(raw):
            if stat.S_ISREG(e.mode):
                ino = os.lstat(root / e.name.decode()).st_ino
                by_inode.setdefault(ino, set()).add(i)
    assert all(len(ids) == 1 for ids in by_inode.values())
    extract(io.BytesIO(data), result.chunks, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(root)


def test_file_bigger_than_chunk_gets_its_own_chunk(tree: Path):
    data, result = pack(tree)
    for c, raw in zip(result.chunks, archives_of(data, result.chunks), strict=True):
        names = [e.name for e in newc.read_entries(raw)]
        if b"big.bin" in names:
            assert names == [b"big.bin"]
            assert c.usize > CHUNK
        else:
            assert c.usize <= CHUNK


def test_unchanged_chunks_are_reused_after_a_change(tmp_path: Path):
    """Content-defined cut points: growing one early file leaves most later chunks identical."""
    rng = random.Random(3)
    root = tmp_path / "r"
    for d in range(20):
        (root / f"d{d:02d}").mkdir(parents=True)
        for f in range(30):
            (root / f"d{d:02d}" / f"f{f:02d}").write_bytes(_text(rng, rng.randrange(100, 2000)))
    set_mtimes(root)
    _, before = pack(root, chunk_size=16 * KiB)
    (root / "d01" / "f05").write_bytes(_text(rng, 5000))
    set_mtimes(root)  # the same mtimes as before, everywhere
    _, after = pack(root, chunk_size=16 * KiB)
    old = {c.sha256 for c in before.chunks}
    reused = sum(c.sha256 in old for c in after.chunks)
    assert len(after.chunks) > 20
    assert reused >= len(after.chunks) - 4


# --------------------------------------------------------------------------- options


def test_symlink_over_replaces_a_subtree(tree: Path, tmp_path: Path):
    data, result = pack(tree, symlink_over={"a/b": "/mnt/hybrid/a/b", "opt/new/thing": "/mnt/hybrid/thing"})
    dest = tmp_path / "out"
    extract(io.BytesIO(data), result.chunks, dest)
    assert os.readlink(dest / "a" / "b") == "/mnt/hybrid/a/b"
    assert (dest / "a" / "b").is_symlink()
    names = {e.name for raw in archives_of(data, result.chunks) for e in newc.read_entries(raw)}
    assert not any(n.startswith(b"a/b/") for n in names)
    assert os.readlink(dest / "opt" / "new" / "thing") == "/mnt/hybrid/thing"  # created, with parents
    assert stat.S_IMODE((dest / "opt" / "new").stat().st_mode) == 0o755
    assert (dest / "a" / "f00.conf").read_bytes() == (tree / "a" / "f00.conf").read_bytes()


def test_replace_files_keeps_mode_and_owner_or_defaults(tree: Path, tmp_path: Path):
    data, result = pack(
        tree, replace_files={"/etc/fstab": b"master:/x /x nfs ro 0 0\n", "etc/new.conf": b"n\n"}
    )
    dest = tmp_path / "out"
    extract(io.BytesIO(data), result.chunks, dest)
    fstab = (dest / "etc" / "fstab").lstat()
    assert (dest / "etc" / "fstab").read_bytes() == b"master:/x /x nfs ro 0 0\n"
    assert (stat.S_IMODE(fstab.st_mode), fstab.st_uid, fstab.st_gid) == (0o640, 1234, 1234)
    new = (dest / "etc" / "new.conf").lstat()
    assert (dest / "etc" / "new.conf").read_bytes() == b"n\n"
    assert (stat.S_IMODE(new.st_mode), new.st_uid, new.st_gid) == (0o644, 0, 0)
    assert (tree / "etc" / "fstab").read_bytes().startswith(b"proc")  # the tree is untouched


def test_skip_leaves_out_entries_and_subtrees(tree: Path, tmp_path: Path):
    asked: list[str] = []

    def skip(rel: str) -> bool:
        asked.append(rel)
        return rel in ("a/b", "secret", "hl/two")

    data, result = pack(tree, skip=skip)
    dest = tmp_path / "out"
    extract(io.BytesIO(data), result.chunks, dest)
    assert (
        not (dest / "a" / "b").exists()
        and not (dest / "secret").exists()
        and not (dest / "hl" / "two").exists()
    )
    assert (dest / "a" / "three").samefile(dest / "hl" / "one")
    assert "a/b/c" not in asked  # a skipped directory is not walked
    assert "small.txt" in asked and "a/f00.conf" in asked


def test_mapped_paths_win_over_skip_and_stay_out_of_skipped_subtrees(tree: Path, tmp_path: Path):
    data, result = pack(
        tree,
        skip=lambda rel: rel in ("etc", "tmp"),
        symlink_over={"tmp": "/var/tmp"},
        replace_files={"etc/fstab": b"x\n"},
    )
    dest = tmp_path / "out"
    extract(io.BytesIO(data), result.chunks, dest)
    assert os.readlink(dest / "tmp") == "/var/tmp"
    assert not (dest / "etc").exists()


def test_bad_option_paths_are_refused(tree: Path):
    with pytest.raises(ImageError, match="bad path"):
        pack(tree, replace_files={"../etc/passwd": b""})
    with pytest.raises(ImageError, match="bad path"):
        pack(tree, symlink_over={"/": "/x"})
    with pytest.raises(ImageError, match="both in symlink_over and replace_files"):
        pack(tree, symlink_over={"etc/fstab": "/x"}, replace_files={"etc/fstab": b""})
    with pytest.raises(ImageError, match="parent rel is not a packed directory"):
        pack(tree, replace_files={"rel/x": b""})


def test_file_too_large_for_newc_is_a_clear_error(tmp_path: Path):
    root = tmp_path / "r"
    root.mkdir()
    with open(root / "sparse.img", "wb") as f:
        f.truncate(newc.MAX_NEWC_FILESIZE + 1)  # sparse: nothing is written
    with pytest.raises(ImageError, match=r"sparse\.img: 4294967296 bytes is too large for cpio newc"):
        pack(root)


def test_missing_root_is_an_image_error(tmp_path: Path):
    with pytest.raises(ImageError, match="does not exist"):
        pack(tmp_path / "nope")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ImageError, match="not a directory"):
        pack(tmp_path / "file")


# --------------------------------------------------------------------------- reading API


def test_iter_frames_resumes_at_any_chunk(tree: Path):
    data, result = pack(tree)
    frames = frames_of(data, result.chunks)
    for k in (0, 1, len(frames) - 1, len(frames)):
        assert list(iter_frames(io.BytesIO(data), result.chunks, start=k)) == frames[k:]
    with pytest.raises(ImageError, match="resume index"):
        list(iter_frames(io.BytesIO(data), result.chunks, start=len(frames) + 1))


def test_resumed_transfer_reassembles_the_image(tree: Path, tmp_path: Path):
    """A node that got chunks 0..k-1, then resumed at k, holds the same image."""
    data, result = pack(tree)
    k = len(result.chunks) // 2
    first = b"".join(list(iter_frames(io.BytesIO(data), result.chunks))[:k])
    rest = b"".join(iter_frames(io.BytesIO(data), result.chunks, start=k))
    assert first + rest == data
    verify(io.BytesIO(first + rest), result.chunks)


def test_chunk_table_round_trips_through_dicts(tree: Path):
    _, result = pack(tree)
    assert [Chunk.from_dict(c.as_dict()) for c in result.chunks] == result.chunks


def test_overlay_archive_applies_after_the_image(tree: Path, tmp_path: Path):
    data, result = pack(tree)
    overlay = build_archive({"etc/hostname": (b"n0001\n", 0o644), "etc/fstab": (b"new\n", 0o600),
                             "root/.ssh/authorized_keys": (b"ssh-ed25519 AAAA\n", 0o600)})  # fmt: skip
    assert overlay == build_archive(
        {"etc/fstab": (b"new\n", 0o600), "root/.ssh/authorized_keys": (b"ssh-ed25519 AAAA\n", 0o600),
         "etc/hostname": (b"n0001\n", 0o644)})  # fmt: skip
    entries = newc.read_entries(zstandard.ZstdDecompressor().decompress(overlay))
    assert [e.name for e in entries] == [b"etc", b"etc/fstab", b"etc/hostname", b"root", b"root/.ssh",
                                         b"root/.ssh/authorized_keys"]  # fmt: skip
    assert [oct(e.mode) for e in entries][:2] == ["0o40755", "0o100600"]
    table = [*result.chunks, Chunk(len(data), len(overlay), zstandard.frame_content_size(overlay),
                                   hashlib.sha256(overlay).hexdigest())]  # fmt: skip
    dest = tmp_path / "out"
    extract(io.BytesIO(data + overlay), table, dest)
    assert (dest / "etc" / "hostname").read_bytes() == b"n0001\n"
    assert (dest / "etc" / "fstab").read_bytes() == b"new\n"
    assert stat.S_IMODE((dest / "etc" / "fstab").stat().st_mode) == 0o600
    assert (dest / "root" / ".ssh" / "authorized_keys").read_bytes() == b"ssh-ed25519 AAAA\n"
    assert (dest / "a" / "f01.conf").read_bytes() == (tree / "a" / "f01.conf").read_bytes()


def test_build_archive_refuses_bad_paths():
    with pytest.raises(ImageError, match="bad path"):
        build_archive({"../x": (b"", 0o644)})
    with pytest.raises(ImageError, match="also a parent directory"):
        build_archive({"etc": (b"", 0o644), "etc/x": (b"", 0o644)})
    with pytest.raises(ImageError, match="not a regular file"):
        build_archive({"dev/x": (b"", stat.S_IFCHR | 0o644)})


def test_extract_without_owners_drops_setuid(tree: Path, tmp_path: Path):
    data, result = pack(tree)
    dest = tmp_path / "out"
    extract(io.BytesIO(data), result.chunks, dest, same_owner=False)
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755
    assert (dest / "owned").stat().st_uid == os.getuid()
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777


def test_extract_over_existing_tree_replaces_entries(tree: Path, tmp_path: Path):
    data, result = pack(tree)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "small.txt").mkdir()  # an empty directory where a file goes
    (dest / "a").write_bytes(b"a file where a directory goes")
    (dest / "rel").write_bytes(b"old")
    extract(io.BytesIO(data), result.chunks, dest)
    assert snapshot(dest) == snapshot(tree)


# --------------------------------------------------------------------------- native vs reference


def reference_archive(entries: list[tuple]) -> bytes:
    """The pure-Python writer given the same planned entries as the native one."""
    out = bytearray()
    for name, mode, uid, gid, nlink, mtime, ino, rmaj, rmin, size, path, data in entries:
        if data is None:
            data = Path(os.fsdecode(path)).read_bytes() if path is not None else b""
        assert len(data) == size
        newc.write_entry(out, name, mode=mode, ino=ino, uid=uid, gid=gid, nlink=nlink, mtime=mtime,
                         rdevmajor=rmaj, rdevminor=rmin, data=data)  # fmt: skip
    newc.write_trailer(out)
    return bytes(out)


def random_tree(root: Path, rng: random.Random) -> None:
    root.mkdir()
    dirs = [root]
    for i in range(rng.randrange(20, 80)):
        parent = rng.choice(dirs)
        kind = rng.random()
        name = f"n{i}-" + "x" * rng.randrange(0, 40)
        if kind < 0.15:
            (parent / name).mkdir()
            dirs.append(parent / name)
        elif kind < 0.65:
            (parent / name).write_bytes(rng.randbytes(rng.choice([0, 1, 3, 4, 5, rng.randrange(0, 20000)])))
            os.chmod(parent / name, rng.choice([0o644, 0o755, 0o600, 0o4711]))
        elif kind < 0.8:
            (parent / name).symlink_to("t" * rng.randrange(1, 30))
        elif kind < 0.9:
            files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
            if files:
                os.link(rng.choice(files), parent / name)
        else:
            os.mknod(parent / name, stat.S_IFCHR | 0o600, os.makedev(rng.randrange(256), rng.randrange(256)))
        if rng.random() < 0.3:
            os.chown(parent / name, rng.randrange(5000), rng.randrange(5000), follow_symlinks=False)
        os.utime(parent / name, (0, rng.randrange(1 << 32)), follow_symlinks=False)


@pytest.mark.root  # random_tree makes device nodes and gives files other owners
@pytest.mark.parametrize("seed", range(6))
def test_native_writer_matches_reference_writer(tmp_path: Path, seed: int):
    rng = random.Random(seed)
    root = tmp_path / "r"
    random_tree(root, rng)
    planner = Planner(rng.choice([2 * KiB, 8 * KiB, 64 * KiB]))
    plans = [p for ready in plan_tree(os.fsencode(root), planner, {}, {}, None) for p in ready]
    assert plans
    for entries, usize in plans:
        native = cpiopack.build_chunk(entries)
        assert native == reference_archive(entries)
        assert len(native) == usize
        writer, piecewise = cpiopack.ChunkWriter(entries), bytearray()  # fill() in odd-sized pieces
        buf = bytearray(rng.randrange(1, 300))
        while n := writer.fill(buf):
            piecewise += buf[:n]
        assert piecewise == native


def test_native_writer_reports_vanished_and_changed_files(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    entry = (b"f", 0o100644, 0, 0, 1, 0, 1, 0, 0, 5, os.fsencode(path), None)
    assert newc.read_entries(cpiopack.build_chunk([entry]))[0].data == b"12345"
    path.write_bytes(b"123")
    with pytest.raises(ValueError, match="f: file changed size while packing"):
        cpiopack.build_chunk([entry])
    path.unlink()
    with pytest.raises(FileNotFoundError, match="f: file vanished while packing"):
        cpiopack.build_chunk([entry])
    with pytest.raises(ValueError, match="too large for cpio newc"):
        cpiopack.ChunkWriter([(b"f", 0o100644, 0, 0, 1, 0, 1, 0, 0, 1 << 32, b"/x", None)])
    with pytest.raises(ValueError, match="mtime -1 does not fit"):
        cpiopack.ChunkWriter([(b"f", 0o100644, 0, 0, 1, -1, 1, 0, 0, 0, None, None)])
    path.mkdir()
    with pytest.raises(ValueError, match="no longer a regular file"):
        cpiopack.build_chunk([entry])


def test_pack_reports_a_file_changed_during_packing(tree: Path, monkeypatch):
    real = cpiopack.ChunkWriter

    def shrink_then_build(entries):
        for e in entries:
            if e[0] == b"small.txt":
                Path(os.fsdecode(e[10])).write_bytes(b"hi")
        return real(entries)

    monkeypatch.setattr(cpiopack, "ChunkWriter", shrink_then_build)
    with pytest.raises(ImageError, match="small.txt: file changed size while packing"):
        pack(tree)


def test_reference_reader_round_trips_the_header():
    raw = bytearray()
    newc.write_entry(raw, "dev/null", mode=stat.S_IFCHR | 0o666, ino=9, uid=1, gid=2, mtime=3,
                     rdevmajor=1, rdevminor=3)  # fmt: skip
    newc.write_entry(raw, b"x", mode=stat.S_IFREG | 0o644, data=b"abc", nlink=1)
    newc.write_trailer(raw)
    header = newc.parse_header(bytes(raw[:110]))
    assert (header.ino, header.rdevmajor, header.rdevminor, header.namesize) == (9, 1, 3, 9)
    assert header.encode() == bytes(raw[:110])
    a, b = newc.read_entries(bytes(raw))
    assert (a.name, a.uid, a.gid, a.mtime) == (b"dev/null", 1, 2, 3)
    assert b.data == b"abc" and len(raw) % 4 == 0


# --------------------------------------------------------------------------- GNU cpio


def test_gnu_cpio_reads_every_chunk(tree: Path, tmp_path: Path):
    """`zstd -dc chunk | cpio -idm`, chunk after chunk into one directory (as the kernel does)."""
    data, result = pack(tree)
    dest = tmp_path / "gnu"
    dest.mkdir()
    listed = []
    for i, frame in enumerate(frames_of(data, result.chunks)):
        (tmp_path / f"c{i}.zst").write_bytes(frame)
        raw = subprocess.run(
            ["zstd", "-dc", str(tmp_path / f"c{i}.zst")], check=True, capture_output=True
        ).stdout
        names = subprocess.run(["cpio", "-it", "--quiet"], input=raw, check=True, capture_output=True).stdout
        listed += names.decode().splitlines()
        subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=raw, cwd=dest,
                       check=True, capture_output=True)  # fmt: skip
    ours = snapshot(tree)
    assert sorted(listed) == sorted(ours)
    theirs = snapshot(dest)
    assert theirs.keys() == ours.keys()
    for rel, (mode, uid, gid, mtime, body, *links) in ours.items():
        t_mode, t_uid, t_gid, t_mtime, t_body, *t_links = theirs[rel]
        assert (t_mode, t_uid, t_gid, t_body, t_links) == (mode, uid, gid, body, links), rel
        if not stat.S_ISDIR(mode) and not stat.S_ISLNK(mode):
            assert t_mtime == mtime, rel
