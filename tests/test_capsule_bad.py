"""Bad capsules: each refused with one line naming the reason, nothing written outside the
target, no half-written output left behind."""

import hashlib
import json
import stat
from pathlib import Path

import pytest
import zstandard

from perceus import capsule
from perceus.capsule.format import HEADER_SIZE, Header
from perceus.common import newc

from tests.support.capsule_trees import make_tree, reseal, rewrite_manifest
from tests.support.instance import Instance

# -- a valid capsule to damage ----------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("good")
    tree = make_tree(base / "tree", filler=4, device=False)  # no device node: no root needed
    scripts = base / "scripts" / "init"
    scripts.mkdir(parents=True)
    (scripts / "10-x.sh").write_text("echo x\n")
    path = base / "good.vnfs"
    capsule.pack(tree, path, capsule.Meta("good", "1"), chunk_size=32 << 10, nodescripts=base / "scripts")
    return path


@pytest.fixture
def bad(tmp_path: Path, good: Path) -> Path:
    """A private copy of the good capsule, for one test to damage."""
    path = tmp_path / "bad.vnfs"
    path.write_bytes(good.read_bytes())
    return path


def _header(path: Path) -> Header:
    data = path.read_bytes()
    return Header.parse(data[:HEADER_SIZE], len(data))


def _manifest(path: Path) -> dict:
    with capsule.open(path) as c:
        return c.manifest.as_dict()


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


# -- the file as a whole: each case damages the capsule, opening must name the reason ---------


def _truncate(n):
    return lambda p: p.write_bytes(p.read_bytes()[:n] if n >= 0 else p.read_bytes()[:n])


def _reheader(**fields):
    def apply(p: Path) -> None:
        h = _header(p)
        data = p.read_bytes()
        reseal(p, data, h.manifest_offset, h.manifest_length, **fields)

    return apply


def _raw_header_field(offset: int, value: bytes):
    def apply(p: Path) -> None:
        data = bytearray(p.read_bytes())
        data[offset : offset + len(value)] = value
        p.write_bytes(bytes(data))

    return apply


OPEN_CASES = {
    "empty": (_truncate(0), "empty file, not a capsule"),
    "truncated in the magic": (_truncate(5), "truncated: 5 bytes, shorter than the 80-byte header"),
    "truncated in the header": (_truncate(50), "truncated: 50 bytes, shorter than the 80-byte header"),
    "truncated in a member": (_truncate(5000), "truncated: 5000 bytes of"),
    "truncated in the manifest": (_truncate(-10), "truncated:"),
    "trailing data": (lambda p: p.write_bytes(p.read_bytes() + b"junk"), "4 bytes of trailing data"),
    "wrong magic": (_raw_header_field(0, b"PK\x03\x04"), "not a capsule: wrong magic"),
    "bzip2 instead": (lambda p: p.write_bytes(b"BZh91AY&SY" + b"\0" * 100), "bzip2 file (a legacy capsule?"),
    "future version": (
        _reheader(version=2),
        "unsupported capsule format version 2 (this perceus reads version 1)",
    ),
    "version flipped": (_raw_header_field(9, b"\x01"), "unsupported capsule format version 257"),
    "header byte flipped": (_raw_header_field(20, b"\xff"), "header CRC mismatch"),
    "crc flipped": (_raw_header_field(78, b"\xff"), "header CRC mismatch"),
    "unknown flag": (_reheader(flags=0x10), "unknown header flags 0x0010"),
    "module flag on a vnfs": (_reheader(flags=1), "header flags and manifest kind disagree"),
}


@pytest.mark.parametrize("case", OPEN_CASES)
def test_open_refuses(bad: Path, case: str) -> None:
    damage, reason = OPEN_CASES[case]
    damage(bad)
    with pytest.raises(capsule.CapsuleError) as exc:
        capsule.open(bad)
    assert reason in one_line(exc)
    assert str(bad) in str(exc.value)


def test_manifest_byte_flipped(bad: Path) -> None:
    _flip(bad, _header(bad).manifest_offset + 30)
    with pytest.raises(capsule.CapsuleError, match="manifest sha256 mismatch"):
        capsule.open(bad)


def _member_offset(path: Path, name: str, at: int = 2) -> int:
    member = next(m for m in _manifest(path)["members"] if m["name"] == name)
    return member["offset"] + at


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("config", "sha256 mismatch in member 'config'"),
        ("nodescripts/init/10-x.sh", "sha256 mismatch in member 'nodescripts/init/10-x.sh'"),
        ("rootfs", "sha256 mismatch in member 'rootfs'"),
        ("padding", "non-zero bytes in the padding"),
    ],
)
def test_verify_finds_every_flipped_byte(tmp_path: Path, bad: Path, where: str, reason: str) -> None:
    if where == "padding":
        m = _manifest(bad)
        rootfs = next(x for x in m["members"] if x["name"] == "rootfs")
        offset = rootfs["offset"] - 1  # the page alignment before the image
    else:
        offset = _member_offset(bad, where)
    _flip(bad, offset)
    with capsule.open(bad):
        pass  # the header and manifest are still fine: open() checks only those
    with pytest.raises(capsule.CapsuleError) as exc:
        capsule.verify(bad)
    assert reason in one_line(exc)
    if where != "padding":
        with capsule.open(bad) as c, pytest.raises(capsule.CapsuleError, match="sha256 mismatch"):
            c.read_member(where)
    # Unpacking a damaged capsule leaves nothing behind.
    if where != "padding":
        with pytest.raises(capsule.CapsuleError):
            capsule.unpack(bad, tmp_path / "dest")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.vnfs"]


def test_chunk_hash_mismatch_caught_by_imagefmt(bad: Path) -> None:
    """The member's own sha256 resealed over a damaged frame: the frame's sha256 still catches it."""
    offset = _member_offset(bad, "rootfs", at=40)
    _flip(bad, offset)
    m = _manifest(bad)
    rootfs = next(x for x in m["members"] if x["name"] == "rootfs")
    data = bad.read_bytes()
    digest = hashlib.sha256(data[rootfs["offset"] : rootfs["offset"] + rootfs["size"]]).hexdigest()

    def fix(d: dict) -> None:
        next(x for x in d["members"] if x["name"] == "rootfs")["sha256"] = digest

    rewrite_manifest(bad, fix)
    with pytest.raises(capsule.CapsuleError, match=r"root tree: chunk 0: sha256 mismatch"):
        capsule.verify(bad)


# -- the manifest: parsed totally -------------------------------------------------------------


def _member(d: dict, name: str) -> dict:
    return next(x for x in d["members"] if x["name"] == name)


def _on_member(name: str, key: str, value):
    def apply(d):
        _member(d, name)[key] = value

    return apply


def _rename_member(old: str, new: str):
    return _on_member(old, "name", new)


def _chunk(index: int, key: str, value):
    def apply(d):
        _member(d, "rootfs")["chunks"][index][key] = value

    return apply


def _overlap(d):
    config, hybridize = _member(d, "config"), _member(d, "hybridize")
    hybridize["offset"] = config["offset"] + 1


def _add_member(**member):
    def apply(d):
        d["members"].append(member)

    return apply


def _del(key):
    def apply(d):
        del d[key]

    return apply


ZERO = "0" * 64
MANIFEST_CASES = {
    "not json": (lambda d: b"{not json", "manifest is not valid JSON"),
    "not utf-8": (lambda d: b'{"kind": "\xff"}', "manifest is not valid JSON"),
    "deeply nested": (lambda d: b"[" * 100000 + b"]" * 100000, "manifest is not valid JSON"),
    "an array": (lambda d: b"[]", "the manifest must be an object"),
    "duplicate key": (lambda d: json.dumps(d)[:-1].encode() + b', "name": "x"}', "duplicate key 'name'"),
    "NaN": (
        lambda d: json.dumps(d).replace('"members"', '"x": NaN, "members"').encode(),
        "NaN is not allowed",
    ),
    "missing key": (_del("arch"), "the manifest lacks arch"),
    "unknown key": (lambda d: d.update(extra=1), "the manifest has unknown key 'extra'"),
    "bad kind": (lambda d: d.update(kind="rpm"), "kind must be one of vnfs, module"),
    "bad name": (lambda d: d.update(name="a/b"), "name 'a/b' is not allowed"),
    "name not a string": (lambda d: d.update(name=7), "name must be a one-line string"),
    "version with dash": (lambda d: d.update(version="1-2"), "version '1-2' is not allowed"),
    "vnfs without state": (lambda d: d.update(state=None), "state must be one of stateless, stateful"),
    "noarch vnfs": (lambda d: d.update(arch="noarch"), "needs a real architecture"),
    "unknown arch": (lambda d: d.update(arch="vax"), "arch must be one of"),
    "control character": (lambda d: d.update(os="a\nb"), "os must be a one-line string"),
    "huge string": (lambda d: d.update(tool="x" * 5000), "tool must be a one-line string"),
    "created not a date shape": (
        lambda d: d.update(created="yesterday"),
        "created 'yesterday' is not allowed",
    ),
    "created not a date": (lambda d: d.update(created="2025-13-45T99:00:00Z"), "is not a date"),
    "kernel version without kernel": (
        lambda d: d.update(kernel_version="6.1"),
        "exactly when there is a kernel",
    ),
    "members not a list": (lambda d: d.update(members={}), "members must be a list"),
    "member not an object": (lambda d: d["members"].append(3), "members[5] must be an object"),
    "member with '..'": (_rename_member("config", "../../etc/passwd"), "'../../etc/passwd' is not allowed"),
    "member absolute": (_rename_member("config", "/etc/passwd"), "'/etc/passwd' is not allowed"),
    "member hidden": (_rename_member("config", "nodescripts/.x"), "'nodescripts/.x' is not allowed"),
    "member twice": (_rename_member("hybridize", "config"), "member 'config' appears twice"),
    "member inside member": (
        _rename_member("hybridize", "config/x"),
        "'config/x' lies inside member 'config'",
    ),
    "member named rootfs but raw": (_rename_member("config", "rootfs"), "cannot have encoding raw"),
    "unknown encoding": (_on_member("config", "encoding", "gzip"), "encoding must be one of"),
    "offset a string": (_on_member("config", "offset", "80"), "offset must be an integer"),
    "offset a boolean": (_on_member("config", "size", True), "size must be an integer"),
    "offset a float": (_on_member("config", "offset", 80.0), "offset must be an integer"),
    "offset in the header": (_on_member("config", "offset", 10), "offset must be an integer in 80.."),
    "offset beyond the file": (_on_member("config", "offset", 1 << 40), "offset must be an integer in 80.."),
    "size beyond the manifest": (_on_member("config", "size", 1 << 40), "size must be an integer in 0.."),
    "negative size": (_on_member("config", "size", -1), "size must be an integer"),
    "overlapping members": (_overlap, "overlap"),
    "bad sha256": (_on_member("config", "sha256", "ABC"), "sha256 'ABC' is not allowed"),
    "setuid mode": (_on_member("config", "mode", 0o4755), "mode must be an integer in 0..511"),
    "chunk gap": (_chunk(1, "offset", 1), "chunk 1 is not where the previous chunk ends"),
    "chunk sizes short": (_chunk(0, "usize", 1), "chunks unpack to"),
    "chunk extra key": (_chunk(0, "x", 1), "chunk 0 has unknown key 'x'"),
    "chunk sha": (_chunk(0, "sha256", 5), "chunk 0 sha256 must be a one-line string"),
    "rootfs usize a bomb": (_on_member("rootfs", "usize", 1 << 50), "exceeds the limit"),
    "rootfs missing": (lambda d: d["members"].pop(), "must have a rootfs member"),
    "raw member with chunks": (
        _add_member(name="x", encoding="raw", offset=100, size=0, sha256=ZERO, mode=0, chunks=[]),
        "has unknown key 'chunks'",
    ),
}


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_manifest_schema(bad: Path, case: str) -> None:
    mutate, reason = MANIFEST_CASES[case]
    rewrite_manifest(bad, mutate)
    with pytest.raises(capsule.CapsuleError) as exc:
        capsule.open(bad)
    assert reason in one_line(exc)


def test_manifest_length_is_bounded(bad: Path) -> None:
    h = _header(bad)
    data = bad.read_bytes()
    reseal(bad, data, h.manifest_offset, 17 << 20)
    with pytest.raises(capsule.CapsuleError, match="manifest length 17825792 outside 1..16777216"):
        capsule.open(bad)


def test_declared_size_beyond_the_callers_limit(tmp_path: Path, good: Path) -> None:
    with pytest.raises(capsule.CapsuleError, match="declared unpacked size .* exceeds the limit 1000"):
        capsule.unpack(good, tmp_path / "dest", max_usize=1000)
    assert list(tmp_path.iterdir()) == []


# -- hostile root trees: forged images, extraction must refuse --------------------------------


def forge(
    path: Path, archives: list[bytes], *, content_size: bool = True, usizes: list[int] | None = None
) -> None:
    """A capsule whose rootfs is the given cpio archives (one zstd frame each), honestly hashed."""
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    frames = [cctx.compress(a) for a in archives]
    body = bytearray(b"\0" * 4096)
    chunks, pos = [], 0
    for frame, usize in zip(frames, usizes or [len(a) for a in archives], strict=True):
        chunks.append(
            {"offset": pos, "csize": len(frame), "usize": usize, "sha256": hashlib.sha256(frame).hexdigest()}
        )
        body += frame
        pos += len(frame)
    rootfs = {
        "name": "rootfs",
        "encoding": "cpio-zstd-chunks",
        "offset": 4096,
        "size": pos,
        "sha256": hashlib.sha256(bytes(body[4096:])).hexdigest(),
        "usize": sum(c["usize"] for c in chunks),
        "entries": 1,
        "chunks": chunks,
    }
    manifest = {
        "kind": "vnfs",
        "name": "forged",
        "version": "1",
        "revision": "1",
        "state": "stateless",
        "arch": "x86_64",
        "os": "unknown",
        "kernel_version": None,
        "kernel_args": "",
        "created": "2025-01-01T00:00:00Z",
        "tool": "test",
        "members": [rootfs],
    }
    raw = json.dumps(manifest).encode()
    reseal(path, bytes(body) + raw, len(body), len(raw))


def archive(*entries: tuple) -> bytes:
    """A cpio newc archive of (name, mode, data) entries, with a trailer."""
    out = bytearray()
    newc.write_entry(out, ".", mode=stat.S_IFDIR | 0o755, nlink=2)
    for ino, (name, mode, data) in enumerate(entries, start=2):
        newc.write_entry(out, name, mode=mode, data=data, ino=ino, rdevmajor=5 if stat.S_ISCHR(mode) else 0)
    newc.write_trailer(out)
    return bytes(out)


REG, DIR, LNK, CHR = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777, stat.S_IFCHR | 0o600


def _hostile(outside: Path) -> dict:
    return {
        "'..' in a path": ([archive(("../escaped", REG, b"x"))], "'..' in path"),
        "'..' deeper": ([archive(("etc", DIR, b""), ("etc/../../escaped", REG, b"x"))], "'..' in path"),
        "absolute path": ([archive((str(outside / "escaped"), REG, b"x"))], "absolute path"),
        "write through a symlink": (
            [archive(("link", LNK, str(outside).encode()), ("link/escaped", REG, b"x"))],
            "link is a symlink: refusing to write through it",
        ),
        "symlink planted in one chunk, used in the next": (
            [archive(("link", LNK, str(outside).encode())), archive(("link/escaped", REG, b"x"))],
            "refusing to write through it",
        ),
        "device node": ([archive(("dev", DIR, b""), ("dev/console", CHR, b""))], "device node not allowed"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "'..' in a path",
        "'..' deeper",
        "absolute path",
        "write through a symlink",
        "symlink planted in one chunk, used in the next",
        "device node",
    ],
)
def test_hostile_root_tree(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archives, reason = _hostile(outside)[case]
    forge(tmp_path / "evil.vnfs", archives)
    capsule.verify(tmp_path / "evil.vnfs")  # honestly hashed: only extraction can object
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(capsule.CapsuleError) as exc:
        capsule.unpack(tmp_path / "evil.vnfs", work / "dest", allow_devices=False)
    assert reason in one_line(exc)
    assert list(outside.iterdir()) == [] and not (tmp_path / "escaped").exists()
    assert list(work.iterdir()) == []  # no half-unpacked target, no work directory


@pytest.mark.root  # the device node is made
def test_devices_are_fine_when_allowed(tmp_path: Path) -> None:
    forge(tmp_path / "dev.vnfs", [archive(("dev", DIR, b""), ("dev/console", CHR, b""))])
    capsule.unpack(tmp_path / "dev.vnfs", tmp_path / "dest")
    assert (tmp_path / "dest" / "rootfs" / "dev" / "console").is_char_device()


def test_decompression_bomb_stops_at_the_declared_size(tmp_path: Path) -> None:
    big = archive(("big", REG, b"\0" * (20 << 20)))
    # The frame hides its size and the table claims 4 KiB: extraction must stop there.
    forge(tmp_path / "bomb.vnfs", [big], content_size=False, usizes=[4096])
    with pytest.raises(capsule.CapsuleError) as exc:
        capsule.unpack(tmp_path / "bomb.vnfs", tmp_path / "dest")
    assert "bomb" in one_line(exc)
    assert not (tmp_path / "dest").exists()
    # With the size in the frame header, the lie is caught before decompressing at all.
    forge(tmp_path / "bomb2.vnfs", [big], usizes=[4096])
    with pytest.raises(capsule.CapsuleError, match="size mismatch"):
        capsule.verify(tmp_path / "bomb2.vnfs")


# -- through the command: one line, the right status ------------------------------------------


def test_cli_one_line_errors(bare: Instance, tmp_path: Path, bad: Path) -> None:
    _flip(bad, _member_offset(bad, "config"))
    bare.error(
        "capsule",
        "verify",
        str(bad),
        status=1,
        contains=f"sha256 mismatch in member 'config': the capsule is damaged ({bad})",
    )
    bare.ok("capsule", "inspect", str(bad))  # the manifest itself is intact
    bare.error("capsule", "unpack", str(bad), str(tmp_path / "dest"), status=1, contains="sha256 mismatch")
    assert not (tmp_path / "dest").exists()
    _reheader(version=7)(bad)
    bare.error(
        "capsule",
        "inspect",
        str(bad),
        status=1,
        contains="unsupported capsule format version 7 (this perceus reads version 1)",
    )
    outside = tmp_path / "outside"
    outside.mkdir()
    forge(tmp_path / "evil.vnfs", [archive(("link", LNK, str(outside).encode()), ("link/x", REG, b"x"))])
    bare.error(
        "capsule",
        "unpack",
        str(tmp_path / "evil.vnfs"),
        str(tmp_path / "dest"),
        status=1,
        contains="refusing to write through it",
    )
    assert list(outside.iterdir()) == [] and not (tmp_path / "dest").exists()
    forge(tmp_path / "dev.vnfs", [archive(("console", CHR, b""))])
    bare.error(
        "capsule",
        "unpack",
        "--no-devices",
        str(tmp_path / "dev.vnfs"),
        str(tmp_path / "dest"),
        status=1,
        contains="device node not allowed",
    )
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
