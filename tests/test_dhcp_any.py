"""stage1/dhcp_any.py: DHCP packets built and parsed byte by byte (RFC 4390 fields for an
IPoIB link, a total parser), netup's choice of client, and a real lease from dnsmasq across
a veth pair between two throwaway namespaces (Ethernet mode; run as root)."""

import asyncio
import errno
import ipaddress
import json
import random
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from perceus.stage1 import dhcp_any, netup
from perceus.stage1.dhcp_any import (
    ACK,
    ARPHRD_ETHER,
    ARPHRD_INFINIBAND,
    BOOTP,
    DISCOVER,
    NAK,
    OFFER,
    REQUEST,
    Reply,
    build_message,
    client_id,
    ipoib_frame,
    parse_options,
    parse_reply,
    read_link,
    udp_datagram,
)

from tests.support.netns import VethPair, run, veth_pair

XID = 0x1234ABCD
MAC = bytes.fromhex("02000aabbccd")
GUID = bytes.fromhex("0002c90300001234")
IB_ADDR = bytes.fromhex("80000048fe80000000000000") + GUID  # flags+QPN, GID = prefix + port GUID
IB_BROADCAST = bytes.fromhex("00ffffffff12401bffff000000000000ffffffff")
SERVER = "10.253.7.1"


def options_of(bootp: bytes) -> dict[int, bytes]:
    opts = parse_options(BOOTP.parse(bootp).options)
    assert opts is not None
    return opts


def reply_bootp(msgtype: int | None = OFFER, xid: int = XID, yiaddr: str = "10.253.7.60", **kw) -> bytes:
    """A server's BOOTREPLY; ``options`` replaces the option bytes when given."""
    opts = b""
    if msgtype is not None:
        opts += bytes((53, 1, msgtype))
    opts += bytes((54, 4)) + socket.inet_aton(SERVER)
    opts += bytes((1, 4)) + socket.inet_aton("255.255.255.0")
    opts += bytes((3, 8)) + socket.inet_aton(SERVER) + socket.inet_aton("10.253.7.2")
    opts += bytes((51, 4)) + struct.pack("!I", 3600) + b"\xff"
    fields = dict(
        op=2, htype=1, hlen=6, hops=0, xid=xid, secs=0, flags=0, ciaddr=bytes(4),
        yiaddr=socket.inet_aton(yiaddr), siaddr=socket.inet_aton(SERVER), giaddr=bytes(4),
        chaddr=MAC.ljust(16, b"\0"), sname=bytes(64), file=bytes(128), options=opts,
    )  # fmt: skip
    fields.update(kw)
    return BOOTP.build(fields)


def reply_packet(bootp: bytes | None = None, dport: int = 68) -> bytes:
    return udp_datagram(bootp or reply_bootp(), src=SERVER, dst="255.255.255.255", sport=67, dport=dport)


def checksum_ok(data: bytes) -> bool:
    return dhcp_any._checksum(data) == 0


# --- building ---


def test_discover_on_ethernet_carries_the_mac_and_a_client_identifier():
    bootp = build_message(DISCOVER, XID, ARPHRD_ETHER, MAC, secs=3)
    msg = BOOTP.parse(bootp)
    assert (msg.op, msg.htype, msg.hlen, msg.xid, msg.secs, msg.flags) == (1, 1, 6, XID, 3, 0)
    assert msg.chaddr == MAC + bytes(10) and msg.ciaddr == msg.yiaddr == bytes(4)
    assert len(bootp) >= 300
    opts = options_of(bootp)
    assert opts[53] == bytes((DISCOVER,)) and opts[60] == b"perceus"
    assert opts[61] == b"\xff" + MAC[-4:] + bytes.fromhex("00030001") + MAC
    assert set(opts[55]) >= {1, 3, 54} and 50 not in opts and 54 not in opts


def test_request_names_the_offer_and_its_server():
    opts = options_of(build_message(REQUEST, XID, ARPHRD_ETHER, MAC, requested="10.253.7.60", server=SERVER))
    assert opts[53] == bytes((REQUEST,))
    assert opts[50] == socket.inet_aton("10.253.7.60") and opts[54] == socket.inet_aton(SERVER)


def test_rfc4390_fields_on_an_infiniband_link():
    bootp = build_message(DISCOVER, XID, ARPHRD_INFINIBAND, IB_ADDR)
    msg = BOOTP.parse(bootp)
    assert (msg.htype, msg.hlen, msg.chaddr) == (32, 0, bytes(16))
    assert msg.flags == 0x8000  # BROADCAST: the server cannot unicast to an address it was not given
    cid = options_of(bootp)[61]
    # type 0xff, IAID (4 bytes), DUID-LL: type 3, hardware type 32, the port GUID
    assert cid == b"\xff" + GUID[-4:] + bytes.fromhex("00030020") + GUID
    assert cid == client_id(ARPHRD_INFINIBAND, IB_ADDR)
    # the queue pair number (bytes 1-3) changes from boot to boot; the identity must not
    assert client_id(ARPHRD_INFINIBAND, bytes.fromhex("80000099") + IB_ADDR[4:]) == cid


def test_datagram_is_from_0_0_0_0_68_to_broadcast_67_with_good_checksums():
    bootp = build_message(DISCOVER, XID, ARPHRD_ETHER, MAC)
    packet = udp_datagram(bootp)
    assert packet[0] == 0x45 and packet[9] == socket.IPPROTO_UDP
    assert struct.unpack("!H", packet[2:4])[0] == len(packet) == 20 + 8 + len(bootp)
    assert packet[12:16] == bytes(4) and packet[16:20] == b"\xff" * 4
    assert checksum_ok(packet[:20])
    sport, dport, length, csum = struct.unpack("!HHHH", packet[20:28])
    assert (sport, dport, length) == (68, 67, 8 + len(bootp)) and csum != 0
    assert checksum_ok(packet[12:20] + struct.pack("!BBH", 0, 17, length) + packet[20:])
    assert packet[28:] == bootp


def test_ipoib_frame_is_the_header_the_kernel_would_build():
    frame = ipoib_frame(IB_BROADCAST, b"IP")
    assert frame == IB_BROADCAST + b"\x08\x00\x00\x00IP" and len(frame) == 24 + 2


def test_read_link_from_a_fake_sys(tmp_path: Path):
    base = tmp_path / "class" / "net" / "ib0"
    base.mkdir(parents=True)
    (base / "ifindex").write_text("7\n")
    (base / "type").write_text("32\n")
    (base / "address").write_text(":".join(f"{b:02x}" for b in IB_ADDR) + "\n")
    (base / "broadcast").write_text(":".join(f"{b:02x}" for b in IB_BROADCAST) + "\n")
    assert read_link("ib0", tmp_path) == dhcp_any.Link("ib0", 7, 32, IB_ADDR, IB_BROADCAST)


# --- parsing ---


def test_a_good_reply():
    reply = parse_reply(reply_packet(), XID)
    assert reply is not None
    assert (reply.msgtype, reply.address, reply.server, reply.router, reply.prefixlen) == (
        OFFER,
        "10.253.7.60",
        SERVER,
        SERVER,
        24,
    )
    assert parse_reply(reply_packet() + bytes(18), XID) == reply  # Ethernet padding after the packet


def test_prefix_from_the_mask_or_the_address_class():
    def prefix(mask: bytes | None, address: str = "10.1.2.3") -> int:
        return Reply(ACK, address, {} if mask is None else {1: mask}).prefixlen

    assert prefix(socket.inet_aton("255.255.252.0")) == 22
    assert prefix(socket.inet_aton("255.255.255.255")) == 32
    assert prefix(socket.inet_aton("255.0.255.0")) == 8  # not contiguous: classful
    assert prefix(None, "172.16.0.9") == 16 and prefix(b"\xff", "192.168.1.9") == 24


def test_options_pad_concatenation_and_end():
    assert parse_options(b"\x00\x00\x0c\x02ab\x0c\x01c\xff\x03\x09") == {12: b"abc"}  # RFC 3396
    assert parse_options(b"\x0c\x02ab") is None  # no END
    assert parse_options(b"\x0c\xc8ab\xff") is None  # 200 bytes announced, 3 left
    assert parse_options(b"\x0c") is None


def test_unready_udp_checksum_is_trusted_only_when_the_kernel_says_so():
    packet = bytearray(reply_packet())
    packet[26:28] = b"\x12\x34"  # what a veth peer sees with checksum offload: not computed yet
    assert parse_reply(bytes(packet), XID) is None
    assert parse_reply(bytes(packet), XID, checksum_ready=False) is not None
    packet[26:28] = b"\x00\x00"  # no checksum at all is legal in IPv4
    assert parse_reply(bytes(packet), XID) is not None


def test_everything_else_is_ignored():
    good = reply_packet()
    bad_ip_checksum = bytearray(good)
    bad_ip_checksum[8] ^= 1  # TTL changed, header checksum not
    fragment = bytearray(good)
    fragment[6] = 0x20  # more fragments
    fragment[10:12] = b"\0\0"
    fragment[10:12] = struct.pack("!H", dhcp_any._checksum(bytes(fragment[:20])))
    tcp = bytearray(good)
    tcp[9] = 6
    tcp[10:12] = b"\0\0"
    tcp[10:12] = struct.pack("!H", dhcp_any._checksum(bytes(tcp[:20])))
    cases = {
        "other xid": reply_packet(reply_bootp(xid=XID + 1)),
        "to port 67": reply_packet(dport=67),
        "our own request": udp_datagram(build_message(DISCOVER, XID, ARPHRD_ETHER, MAC)),
        "a BOOTREQUEST to 68": reply_packet(reply_bootp(op=1)),
        "no message type": reply_packet(reply_bootp(None)),
        "no END": reply_packet(reply_bootp(options=b"\x35\x01\x02")),
        "oversized option": reply_packet(reply_bootp(options=b"\x35\x01\x02\x0c\xff" + b"x" * 40 + b"\xff")),
        "message type of 2 bytes": reply_packet(reply_bootp(options=b"\x35\x02\x02\x02\xff")),
        "bad cookie": reply_packet(reply_bootp()[:236] + b"\x63\x82\x53\x64" + reply_bootp()[240:]),
        "bad IP checksum": bytes(bad_ip_checksum),
        "fragment": bytes(fragment),
        "TCP": bytes(tcp),
        "IPv6": b"\x60" + good[1:],
        "UDP length past the packet": good[:24] + struct.pack("!H", len(good)) + good[26:],
        "total length past the data": good[:2] + struct.pack("!H", len(good) + 1) + good[4:],
    }
    for name, packet in cases.items():
        assert parse_reply(packet, XID) is None, name
        assert parse_reply(packet, XID, checksum_ready=False) is None, name


def test_truncated_at_every_length():
    good = reply_packet()
    for size in range(len(good)):
        assert parse_reply(good[:size], XID) is None


def test_garbage_never_raises():
    rng = random.Random(4390)
    good = reply_packet()
    for _ in range(3000):
        size = rng.choice((0, 1, 19, 20, 27, 28, 267, 268, 300, 600, 1500, 9000, 70000))
        parse_reply(rng.randbytes(size), XID)
        # plausible headers, random everything else: reaches the deeper checks
        parse_reply(good[:20] + rng.randbytes(rng.randrange(0, 400)), XID, checksum_ready=False)
        mutated = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        result = parse_reply(bytes(mutated), XID, checksum_ready=rng.random() < 0.5)
        assert result is None or isinstance(result, Reply)
        parse_options(rng.randbytes(rng.randrange(0, 300)))


def test_big_replies_up_to_the_receive_buffer():
    def with_hostname_pieces(count: int) -> bytes:
        return reply_packet(
            reply_bootp(options=b"\x35\x01\x02" + (b"\x0c\xff" + b"x" * 255) * count + b"\xff")
        )

    big = with_hostname_pieces(30)
    assert len(big) <= dhcp_any.RECV_BUFFER
    reply = parse_reply(big, XID)
    assert reply is not None and reply.options[12] == b"x" * 255 * 30  # RFC 3396 concatenation
    assert parse_reply(big[:-1] + b"\x0c", XID) is None  # the END gone
    huge = with_hostname_pieces(200)
    assert len(huge) > dhcp_any.RECV_BUFFER and parse_reply(huge, XID) is None


# --- netup's choice of client ---


def test_netup_uses_dhcp_any_on_infiniband_only(monkeypatch):
    calls = []

    async def ours(iface: str, timeout: float) -> netup.Lease:
        calls.append(("dhcp_any", iface))
        return netup.Lease(iface, "10.0.0.5", "10.0.0.1")

    async def pyroute2s(iface: str, timeout: float) -> netup.Lease:
        calls.append(("pyroute2", iface))
        return netup.Lease(iface, "10.0.0.6", "10.0.0.1")

    monkeypatch.setattr(dhcp_any, "dhcp", ours)
    monkeypatch.setattr(netup, "_dhcp", pyroute2s)
    monkeypatch.setattr(netup, "_link_type", lambda iface: {"ib0": 32, "eth0": 1}.get(iface, -1))
    for iface in ("ib0", "eth0", "gone0"):
        asyncio.run(netup._lease(iface, 1.0))
    assert calls == [("dhcp_any", "ib0"), ("pyroute2", "eth0"), ("pyroute2", "gone0")]


def test_a_nak_starts_over_with_a_new_xid(monkeypatch):
    """negotiate() against a scripted transport: a NAK starts over, the second try binds."""
    sent: list[tuple[int, dict[int, bytes]]] = []
    script = [OFFER, NAK, OFFER, ACK]

    class Scripted:
        def __init__(self, link: dhcp_any.Link) -> None:
            self.link = link

        def send(self, bootp: bytes) -> None:
            sent.append((BOOTP.parse(bootp).xid, options_of(bootp)))

        async def receive(self, xid, accept, server, until):
            kind = script.pop(0)
            assert kind in accept
            return parse_reply(reply_packet(reply_bootp(kind, xid=xid)), xid)

        def close(self) -> None:
            pass

    monkeypatch.setattr(dhcp_any, "_Transport", Scripted)
    monkeypatch.setattr(dhcp_any, "RESTART_PAUSE", 0.0)
    link = dhcp_any.Link("ib0", 3, ARPHRD_INFINIBAND, IB_ADDR, IB_BROADCAST)
    ack = asyncio.run(dhcp_any.negotiate(link, 30.0))
    assert ack is not None and ack.msgtype == ACK and ack.address == "10.253.7.60"
    assert [opts[53][0] for _, opts in sent] == [DISCOVER, REQUEST, DISCOVER, REQUEST]
    assert sent[0][0] == sent[1][0] != sent[2][0] == sent[3][0]  # one xid per exchange
    assert sent[3][1][50] == socket.inet_aton("10.253.7.60") and sent[3][1][54] == socket.inet_aton(SERVER)
    assert not script


def test_retransmissions_are_bounded(monkeypatch):
    """A silent network: DISCOVER_TRIES discovers, one xid, then None (however long the timeout);
    a send the kernel refuses is one of them, not the end."""
    sent: list[int] = []

    class Silent:
        def __init__(self, link: dhcp_any.Link) -> None:
            self.link = link

        def send(self, bootp: bytes) -> None:
            sent.append(BOOTP.parse(bootp).xid)
            if len(sent) == 1:
                raise OSError(errno.ENOBUFS, "No buffer space available")

        async def receive(self, xid, accept, server, until):
            return None

        def close(self) -> None:
            pass

    monkeypatch.setattr(dhcp_any, "_Transport", Silent)
    link = dhcp_any.Link("eth0", 2, ARPHRD_ETHER, MAC, b"\xff" * 6)
    assert asyncio.run(dhcp_any.negotiate(link, 3600.0)) is None
    assert len(sent) == dhcp_any.DISCOVER_TRIES and len(set(sent)) == 1


# --- a real lease from dnsmasq, across a veth pair between two namespaces ---


@contextmanager
def dnsmasq(pair: VethPair, workdir: Path) -> Iterator[Path]:
    """dnsmasq serving DHCP (no DNS) on the server end; yields its lease file."""
    hosts = list(pair.network.hosts())
    leases, pidfile, log = workdir / "dnsmasq.leases", workdir / "dnsmasq.pid", workdir / "dnsmasq.log"
    with open(log, "wb") as output:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", pair.server_ns, "dnsmasq", "--keep-in-foreground",
             "--conf-file=/dev/null", "--port=0", f"--interface={pair.server_if}", "--bind-interfaces",
             f"--dhcp-range={hosts[49]},{hosts[149]},255.255.255.0,1h", f"--dhcp-leasefile={leases}",
             f"--pid-file={pidfile}", "--user=root", "--log-dhcp", "--log-facility=-"],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield leases
    finally:
        proc.kill()
        proc.wait(timeout=10)


CLIENT = """
import asyncio, dataclasses, json, sys
from perceus.stage1 import dhcp_any
iface, ib_address = sys.argv[1], bytes.fromhex(sys.argv[2])
if ib_address:  # RFC 4390 fields in the requests, still sent in Ethernet frames
    link = dataclasses.replace(dhcp_any.read_link(iface), type=dhcp_any.ARPHRD_INFINIBAND, address=ib_address)
    dhcp_any.read_link = lambda name: link
lease = asyncio.run(dhcp_any.dhcp(iface, 20.0))
print(json.dumps(lease and [lease.iface, lease.address, lease.server]))
"""


def lease_in_namespace(pair: VethPair, leases: Path, ib_address: bytes = b"") -> tuple[str, list[str]]:
    """Run the client in the client namespace: its address, after checking what it applied,
    and dnsmasq's one lease line (expiry, hardware address, address, hostname, client-id)."""
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            pair.client_ns,
            sys.executable,
            "-c",
            CLIENT,
            pair.client_if,
            ib_address.hex(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    log = (leases.parent / "dnsmasq.log").read_text()
    assert proc.returncode == 0, proc.stderr + log
    iface, address, server = json.loads(proc.stdout)
    assert (iface, server) == (pair.client_if, pair.server_address)
    assert ipaddress.ip_address(address) in pair.network

    shown = run("ip", "-n", pair.client_ns, "-4", "-o", "addr", "show", "dev", pair.client_if).stdout
    assert f"inet {address}/24 " in shown
    routes = run("ip", "-n", pair.client_ns, "-4", "route", "show", "default").stdout
    assert f"default via {pair.server_address} dev {pair.client_if}" in routes
    lines = [line.split() for line in leases.read_text().splitlines()]
    assert len(lines) == 1 and len(lines[0]) == 5, log
    return address, lines[0]


@pytest.mark.netns
def test_lease_from_dnsmasq_across_namespaces(tmp_path: Path):
    with veth_pair("dhcp", 253) as pair, dnsmasq(pair, tmp_path) as leases:
        address, line = lease_in_namespace(pair, leases)
        mac_text = run(
            "ip", "netns", "exec", pair.client_ns, "cat", f"/sys/class/net/{pair.client_if}/address"
        )
        mac = bytes.fromhex(mac_text.stdout.strip().replace(":", ""))
        assert line[1:3] == [mac.hex(":"), address]
        assert line[4] == client_id(ARPHRD_ETHER, mac).hex(":")


@pytest.mark.netns
def test_dnsmasq_answers_rfc4390_requests(tmp_path: Path):
    """The IPoIB form of every request (htype 32, hlen 0, no chaddr, BROADCAST, a DUID-LL of
    the GUID) gets a lease; only the frames around them are Ethernet's."""
    with veth_pair("dhcp", 253) as pair, dnsmasq(pair, tmp_path) as leases:
        address, line = lease_in_namespace(pair, leases, IB_ADDR)
        assert line[2] == address and line[4] == client_id(ARPHRD_INFINIBAND, IB_ADDR).hex(":")
