"""The default DHCP range: top quarter of the subnet, at most 256 addresses, below broadcast."""

import ipaddress

import pytest

from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.netservices.dhcprange import MAX_ADDRESSES, default_range, parse_range


def iface(text: str) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(text)


@pytest.mark.parametrize(
    ("master", "start", "end"),
    [
        ("10.0.0.1/24", "10.0.0.192", "10.0.0.254"),
        ("192.168.1.10/25", "192.168.1.96", "192.168.1.126"),
        ("10.252.3.1/28", "10.252.3.12", "10.252.3.14"),
        ("172.16.0.1/22", "172.16.3.0", "172.16.3.254"),  # quarter = 256: exactly the cap
        ("10.10.0.1/16", "10.10.255.0", "10.10.255.254"),  # capped: top 256 of a /16
        ("10.0.0.1/8", "10.255.255.0", "10.255.255.254"),
        ("127.0.0.1/8", "127.255.255.0", "127.255.255.254"),
    ],
)
def test_top_quarter_below_broadcast(master: str, start: str, end: str) -> None:
    chosen = default_range(iface(master))
    assert (str(chosen.start), str(chosen.end)) == (start, end)
    network = iface(master).network
    assert chosen.end < network.broadcast_address
    assert chosen.start > network.network_address
    assert chosen.size <= MAX_ADDRESSES
    assert iface(master).ip not in chosen


def test_large_subnets_never_exceed_256_addresses() -> None:
    for prefix in range(8, 23):
        chosen = default_range(iface(f"10.0.0.1/{prefix}"))
        assert chosen.size == MAX_ADDRESSES - 1  # the top 256 without the broadcast address
        assert int(chosen.end) == int(iface(f"10.0.0.1/{prefix}").network.broadcast_address) - 1


def test_slash_30_uses_the_one_free_host_address() -> None:
    assert (str(default_range(iface("10.0.0.1/30")).start), str(default_range(iface("10.0.0.1/30")).end)) == (
        "10.0.0.2",
        "10.0.0.2",
    )
    chosen = default_range(iface("10.0.0.2/30"))  # the master holds the top host address
    assert (str(chosen.start), str(chosen.end)) == ("10.0.0.1", "10.0.0.1")


def test_master_inside_the_top_quarter_is_left_out() -> None:
    chosen = default_range(iface("10.0.0.200/24"))
    assert (str(chosen.start), str(chosen.end)) == ("10.0.0.201", "10.0.0.254")
    chosen = default_range(iface("10.0.0.250/24"))
    assert (str(chosen.start), str(chosen.end)) == ("10.0.0.192", "10.0.0.249")
    chosen = default_range(iface("10.0.0.254/24"))
    assert (str(chosen.start), str(chosen.end)) == ("10.0.0.192", "10.0.0.253")


@pytest.mark.parametrize("master", ["10.0.0.1/31", "10.0.0.1/32"])
def test_subnets_without_room_ask_for_a_range(master: str) -> None:
    with pytest.raises(PerceusError, match="too small for a DHCP range"):
        default_range(iface(master))


def test_given_range_is_checked_against_the_subnet() -> None:
    master = iface("10.0.0.1/24")
    chosen = parse_range("10.0.0.100, 10.0.0.150", master)
    assert (str(chosen.start), str(chosen.end), chosen.size) == ("10.0.0.100", "10.0.0.150", 51)
    assert parse_range("10.9.0.1,10.9.0.9", None).size == 9  # no address to check against
    for bad, words in [
        ("10.0.0.100", "START,END"),
        ("10.0.0.100,10.0.0.300", "10.0.0.300"),
        ("10.0.0.150,10.0.0.100", "START is above END"),
        ("10.0.1.1,10.0.1.9", "not a host address of 10.0.0.0/24"),
        ("10.0.0.200,10.0.0.255", "not a host address"),
        ("10.0.0.1,10.0.0.9", "the master's own address"),
    ]:
        with pytest.raises(InvalidRequest, match=words):
            parse_range(bad, master)
