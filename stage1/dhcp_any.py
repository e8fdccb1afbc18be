"""A small DHCPv4 client for links pyroute2's cannot serve: IP over InfiniBand above all.

pyroute2's client writes whole Ethernet frames on a SOCK_RAW packet socket, which means
nothing on an IPoIB link (ARPHRD_INFINIBAND, 20-byte hardware addresses). This one builds
only the IPv4 and UDP headers (0.0.0.0:68 -> 255.255.255.255:67) and lets the kernel frame
them for the link, so it works on any link type; Ethernet (veth) is how it is tested.

* Send: on a SOCK_DGRAM packet socket to the link's broadcast address
  (``/sys/class/net/IF/broadcast``). Python's socket module refuses link addresses longer
  than 8 bytes in a ``sockaddr_ll``, so a 20-byte IPoIB destination cannot be passed that
  way; for IPoIB the frame is written on a SOCK_RAW socket behind the very header the
  kernel's ``ipoib_hard_header`` would have built for SOCK_DGRAM (destination address,
  ethertype, two reserved bytes; Linux >= 4.11).
* Receive: on a SOCK_DGRAM packet socket for ETH_P_IP bound to the interface, so replies
  arrive whatever the link header, before the interface has an address. The parser is
  total: any bytes give a :class:`Reply` or ``None``, never an exception.
* RFC 4390 on IPoIB: htype 32, hlen 0, chaddr zero, BROADCAST flag. Every link sends an
  RFC 4361 client identifier: 0xff, IAID, DUID-LL (the port GUID on IPoIB).

DISCOVER -> OFFER -> REQUEST -> ACK, retransmitted with doubling waits, all within the
caller's timeout; a NAK or an unanswered REQUEST starts over. On ACK the address (prefix
from option 1) and the default route (option 3) are applied with pyroute2.
"""

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import construct as cs

from perceus.common.jitter import jittered
from perceus.stage1.lease import Lease

__all__ = [
    "ARPHRD_ETHER",
    "ARPHRD_INFINIBAND",
    "BOOTP",
    "Link",
    "Reply",
    "build_message",
    "client_id",
    "dhcp",
    "ipoib_frame",
    "negotiate",
    "parse_options",
    "parse_reply",
    "read_link",
    "udp_datagram",
]

log = logging.getLogger("perceus.stage1")

ARPHRD_ETHER = 1
ARPHRD_INFINIBAND = 32
ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_CSUMNOTREADY = 1 << 3  # sent on this host (veth): the checksum is not filled in yet

CLIENT_PORT, SERVER_PORT = 68, 67
BOOTREQUEST, BOOTREPLY = 1, 2
FLAG_BROADCAST = 0x8000
MAGIC_COOKIE = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK = 1, 2, 3, 4, 5, 6

OPT_PAD, OPT_END = 0, 255
OPT_MASK, OPT_ROUTER, OPT_BROADCAST = 1, 3, 28
OPT_REQUESTED_IP, OPT_MESSAGE_TYPE, OPT_SERVER_ID, OPT_PARAMS = 50, 53, 54, 55
OPT_VENDOR_CLASS, OPT_CLIENT_ID = 60, 61
PARAMS = bytes((OPT_MASK, OPT_ROUTER, 6, 15, OPT_BROADCAST, 51, OPT_SERVER_ID))

RECV_BUFFER = 9000  # larger datagrams are truncated by the kernel and dropped here
FIRST_WAIT, MAX_WAIT = 1.0, 8.0  # seconds before a retransmission: doubling, capped
RETRANSMIT_JITTER = 0.1  # +- this fraction, so many nodes booting together do not retransmit in step
DISCOVER_TRIES, REQUEST_TRIES = 8, 4
RESTART_PAUSE = 1.0  # after a NAK, before a new DISCOVER

BOOTP = cs.Struct(
    "op" / cs.Int8ub,
    "htype" / cs.Int8ub,
    "hlen" / cs.Int8ub,
    "hops" / cs.Int8ub,
    "xid" / cs.Int32ub,
    "secs" / cs.Int16ub,
    "flags" / cs.Int16ub,
    "ciaddr" / cs.Bytes(4),
    "yiaddr" / cs.Bytes(4),
    "siaddr" / cs.Bytes(4),
    "giaddr" / cs.Bytes(4),
    "chaddr" / cs.Bytes(16),
    "sname" / cs.Bytes(64),
    "file" / cs.Bytes(128),
    "cookie" / cs.Const(MAGIC_COOKIE),
    "options" / cs.GreedyBytes,
)
BOOTP_FIXED = 240  # the layout above up to and including the cookie
_ZERO4 = bytes(4)


@dataclass(frozen=True)
class Link:
    """What the client needs to know of an interface, from /sys/class/net."""

    name: str
    index: int
    type: int
    address: bytes
    broadcast: bytes


@dataclass(frozen=True)
class Reply:
    """A server's answer that passed every check: its type, the offered address, options."""

    msgtype: int
    address: str
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def server(self) -> str:
        """Option 54, the server identifier ("" if absent)."""
        return _ipv4(self.options.get(OPT_SERVER_ID, b""))

    @property
    def router(self) -> str:
        """The first address of option 3 ("" if absent)."""
        return _ipv4(self.options.get(OPT_ROUTER, b"")[:4])

    @property
    def prefixlen(self) -> int:
        """Option 1 as a prefix length; a missing or non-contiguous mask gives the classful one."""
        mask = self.options.get(OPT_MASK, b"")
        if len(mask) == 4:
            value = int.from_bytes(mask, "big")
            ones = bin(value).count("1")
            if ones and value == ((1 << 32) - 1) ^ ((1 << (32 - ones)) - 1):
                return ones
        first = socket.inet_aton(self.address)[0]
        return 8 if first < 128 else 16 if first < 192 else 24


def _ipv4(raw: bytes) -> str:
    return socket.inet_ntoa(raw) if len(raw) == 4 else ""


def _hwaddr(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.strip().split(":")) if text.strip() else b""


def read_link(iface: str, sys_root: Path = Path("/sys")) -> Link:
    """The interface's index, ARPHRD type, address and broadcast address; OSError/ValueError if unreadable."""
    base = sys_root / "class" / "net" / iface
    return Link(
        name=iface,
        index=int((base / "ifindex").read_text()),
        type=int((base / "type").read_text()),
        address=_hwaddr((base / "address").read_text()),
        broadcast=_hwaddr((base / "broadcast").read_text()),
    )


def client_id(link_type: int, hwaddr: bytes) -> bytes:
    """RFC 4361: 0xff, a 4-byte IAID, a DUID-LL (type 3, hardware type, link-layer address).

    IPoIB addresses carry a queue pair number that changes from boot to boot; their last
    8 bytes, the port GUID, do not, so they stand for the link-layer address (RFC 4390).
    Both IAID and DUID come from the hardware, so a node asks with the same identity on
    every boot.
    """
    lladdr = hwaddr[-8:] if link_type == ARPHRD_INFINIBAND else hwaddr
    iaid = lladdr[-4:].rjust(4, b"\0")
    return b"\xff" + iaid + struct.pack("!HH", 3, link_type & 0xFFFF) + lladdr


def _option(code: int, value: bytes) -> bytes:
    out = b""
    for start in range(0, max(len(value), 1), 255):  # RFC 3396: long values are split
        piece = value[start : start + 255]
        out += bytes((code, len(piece))) + piece
    return out


def build_message(
    msgtype: int,
    xid: int,
    link_type: int,
    hwaddr: bytes,
    *,
    secs: int = 0,
    requested: str = "",
    server: str = "",
    vendor_id: bytes = b"perceus",
) -> bytes:
    """A BOOTREQUEST (DISCOVER or REQUEST) for a link of ``link_type`` with address ``hwaddr``.

    On IPoIB (RFC 4390) the 20-byte address does not fit chaddr: htype 32, hlen 0, chaddr
    zero, and the BROADCAST flag, since the server could not unicast to a link address it
    was not given. Elsewhere chaddr is the address, as servers and their host tables expect.
    """
    if link_type == ARPHRD_INFINIBAND or len(hwaddr) > 16:
        hlen, chaddr, flags = 0, bytes(16), FLAG_BROADCAST
    else:
        hlen, chaddr, flags = len(hwaddr), hwaddr.ljust(16, b"\0"), 0
    options = _option(OPT_MESSAGE_TYPE, bytes((msgtype,)))
    options += _option(OPT_CLIENT_ID, client_id(link_type, hwaddr))
    if requested:
        options += _option(OPT_REQUESTED_IP, socket.inet_aton(requested))
    if server:
        options += _option(OPT_SERVER_ID, socket.inet_aton(server))
    options += _option(OPT_PARAMS, PARAMS)
    if vendor_id:
        options += _option(OPT_VENDOR_CLASS, vendor_id)
    options += bytes((OPT_END,))
    return BOOTP.build(
        dict(
            op=BOOTREQUEST,
            htype=link_type & 0xFF,
            hlen=hlen,
            hops=0,
            xid=xid,
            secs=min(max(secs, 0), 0xFFFF),
            flags=flags,
            ciaddr=_ZERO4,
            yiaddr=_ZERO4,
            siaddr=_ZERO4,
            giaddr=_ZERO4,
            chaddr=chaddr,
            sname=bytes(64),
            file=bytes(128),
            options=options.ljust(60, b"\0"),  # some relays want the 300-byte BOOTP minimum
        )
    )


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071); 0 over data that already holds a correct one."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_datagram(
    payload: bytes,
    src: str = "0.0.0.0",
    dst: str = "255.255.255.255",
    sport: int = CLIENT_PORT,
    dport: int = SERVER_PORT,
) -> bytes:
    """An IPv4 packet carrying one UDP datagram, both checksums filled in."""
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    length = 8 + len(payload)
    pseudo = saddr + daddr + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    udp_checksum = _checksum(pseudo + struct.pack("!HHHH", sport, dport, length, 0) + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, length, udp_checksum)
    # version 4, IHL 5, TOS 0x10 (low delay, as other clients); TTL 64; no fragmentation
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0x10, 20 + length, 0, 0, 64, socket.IPPROTO_UDP, 0, saddr, daddr
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp + payload


def ipoib_frame(broadcast: bytes, datagram: bytes) -> bytes:
    """What ``ipoib_hard_header`` puts before an IPv4 packet: the 20-byte destination
    (the kernel's pseudo header), the ethertype and two reserved bytes."""
    return broadcast + struct.pack("!HH", ETH_P_IP, 0) + datagram


def parse_options(raw: bytes) -> dict[int, bytes] | None:
    """DHCP options -> {code: value}, repeated codes concatenated (RFC 3396); None if an
    option runs past the end or there is no END."""
    options: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    while pos < end:
        code = raw[pos]
        if code == OPT_PAD:
            pos += 1
            continue
        if code == OPT_END:
            return options
        if pos + 2 > end or pos + 2 + raw[pos + 1] > end:
            return None
        size = raw[pos + 1]
        options[code] = options.get(code, b"") + raw[pos + 2 : pos + 2 + size]
        pos += 2 + size
    return None


def parse_reply(packet: bytes, xid: int, checksum_ready: bool = True) -> Reply | None:
    """An IPv4 packet as a SOCK_DGRAM packet socket delivers it -> the DHCP reply it carries
    for transaction ``xid``, or None for anything else (not UDP to port 68, a fragment, a bad
    checksum, truncated, larger than RECV_BUFFER, a BOOTREQUEST, another xid, malformed
    options, no message type).

    ``checksum_ready`` False: the packet was sent from this host and its UDP checksum is not
    computed yet (the kernel's TP_STATUS_CSUMNOTREADY), so it is not checked.
    """
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total, frag, proto = struct.unpack_from("!H2xHxB", packet, 2)
    if ihl < 20 or total > min(len(packet), RECV_BUFFER) or total < ihl + 8 + BOOTP_FIXED:
        return None
    if frag & 0x3FFF or proto != socket.IPPROTO_UDP or _checksum(packet[:ihl]):
        return None
    packet = packet[:total]  # an Ethernet frame may be padded
    _sport, dport, ulen, ucsum = struct.unpack_from("!HHHH", packet, ihl)
    if dport != CLIENT_PORT or ulen < 8 + BOOTP_FIXED or ihl + ulen > total:
        return None
    udp = packet[ihl : ihl + ulen]
    if ucsum and checksum_ready:
        pseudo = packet[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_UDP, ulen)
        if _checksum(pseudo + udp):
            return None
    try:
        msg = BOOTP.parse(udp[8:])
    except cs.ConstructError:
        return None
    if msg.op != BOOTREPLY or msg.xid != xid:
        return None
    options = parse_options(msg.options)
    if options is None or len(options.get(OPT_MESSAGE_TYPE, b"")) != 1:
        return None
    return Reply(options[OPT_MESSAGE_TYPE][0], socket.inet_ntoa(msg.yiaddr), options)


class _Transport:
    """The packet sockets of one link: receive IPv4 on it, send to its broadcast address."""

    def __init__(self, link: Link) -> None:
        self.link = link
        # protocol 0 at creation, ETH_P_IP at bind: nothing from other interfaces slips in
        self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        self.tx: socket.socket | None = None
        try:
            self.rx.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            self.rx.bind((link.name, ETH_P_IP))
            self.rx.setblocking(False)
            if len(link.broadcast) > 8:  # more than a sockaddr_ll from Python can carry
                if link.type != ARPHRD_INFINIBAND:
                    raise OSError(f"{link.name}: link type {link.type} has no known header for a raw send")
                self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.rx.close()
        if self.tx is not None:
            self.tx.close()

    def send(self, bootp: bytes) -> None:
        datagram = udp_datagram(bootp)
        if self.tx is None:
            self.rx.sendto(datagram, (self.link.name, ETH_P_IP, 0, self.link.type, self.link.broadcast))
        else:
            self.tx.sendto(ipoib_frame(self.link.broadcast, datagram), (self.link.name, ETH_P_IP))

    def _pending(self) -> list[tuple[bytes, bool]]:
        """Whatever has arrived: (packet, checksum ready) each; truncated packets dropped."""
        out = []
        while True:
            try:
                data, ancdata, flags, _addr = self.rx.recvmsg(RECV_BUFFER, socket.CMSG_SPACE(32))
            except (BlockingIOError, InterruptedError):
                return out
            if flags & socket.MSG_TRUNC:
                continue
            ready = True
            for level, kind, value in ancdata:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(value) >= 4:
                    ready = not struct.unpack_from("=I", value)[0] & TP_STATUS_CSUMNOTREADY
            out.append((data, ready))

    async def receive(self, xid: int, accept: tuple[int, ...], server: str, until: float) -> Reply | None:
        """The first reply for ``xid`` of a type in ``accept`` (from ``server`` if given) before
        the monotonic time ``until``."""
        loop = asyncio.get_running_loop()
        fd = self.rx.fileno()
        while True:
            for data, ready in self._pending():
                reply = parse_reply(data, xid, ready)
                if reply is None or reply.msgtype not in accept or (server and reply.server != server):
                    continue
                if reply.msgtype != NAK and (reply.address == "0.0.0.0" or not reply.server):
                    continue  # an OFFER or ACK without an address or a server identifier is useless
                return reply
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            readable = loop.create_future()
            loop.add_reader(fd, lambda f=readable: f.done() or f.set_result(None))
            try:
                await asyncio.wait_for(readable, remaining)
            except TimeoutError:
                return None
            finally:
                loop.remove_reader(fd)


async def _transact(
    transport: _Transport,
    build: Callable[[int], bytes],
    xid: int,
    accept: tuple[int, ...],
    server: str,
    tries: int,
    deadline: float,
) -> Reply | None:
    """Send ``build(secs)`` until an accepted reply comes, waiting 1, 2, 4, 8, 8... s.

    A failed send (ENOBUFS, a link still joining its broadcast group) is only logged: the
    next retransmission is the retry.
    """
    wait = FIRST_WAIT
    start = time.monotonic()
    for _ in range(tries):
        now = time.monotonic()
        if now >= deadline:
            return None
        try:
            transport.send(build(int(now - start)))
        except OSError as exc:
            log.info("%s: cannot send a DHCP request: %s", transport.link.name, exc)
        until = min(deadline, now + jittered(wait, RETRANSMIT_JITTER))
        reply = await transport.receive(xid, accept, server, until)
        if reply is not None:
            return reply
        wait = min(wait * 2, MAX_WAIT)
    return None


async def negotiate(link: Link, timeout: float, vendor_id: bytes = b"perceus") -> Reply | None:
    """DISCOVER/OFFER/REQUEST/ACK on ``link`` within ``timeout`` seconds: the ACK, or None."""
    deadline = time.monotonic() + timeout
    transport = _Transport(link)
    try:
        while time.monotonic() < deadline:
            xid = int.from_bytes(os.urandom(4), "big")

            def discover(secs: int, xid: int = xid) -> bytes:
                return build_message(DISCOVER, xid, link.type, link.address, secs=secs, vendor_id=vendor_id)

            offer = await _transact(transport, discover, xid, (OFFER,), "", DISCOVER_TRIES, deadline)
            if offer is None:
                return None

            def request(secs: int, xid: int = xid, offer: Reply = offer) -> bytes:
                return build_message(
                    REQUEST,
                    xid,
                    link.type,
                    link.address,
                    secs=secs,
                    requested=offer.address,
                    server=offer.server,
                    vendor_id=vendor_id,
                )

            ack = await _transact(transport, request, xid, (ACK, NAK), offer.server, REQUEST_TRIES, deadline)
            if ack is not None and ack.msgtype == ACK:
                return ack
            log.info("%s: %s from %s, starting over", link.name, "NAK" if ack else "no ACK", offer.server)
            await asyncio.sleep(max(0.0, min(RESTART_PAUSE, deadline - time.monotonic())))
        return None
    finally:
        transport.close()


async def _apply(link: Link, ack: Reply) -> None:
    """Put the address on the link and, if the server named a router, the default route."""
    from pyroute2.iproute.linux import AsyncIPRoute

    prefixlen = ack.prefixlen
    network = int.from_bytes(socket.inet_aton(ack.address), "big") & ~((1 << (32 - prefixlen)) - 1)
    broadcast = _ipv4(ack.options.get(OPT_BROADCAST, b"")) or socket.inet_ntoa(
        (network | ((1 << (32 - prefixlen)) - 1)).to_bytes(4, "big")
    )
    async with AsyncIPRoute() as ipr:
        await ipr.addr(
            "replace", index=link.index, address=ack.address, prefixlen=prefixlen, broadcast=broadcast
        )
        if ack.router:
            try:
                await ipr.route("replace", dst="0.0.0.0/0", gateway=ack.router, oif=link.index)
            except Exception as exc:  # pyroute2's NetlinkError: the address alone still serves
                log.warning("%s: cannot add the default route via %s: %s", link.name, ack.router, exc)


async def dhcp(iface: str, timeout: float, vendor_id: bytes = b"perceus") -> Lease | None:
    """Lease an address on ``iface`` and apply it: the Lease, or None if no server answered
    within ``timeout`` seconds. OSError if the link cannot be used at all."""
    try:
        link = read_link(iface)
    except ValueError as exc:
        raise OSError(f"{iface}: unreadable link in /sys/class/net: {exc}") from exc
    ack = await negotiate(link, timeout, vendor_id)
    if ack is None:
        log.warning("%s: no DHCP answer in %g s", iface, timeout)
        return None
    await _apply(link, ack)
    return Lease(iface, ack.address, ack.server)
