"""Stage one's pure parts: kernel command line, node.conf, facts from a fake /sys, newc, initrd."""

import asyncio
import hashlib
import io
import os
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest

from perceus.common.newc import write_tree
from perceus.stage1 import fetch
from perceus.stage1.boot import assemble_initrd, initrd_sinks, kernel_cmdline, kexec_boot
from perceus.stage1.cmdline import BootOptions, Master, parse_cmdline, parse_master, parse_masters
from perceus.stage1.facts import gather_facts, random_mac, simulated_facts
from perceus.stage1.fetch import ChecksumError, DiscardSink, Download, ObjectFetch
from perceus.stage1.netup import modules_to_load, parse_aliases, parse_deps
from perceus.stage1.nodeconf import DEFAULT_INTERVAL, parse_node_conf
from perceus.stage1.protocol import ChunkEntry, Hello, ImageOffer, ObjectKind, encode_message

from tests.support.newc_archives import archive

# --- kernel command line ---


def test_cmdline_words():
    opts = parse_cmdline(
        "BOOT_IMAGE=vmlinuz quiet masterip=10.0.0.1,10.0.0.2:9870,[fd00::1]:99 perceus.debug=3 "
        "perceus.iface=eth1,ib0 perceus.noload=e1000e,mlx4-core console=ttyS0"
    )
    assert opts.masters == (Master("10.0.0.1"), Master("10.0.0.2", 9870), Master("fd00::1", 99))
    assert (opts.debug, opts.ifaces, opts.noload, opts.warnings) == (
        3,
        ("eth1", "ib0"),
        ("e1000e", "mlx4_core"),
        (),
    )
    assert str(opts.masters[2]) == "[fd00::1]:99" and str(opts.masters[0]) == "10.0.0.1:987"


def test_cmdline_defaults_and_bad_values_never_fail():
    assert parse_cmdline("") == BootOptions()
    opts = parse_cmdline("masterip=10.0.0.1:99999 perceus.debug=loud masterip")
    assert opts.masters == () and opts.debug == 0 and len(opts.warnings) == 2
    assert parse_cmdline("masterip=a masterip=b").masters == (Master("b"),)  # the last one wins


@pytest.mark.parametrize("text", ["", "a:b:c", "[::1", "host:0", "host:x", "a b", "[::1]x"])
def test_bad_master_addresses(text):
    with pytest.raises(ValueError):
        parse_master(text)


def test_ipv6_without_port():
    assert parse_masters("fd00::2, host") == (Master("fd00::2"), Master("host"))


# --- node.conf ---


def test_node_conf_as_perceusd_writes_it():
    conf = parse_node_conf(
        "# Written by perceusd\n"
        'NODENAME="n0007"\nNODEID="52:54:00:12:34:56"\nGROUPNAME=""\nVNFS="centos-5.1"\n'
        'VNFS_SHA256="ab"\nMASTERS="10.0.0.1:987,10.0.0.2:9870"\nPROVISIOND_INTERVAL="60"\n'
        'ODD="a \\"quoted\\" \\$value \\\\ \\n"\nexport BARE=word\nSINGLE=\'x y\'\n'
    )
    assert conf.masters == (Master("10.0.0.1"), Master("10.0.0.2", 9870))
    assert (conf.interval, conf.nodeid, conf.nodename, conf.vnfs) == (
        60,
        "52:54:00:12:34:56",
        "n0007",
        "centos-5.1",
    )
    assert conf.values["ODD"] == 'a "quoted" $value \\ \\n'
    assert conf.values["BARE"] == "word" and conf.values["SINGLE"] == "x y"
    assert parse_node_conf("").interval == DEFAULT_INTERVAL


@pytest.mark.parametrize(
    "text",
    [
        'NAME="open',
        "no equals",
        'X="a" trailing',
        "X=two words",
        "PROVISIOND_INTERVAL=0",
        "MASTERS=a:b:c",
        "1X=a",
    ],
)
def test_bad_node_conf(text):
    with pytest.raises(ValueError):
        parse_node_conf(text)


# --- hardware facts ---


def fake_tree(root: Path) -> tuple[Path, Path]:
    sys_root, proc_root = root / "sys", root / "proc"
    for name, address, kind in [
        ("lo", "00:00:00:00:00:00", "772"),
        ("eth0", "52:54:00:12:34:56", "1"),
        ("ib0", ":".join(["80"] * 20), "32"),
        ("tun0", "00:00:00:00:00:00", "65534"),
        ("eth1", "52:54:00:ab:cd:ef", "1"),
    ]:
        d = sys_root / "class" / "net" / name
        d.mkdir(parents=True)
        (d / "address").write_text(address + "\n")
        (d / "type").write_text(kind + "\n")
    cpu = sys_root / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True)
    (cpu / "online").write_text("0-3,6\n")
    dmi = sys_root / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    (dmi / "product_uuid").write_text("4c4c4544-0042-3510-8052-b4c04f384d32\n")
    (dmi / "product_serial").write_text("CZ1234567\n")
    (dmi / "chassis_asset_tag").write_text("R7U12\x01\n")
    proc_root.mkdir()
    (proc_root / "meminfo").write_text("MemTotal:        8000000 kB\nMemFree: 1 kB\n")
    return sys_root, proc_root


def test_facts_from_a_fake_sys_tree(tmp_path):
    sys_root, proc_root = fake_tree(tmp_path)
    facts = gather_facts(sys_root=sys_root, proc_root=proc_root)
    assert facts.nodeid == "52:54:00:12:34:56"
    assert [(i.name, i.hwaddr) for i in facts.interfaces] == [
        ("eth0", "52:54:00:12:34:56"),
        ("eth1", "52:54:00:ab:cd:ef"),
        ("ib0", ":".join(["80"] * 20)),
    ]
    assert (facts.cpus, facts.memory) == (5, 8000000 * 1024)
    assert (facts.smbios_uuid, facts.serial, facts.asset_tag) == (
        "4c4c4544-0042-3510-8052-b4c04f384d32",
        "CZ1234567",
        "R7U12",
    )
    assert gather_facts("eth1", sys_root=sys_root, proc_root=proc_root).nodeid == "52:54:00:AB:CD:EF"
    encode_message(Hello(facts.nodeid, "init", **facts.hello_fields()))  # the protocol accepts them


def test_facts_unreadable_parts_are_unknown(tmp_path):
    sys_root, proc_root = fake_tree(tmp_path)
    (sys_root / "class" / "dmi" / "id" / "product_uuid").unlink()
    (proc_root / "meminfo").unlink()
    facts = gather_facts(sys_root=sys_root, proc_root=proc_root)
    assert (facts.smbios_uuid, facts.memory) == ("", 0)
    with pytest.raises(LookupError):
        gather_facts("ib0", sys_root=sys_root, proc_root=proc_root)  # 20-byte address: no NodeID
    with pytest.raises(LookupError):
        gather_facts(sys_root=tmp_path / "nothing", proc_root=proc_root)


def test_simulated_facts():
    mac = random_mac()
    assert int(mac[:2], 16) & 0x03 == 0x02 and mac == mac.upper()
    facts = simulated_facts("02:aa:bb:cc:dd:ee")
    assert facts.nodeid == "02:AA:BB:CC:DD:EE" and facts.interfaces[0].name == "eth0"
    encode_message(Hello(facts.nodeid, "init", **facts.hello_fields()))
    assert simulated_facts() != simulated_facts()


# --- newc ---


def make_staging(root: Path) -> None:
    (root / "etc" / "sub").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("n0001\n")
    (root / "etc" / "sub" / "secret").write_bytes(b"\0\1\2" * 1000)
    os.chmod(root / "etc" / "sub" / "secret", 0o600)
    (root / "etc" / "link").symlink_to("hostname")
    (root / "empty").mkdir()


def test_newc_round_trip_with_cpio(tmp_path):
    staging, out = tmp_path / "staging", tmp_path / "out"
    staging.mkdir()
    out.mkdir()
    make_staging(staging)
    buf = io.BytesIO()
    size = write_tree(buf, staging)
    assert size == len(buf.getvalue()) and size % 4 == 0
    subprocess.run(
        ["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"], input=buf.getvalue(), cwd=out, check=True
    )
    assert (out / "etc" / "hostname").read_text() == "n0001\n"
    assert (out / "etc" / "sub" / "secret").read_bytes() == b"\0\1\2" * 1000
    assert stat.S_IMODE(os.stat(out / "etc" / "sub" / "secret").st_mode) == 0o600
    assert os.readlink(out / "etc" / "link") == "hostname"
    assert (out / "empty").is_dir()
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=buf.getvalue(), capture_output=True, check=True)
    assert listing.stdout.decode().split() == [
        "empty", "etc", "etc/hostname", "etc/link", "etc/sub", "etc/sub/secret",
    ]  # fmt: skip


def test_newc_header_fields(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    data = io.BytesIO()
    write_tree(data, tmp_path)
    raw = data.getvalue()
    fields = [int(raw[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    assert raw[:6] == b"070701"
    assert fields[0] == 1 and fields[2:5] == [0, 0, 1] and fields[6] == 3 and fields[11] == 2
    assert raw[110:112] == b"f\0" and raw[112:115] == b"abc"
    assert b"TRAILER!!!\0" in raw


def test_newc_empty_dir_writes_nothing(tmp_path):
    buf = io.BytesIO()
    assert write_tree(buf, tmp_path) == 0 and buf.getvalue() == b""


# --- downloads, initrd and kexec ---


def offer_for(image_chunks: list[bytes], overlay: bytes, kernel: bytes, args: str = "quiet") -> ImageOffer:
    entries, off = [], 0
    for c in image_chunks:
        entries.append(ChunkEntry(off, len(c), len(c), hashlib.sha256(c).hexdigest()))
        off += len(c)
    image = b"".join(image_chunks)
    return ImageOffer(
        "v", len(image), hashlib.sha256(image).hexdigest(), tuple(entries),
        len(overlay), hashlib.sha256(overlay).hexdigest(),
        len(kernel), hashlib.sha256(kernel).hexdigest(), args,
    )  # fmt: skip


def test_object_fetch_verifies_and_resumes():
    chunks = [b"a" * 10, b"b" * 20, b"c" * 5]
    offer = offer_for(chunks, b"", b"k")
    obj = ObjectFetch(ObjectKind.IMAGE, offer, DiscardSink())
    assert obj.begin() == 0
    obj.feed(b"a" * 10 + b"b" * 7)  # a chunk and a half, then the connection drops
    assert obj.good == 10 and not obj.complete
    assert obj.begin() == 10
    obj.feed(b"b" * 19 + b"X")  # a bad byte at the end of chunk 1
    obj.feed(b"c" * 5)  # ignored: the rest of this transfer
    assert obj.end() and obj.good == 10 and "chunk 1" in obj.last_error
    assert obj.begin() == 10
    for piece in (b"b" * 3, b"b" * 17 + b"c", b"cccc"):
        obj.feed(piece)
    assert not obj.end() and obj.complete


def test_object_fetch_gives_up_after_repeated_corruption():
    offer = offer_for([b"a" * 10], b"", b"")
    obj = ObjectFetch(ObjectKind.IMAGE, offer, DiscardSink())
    for _ in range(2):
        obj.begin()
        obj.feed(b"b" * 10)
    obj.begin()
    with pytest.raises(ChecksumError, match="3 times"):
        obj.feed(b"b" * 10)


def test_image_is_verified_by_its_chunk_table_alone():
    """The image is hashed once, chunk by chunk: its whole sha256 only names it (resume, node.conf)."""
    chunks = [b"a" * 10, b"b" * 10]
    good = offer_for(chunks, b"", b"")
    renamed = ImageOffer(**{**good.__dict__, "image_sha256": "0" * 64})
    obj = ObjectFetch(ObjectKind.IMAGE, renamed, DiscardSink())
    obj.begin()
    obj.feed(b"a" * 10 + b"b" * 10)
    assert not obj.end() and obj.complete


class _Flow:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def test_hashing_lane_verifies_in_order_and_pauses_the_socket(monkeypatch):
    """On worker threads: same verdicts as inline, pieces in order, the socket paused while it lags."""
    monkeypatch.setattr(fetch, "LANE_HIGH", 64)
    monkeypatch.setattr(fetch, "LANE_LOW", 16)
    size = 4096
    chunks = [bytes([i]) * size for i in range(8)]
    offer = offer_for(chunks, b"", b"")
    written = bytearray(len(chunks) * size)

    class Sink:
        def write(self, offset: int, data: memoryview) -> None:
            written[offset : offset + len(data)] = data

        def close(self) -> None:
            pass

    async def transfer(obj: ObjectFetch, data: bytes, flow: _Flow) -> bool:
        await obj.quiesce()
        obj.begin(flow)
        for i in range(0, len(data), 100):
            obj.feed(data[i : i + 100])
        return await obj.settle()

    async def main() -> None:
        obj = ObjectFetch(ObjectKind.IMAGE, offer, Sink(), fetch.hash_executor())
        flow = _Flow()
        image = b"".join(chunks)
        bad = image[: 3 * size] + b"X" + image[3 * size + 1 :]
        assert await transfer(obj, bad, flow)  # chunk 3 fails: fetch again from its start
        assert obj.good == 3 * size and "chunk 3" in obj.last_error
        assert not await transfer(obj, image[obj.good :], flow)
        assert obj.complete and bytes(written) == image
        assert "pause" in flow.calls and flow.calls.count("pause") <= flow.calls.count("resume") + 1

    asyncio.run(main())


def test_hashing_lane_gives_up_after_repeated_corruption():
    offer = offer_for([b"a" * 10], b"", b"")

    async def main() -> None:
        obj = ObjectFetch(ObjectKind.IMAGE, offer, DiscardSink(), fetch.hash_executor())
        for _ in range(2):
            await obj.quiesce()
            obj.begin()
            obj.feed(b"b" * 10)
            assert await obj.settle()
        await obj.quiesce()
        obj.begin()
        obj.feed(b"b" * 10)
        with pytest.raises(ChecksumError, match="3 times"):
            await obj.settle()

    asyncio.run(main())


def test_download_keeps_progress_only_for_the_same_offer():
    first = offer_for([b"a" * 10, b"b" * 10], b"o", b"k")
    d = Download()
    d.accept(first)
    assert d.objects is not None
    d.objects[ObjectKind.IMAGE].begin()
    d.objects[ObjectKind.IMAGE].feed(b"a" * 10)
    assert d.accept(first) == ["resuming the image at byte 10 of 20"]
    other = offer_for([b"x" * 20], b"o", b"k")
    assert d.accept(other) == ["the image changed on the master: fetching it from the start"]
    assert d.objects[ObjectKind.IMAGE].good == 0


def test_initrd_layout_and_assembly(tmp_path):
    chunks, overlay, kernel = [b"I" * 1000, b"J" * 24], b"O" * 100, b"K" * 50
    offer = offer_for(chunks, overlay, kernel, "root=/dev/ram0 quiet")
    d = Download(initrd_sinks(tmp_path))
    d.accept(offer)
    assert d.objects is not None
    for kind, data in (
        (ObjectKind.IMAGE, b"".join(chunks)),
        (ObjectKind.OVERLAY, overlay),
        (ObjectKind.KERNEL, kernel),
    ):
        obj = d.objects[kind]
        obj.begin()
        obj.feed(data)
        assert obj.complete
    d.close()
    staging = tmp_path / "destdir"
    (staging / "etc").mkdir(parents=True)
    (staging / "etc" / "extra").write_text("x")
    size = assemble_initrd(tmp_path / "initrd", offer, staging)
    initrd = (tmp_path / "initrd").read_bytes()
    assert len(initrd) == size and initrd[:1024] == b"".join(chunks) and initrd[1024:1124] == overlay
    assert initrd[1124:1130] == b"070701" and b"etc/extra" in initrd
    assert (tmp_path / "kernel").read_bytes() == kernel
    (staging / "etc" / "extra").unlink()
    (staging / "etc").rmdir()
    assert assemble_initrd(tmp_path / "initrd", offer, staging) == 1124  # empty DESTDIR: no third archive


def test_kernel_cmdline():
    assert kernel_cmdline("root=/dev/ram0  quiet", BootOptions()) == "root=/dev/ram0 quiet"
    assert kernel_cmdline("quiet", BootOptions(debug=3)) == "quiet perceus.debug=3"
    assert kernel_cmdline("perceus.debug=1", BootOptions(debug=3)) == "perceus.debug=1"


def test_kexec_boot_calls(tmp_path):
    calls = []
    fake = types.SimpleNamespace(
        LINUX_REBOOT_CMD_KEXEC=0x45584543,
        kexec_file_load=lambda k, i, c: calls.append(("load", os.readlink(f"/proc/self/fd/{k}"), c)),
        reboot=lambda cmd: calls.append(("reboot", cmd)),
    )
    (tmp_path / "kernel").write_bytes(b"k")
    (tmp_path / "initrd").write_bytes(b"i")
    kexec_boot(tmp_path / "kernel", tmp_path / "initrd", "quiet", sysio=fake)  # type: ignore[arg-type]
    assert calls == [("load", str(tmp_path / "kernel"), "quiet"), ("reboot", 0x45584543)]


# --- drivers ---


def test_driver_selection():
    aliases = parse_aliases(
        "# Aliases\nalias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_net\n"
        "alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\nalias virtio:d00000001v* virtio-net\n"
    )
    deps = parse_deps(
        "kernel/drivers/net/virtio_net.ko.xz: kernel/net/core/failover.ko.xz "
        "kernel/drivers/net/net_failover.ko.xz\n"
        "kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz\n"
        "kernel/net/core/failover.ko.xz:\nkernel/drivers/net/ethernet/intel/e1000/e1000.ko.xz:\n"
    )
    devices = ["pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "virtio:d00000001v00001AF4"]
    assert modules_to_load(devices, aliases, deps) == ["failover", "net_failover", "virtio_net"]
    assert modules_to_load(devices, aliases, deps, noload=("virtio_net",)) == []
    assert modules_to_load(["pci:v00008086d0000100Esv0sd0bc02sc00i00"], aliases, deps) == ["e1000"]


# --- what stage one may import ---

ALLOWED_TOP = {"construct", "pyroute2"}
ALLOWED_PERCEUS = ("perceus.stage1", "perceus.native", "perceus.common")  # the rooms frozen with stage one
STAGE1 = Path(__file__).resolve().parent.parent / "stage1"


def test_stage1_imports_only_what_the_initramfs_has():
    import ast

    for path in sorted(STAGE1.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "perceus":
                    assert name.startswith(ALLOWED_PERCEUS), f"{path.name}: {name}"
                else:
                    assert top in ALLOWED_TOP or top in sys.stdlib_module_names, f"{path.name}: {name}"


def test_simulate_mode_loads_neither_pyroute2_nor_native():
    code = (
        "import sys; import perceus.stage1.main, perceus.stage1.simulate, perceus.stage1.boot; "
        "print(sorted(m for m in sys.modules if m.startswith(('pyroute2', 'perceus.native'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the newc reader (the simulated node unpacks its overlay with it) ------------------------------------


def test_newc_extract_round_trip_with_write_tree(tmp_path):
    from perceus.stage1.simulate import unpack_archive as extract

    src = tmp_path / "src"
    (src / "etc" / "perceus").mkdir(parents=True)
    (src / "etc" / "perceus" / "node.conf").write_text('NODENAME="n0000"\n')
    (src / "etc" / "secret").write_bytes(b"k" * 5000)
    os.chmod(src / "etc" / "secret", 0o600)
    os.chmod(src / "etc" / "perceus", 0o750)
    os.symlink("perceus/node.conf", src / "etc" / "link")
    buf = io.BytesIO()
    write_tree(buf, src)
    buf.seek(0)
    dest = tmp_path / "dest"
    dest.mkdir()
    assert extract(buf, dest) == 5
    assert (dest / "etc/perceus/node.conf").read_text() == 'NODENAME="n0000"\n'
    assert stat.S_IMODE((dest / "etc/secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "etc/perceus").stat().st_mode) == 0o750
    assert os.readlink(dest / "etc/link") == "perceus/node.conf"


def test_newc_extract_replaces_makes_parents_and_never_writes_through_links(tmp_path):
    from perceus.stage1.simulate import unpack_archive as extract

    dest = tmp_path / "root"
    (dest / "etc").mkdir(parents=True)
    (dest / "etc" / "old").write_text("previous boot\n")
    outside = tmp_path / "outside"
    outside.write_text("untouched\n")
    os.symlink(outside, dest / "etc" / "hostname")  # a previous boot's symlink: replaced, not followed
    raw = archive(
        ("./etc/old", 0o100644, b"new\n"),
        ("etc/hostname", 0o100644, b"n0001\n"),
        ("var/lib/deep/file", 0o100640, b"x"),
    )
    assert extract(io.BytesIO(raw), dest) == 3
    assert (dest / "etc/old").read_text() == "new\n"
    assert not (dest / "etc/hostname").is_symlink() and (dest / "etc/hostname").read_text() == "n0001\n"
    assert outside.read_text() == "untouched\n"
    assert stat.S_IMODE((dest / "var/lib/deep/file").stat().st_mode) == 0o640
    # keep: what the predicate says stays as it is
    assert extract(io.BytesIO(archive(("etc/old", 0o100644, b"overlay\n"))), dest, keep=lambda st: True) == 0
    assert (dest / "etc/old").read_text() == "new\n"


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../escape", "etc/../../escape", "out/escape"],
)
def test_newc_extract_refuses_paths_leaving_the_root(tmp_path, name):
    from perceus.common.newc import NewcError
    from perceus.stage1.simulate import unpack_archive as extract

    dest = tmp_path / "root"
    dest.mkdir()
    os.symlink(tmp_path, dest / "out")  # a symlink leaving the root
    with pytest.raises(NewcError):
        extract(io.BytesIO(archive((name, 0o100644, b"evil\n"))), dest)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "passwd").exists()


def test_newc_extract_follows_symlinks_that_stay_inside(tmp_path):
    from perceus.stage1.simulate import unpack_archive as extract

    dest = tmp_path / "root"
    (dest / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", dest / "lib")
    assert extract(io.BytesIO(archive(("lib/mod.conf", 0o100644, b"m\n"))), dest) == 1
    assert (dest / "usr/lib/mod.conf").read_text() == "m\n"


def test_newc_extract_truncated_or_corrupt_archives_are_errors(tmp_path):
    from perceus.common.newc import MAX_NAME_SIZE, NewcError
    from perceus.stage1.simulate import unpack_archive as extract

    good = archive(("etc/a", 0o100644, b"a" * 100), ("etc/b", 0o100644, b"b"))
    cases = {
        "no trailer": good[: good.index(b"TRAILER!!!") - 110],
        "in the data": good[:150],
        "in the header": good[:50],
        "empty": b"",
        "bad magic": b"070707" + good[6:],
        "bad field": good[:14] + b"zzzzzzzz" + good[22:],
        "after the trailer": good + b"junk",
    }
    for what, data in cases.items():
        dest = tmp_path / what.replace(" ", "-")
        dest.mkdir()
        with pytest.raises(NewcError):
            extract(io.BytesIO(data), dest)
    huge = bytearray(archive(("x", 0o100644, b"")))
    huge[94:102] = b"%08X" % (MAX_NAME_SIZE + 1)  # namesize field
    with pytest.raises(NewcError, match="name size"):
        extract(io.BytesIO(bytes(huge)), tmp_path)
    (tmp_path / "padded").mkdir()
    assert extract(io.BytesIO(good + b"\0" * 512), tmp_path / "padded") == 2  # zero padding after: fine


def test_unpack_overlay_needs_zstd_and_reports_corruption(tmp_path, monkeypatch):
    import zstandard

    from perceus.stage1 import simulate

    overlay = tmp_path / "overlay"
    raw = archive(("etc/perceus/node.conf", 0o100644, b"N=1\n"))
    overlay.write_bytes(zstandard.ZstdCompressor().compress(raw))
    root = tmp_path / "root"
    root.mkdir()
    assert simulate.unpack_overlay(overlay, root) == 1
    assert (root / "etc/perceus/node.conf").read_text() == "N=1\n"
    overlay.write_bytes(b"not zstd at all")
    with pytest.raises(simulate.BootFailed, match="zstd"):
        simulate.unpack_overlay(overlay, root)
    monkeypatch.setattr(simulate.shutil, "which", lambda name: None)
    with pytest.raises(simulate.BootFailed, match="zstd command is not installed"):
        simulate.unpack_overlay(overlay, root)
