"""The network services in-process: the dnsmasq plan and what writing it reports, the hosts
file, NFS exports, and starting the daemons all or nothing (with fake daemons)."""

from pathlib import Path

import pytest

from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.instance import Instance
from perceus.server.netservices.dnsmasq import DnsmasqChoices
from perceus.server.selection import NodeQuery
from perceus.server.services import netservices, nodes
from perceus.server.services.netservices import Change, DaemonEvent

MAC1, MAC2 = "52:54:00:AA:00:01", "52:54:00:AA:00:02"


@pytest.fixture
def master(server_instance: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Instance:
    """The instance with two nodes, its run and exports paths private."""
    monkeypatch.setenv("PERCEUS_RUNDIR", str(tmp_path / "run"))
    monkeypatch.setenv("PERCEUS_EXPORTS_FILE", str(tmp_path / "exports.d" / "perceus.exports"))
    nodes.add(server_instance, MAC2, "login1", lambda what, where: None)
    nodes.add(server_instance, MAC1, None, lambda what, where: None)
    return server_instance


# ------------------------------------------------------------------------------ dnsmasq


def test_the_plan_is_the_configuration_and_writes_nothing(master: Instance, warn: list) -> None:
    plan = netservices.plan_dnsmasq(master, DnsmasqChoices(user="dnsmasq"), None, warn)
    assert not plan.path.exists() and warn == []
    assert [n.hostname for n in plan.nodes] == ["login1", "n0000"]  # listing order
    assert (str(plan.config.dhcp_range.start), str(plan.config.dhcp_range.end)) == (
        "127.255.255.0",
        "127.255.255.254",
    )
    lines = plan.text.splitlines()
    assert "interface=lo" in lines and "user=dnsmasq" in lines
    assert [line for line in lines if line.startswith("dhcp-host=")] == [
        f"dhcp-host={MAC2},login1",
        f"dhcp-host={MAC1},n0000",
    ]
    assert f"tftp-root={master.paths.tftp_dir.absolute()}" in lines
    assert "dhcp-boot=tag:ipxe,pxelinux.0" in lines


def test_the_plan_keeps_root_when_dnsmasq_could_not_read_its_files(master: Instance, warn: list) -> None:
    plan = netservices.plan_dnsmasq(
        master, DnsmasqChoices(), None, warn
    )  # pytest's tmp_path is closed to others
    assert plan.config.choices.user == "root"
    ((what, where),) = warn
    assert what.startswith("dnsmasq keeps running as root") and where is None


def test_the_plan_takes_options_and_refuses_bad_ones(master: Instance, warn: list) -> None:
    chosen = DnsmasqChoices(dns=False, ipxe=False, user="root")
    lines = netservices.plan_dnsmasq(master, chosen, "127.0.0.10,127.0.0.20", warn).text.splitlines()
    assert "dhcp-range=127.0.0.10,127.0.0.20,255.0.0.0,12h" in lines and "port=0" in lines
    assert "dhcp-boot=pxelinux.0" in lines
    for choices, dhcp_range, words in [
        (DnsmasqChoices(lease_time="60"), None, "minimum is 2m"),
        (DnsmasqChoices(), "127.0.0.20,127.0.0.10", "START is above END"),
        (DnsmasqChoices(domain="bad domain"), None, "--domain takes"),
    ]:
        with pytest.raises(InvalidRequest, match=words) as caught:
            netservices.plan_dnsmasq(master, choices, dhcp_range, warn)
        assert caught.value.path is None


def test_writing_the_plan_reports_what_the_caller_should_know(master: Instance, warn: list) -> None:
    written = netservices.configure_dnsmasq(master, DnsmasqChoices(user="root"), None, warn)
    assert written.plan.path.read_text() == written.plan.text
    assert written.addresses == 0  # no node has an address yet
    assert not written.tftp_ready and written.running is None
    nodes.set_field(master, "ipaddr", "10.0.0.5", NodeQuery(("n0000",)), warn)
    hosts = netservices.write_hosts(master)
    assert hosts.addresses == 1 and hosts.dnsmasq is None and hosts.signal_error is None
    assert hosts.path.read_text().splitlines()[1:] == ["10.0.0.5\tn0000"]


def test_etc_hosts_merge_names_the_file(master: Instance, tmp_path: Path) -> None:
    damaged = tmp_path / "hosts"
    damaged.write_text("# BEGIN perceus nodes\n")
    with pytest.raises(PerceusError, match="marker lines are damaged") as caught:
        netservices.merge_etc_hosts(master, damaged)
    assert caught.value.path == str(damaged)


def test_nfs_export_warns_about_another_method(master: Instance, warn: list) -> None:
    conf = master.paths.perceus_conf
    conf.write_text(conf.read_text() + "vnfs transfer method = http\n")
    written = netservices.export_vnfs(Instance(master.paths), warn)  # one that reads perceus.conf anew
    assert (
        written.path.read_text().splitlines()[1].startswith(f"{master.paths.statedir / 'vnfs'} 127.0.0.0/8(")
    )
    ((what, where),) = warn
    assert what == "vnfs transfer method is 'http', not nfs" and where.startswith(f"{conf}:")


def test_tftp_refuses_a_bad_master_address(master: Instance) -> None:
    with pytest.raises(InvalidRequest, match="--master takes an IPv4 address") as caught:
        netservices.configure_tftp(master, None, None, "nowhere", "")
    assert caught.value.path is None


# ------------------------------------------------------------------------------ the daemons


class FakeDaemon:
    """Records what was done to it; ``refuses`` makes start (or stop) fail as a daemon would."""

    def __init__(self, name: str, log: list, pid: int | None = None, refuses: str = "") -> None:
        self.name, self.log, self.running, self.refuses = name, log, pid, refuses

    def pid(self) -> int | None:
        return self.running

    def start(self) -> int:
        self.log.append(("start", self.name))
        if self.refuses == "start":
            raise PerceusError(f"{self.name} did not start: no such device", self.name)
        self.running = 100 + len(self.log)
        return self.running

    def stop(self) -> int | None:
        self.log.append(("stop", self.name))
        if self.refuses == "stop":
            raise PerceusError(f"{self.name} did not stop within 30 s", self.name)
        pid, self.running = self.running, None
        return pid


def test_start_all_starts_in_order_and_leaves_running_ones(warn: list) -> None:
    log: list = []
    daemons = [FakeDaemon("perceusd", log, pid=7), FakeDaemon("dnsmasq", log)]
    events = list(netservices.start_all(daemons, warn))
    assert events == [
        DaemonEvent("perceusd", Change.ALREADY_RUNNING, 7),
        DaemonEvent("dnsmasq", Change.STARTED, 101),
    ]
    assert log == [("start", "dnsmasq")] and warn == []


def test_a_failed_start_stops_what_this_start_started(warn: list) -> None:
    log: list = []
    daemons = [FakeDaemon("perceusd", log), FakeDaemon("dnsmasq", log, refuses="start")]
    events = []
    with pytest.raises(PerceusError, match="dnsmasq did not start: no such device"):
        for event in netservices.start_all(daemons, warn):
            events.append(event)
    assert events == [DaemonEvent("perceusd", Change.STARTED, 101)]  # reported before the failure
    assert log == [("start", "perceusd"), ("start", "dnsmasq"), ("stop", "perceusd")]
    assert [d.pid() for d in daemons] == [None, None] and warn == []


def test_a_rollback_that_cannot_stop_warns_and_raises_the_first_failure(warn: list) -> None:
    log: list = []
    running_before = FakeDaemon("other", log, pid=5)
    daemons = [
        running_before,
        FakeDaemon("perceusd", log, refuses="stop"),
        FakeDaemon("dnsmasq", log, refuses="start"),
    ]
    with pytest.raises(PerceusError, match="dnsmasq did not start"):
        list(netservices.start_all(daemons, warn))
    assert ("stop", "other") not in log  # it was running before: not this start's to stop
    assert warn == [("perceusd did not stop within 30 s (perceusd)", None)]


def test_stop_all_tries_every_daemon_then_raises(warn: list) -> None:
    log: list = []
    daemons = [FakeDaemon("perceusd", log, pid=7), FakeDaemon("dnsmasq", log, refuses="stop")]
    events = []
    with pytest.raises(PerceusError, match="dnsmasq did not stop"):
        for event in netservices.stop_all(daemons):
            events.append(event)
    assert log == [("stop", "dnsmasq"), ("stop", "perceusd")]
    assert events == [DaemonEvent("perceusd", Change.STOPPED, 7)]
    assert list(netservices.stop_all([FakeDaemon("dnsmasq", [])])) == [
        DaemonEvent("dnsmasq", Change.NOT_RUNNING, None)
    ]


def test_start_needs_a_dnsmasq_configuration_first(master: Instance, warn: list) -> None:
    with pytest.raises(PerceusError, match="run 'perceus configure dnsmasq' first") as caught:
        list(netservices.start(master, warn))
    assert caught.value.path == str(master.paths.dnsmasq_conf)
    assert [pid for _, pid in netservices.status(master)] == [None, None]
