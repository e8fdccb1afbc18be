"""Reading node lists from dhcpd.conf, /etc/ethers, CSV and plain MAC lists."""

import pytest

from perceus.server.errors import PerceusError
from perceus.server.importers import read_csv, read_dhcpd, read_ethers, read_macs
from perceus.server.macaddr import parse_mac

DHCPD = """
# cluster hosts
subnet 10.0.0.0 netmask 255.255.0.0 {
    option routers 10.0.0.1;
    group {
        host n0000 {
            hardware ethernet 00:00:00:00:00:0a;
            fixed-address 10.0.1.0;
        }
        host "n0001" { hardware ethernet 00:00:00:00:00:0B; fixed-address 10.0.1.1; }
    }
}
host login1 {   # comment after the brace
    option host-name "a#b";
    hardware ethernet 0:1:2:3:4:5;
}
"""


def test_dhcpd_host_blocks_in_order() -> None:
    entries = read_dhcpd(DHCPD, "dhcpd.conf")
    assert [(e.mac, e.hostname) for e in entries] == [
        ("00:00:00:00:00:0A", "n0000"),
        ("00:00:00:00:00:0B", "n0001"),
        ("00:01:02:03:04:05", "login1"),
    ]
    assert entries[0].where == "dhcpd.conf:6"


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("host a {\n fixed-address 1.2.3.4;\n}\n", "x:1", "has no 'hardware ethernet'"),
        ("host a {\n hardware ethernet zz:00:00:00:00:00;\n}\n", "x:2", "not a MAC address"),
        ("host a {\n hardware ethernet 00:00:00:00:00:01;\n", "x:2", "unbalanced '{'"),
        ("}\n", "x:1", "unbalanced '}'"),
        ("host bad_name! { hardware ethernet 00:00:00:00:00:01; }\n", "x:1", "not a valid node name"),
    ],
)
def test_dhcpd_errors_name_the_line(text: str, where: str, what: str) -> None:
    with pytest.raises(PerceusError) as caught:
        read_dhcpd(text, "x")
    assert what in caught.value.what and caught.value.where == where


def test_ethers() -> None:
    entries = read_ethers("8:0:20:1:2:3  n0007\n# c\n\n00-11-22-33-44-55 10.0.0.9\n", "ethers")
    assert [(e.mac, e.hostname) for e in entries] == [
        ("08:00:20:01:02:03", "n0007"),
        ("00:11:22:33:44:55", None),
    ]
    with pytest.raises(PerceusError) as caught:
        read_ethers("00:11:22:33:44:55\n", "ethers")
    assert caught.value.where == "ethers:1"


def test_csv() -> None:
    entries = read_csv("mac,name\n00:11:22:33:44:55,n1\n001122334456,\n00:11:22:33:44:57\n", "nodes.csv")
    assert [(e.mac, e.hostname) for e in entries] == [
        ("00:11:22:33:44:55", "n1"),
        ("00:11:22:33:44:56", None),
        ("00:11:22:33:44:57", None),
    ]
    with pytest.raises(PerceusError) as caught:
        read_csv("00:11:22:33:44:55,n1,extra\n", "nodes.csv")
    assert caught.value.where == "nodes.csv:1"


def test_mac_list() -> None:
    entries = read_macs("00:11:22:33:44:55\n\n# rack 2\naa-bb-cc-dd-ee-ff\n", "<stdin>")
    assert [e.mac for e in entries] == ["00:11:22:33:44:55", "AA:BB:CC:DD:EE:FF"]
    with pytest.raises(PerceusError) as caught:
        read_macs("00:11:22:33:44:55\nnot-a-mac\n", "<stdin>")
    assert caught.value.where == "<stdin>:2"


@pytest.mark.parametrize(
    ("text", "mac"),
    [
        ("00:11:22:33:44:55", "00:11:22:33:44:55"),
        ("aa-bb-cc-dd-ee-ff", "AA:BB:CC:DD:EE:FF"),
        ("aabbccddeeff", "AA:BB:CC:DD:EE:FF"),
        ("aabb.ccdd.eeff", "AA:BB:CC:DD:EE:FF"),
        ("01:00:11:22:33:44:55", "00:11:22:33:44:55"),
        ("0:1:2:3:4:5", "00:01:02:03:04:05"),
        ("00:11:22:33:44", None),
        ("00:11:22-33:44:55", None),
        ("g0:11:22:33:44:55", None),
        ("", None),
    ],
)
def test_parse_mac(text: str, mac: str | None) -> None:
    assert parse_mac(text) == mac
