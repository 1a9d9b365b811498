"""Host failures on lab hosts of this module's own: the broker and its real HostMonitor over qemu+ssh to hv5..hv7.

The hosts are real libvirtds behind real sshds in network namespaces (tests/fixtures/lab_hosts.py); a host
"fails" the way a machine does: its libvirtd is killed, or its network is cut so packets vanish. They are
not the shared hv1..hv3: other tests (in other xdist workers or sessions) keep using those meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from broker.db import Database
from broker.db.models import Desktop, Host
from hypervisor.base import BootImage
from hypervisor.libvirt_provider import LibvirtProvider
from images.demo import DemoImage
from tests.fixtures.broker import BrokerClient, FakeAuthenticator, make_broker_config
from tests.fixtures.broker_api import connect
from tests.fixtures.common import wait_until
from tests.fixtures.lab_hosts import lab_host_settings, own_lab_hosts
from tests.fixtures.libvirt import destroy_quietly
from tests.fixtures.monitor import (
    MonitorRunner,
    audit_actions,
    desktop_by_domain,
    row,
    set_admin_state,
)
from vdi.config import Config
from vdi.lab.hosts import LabHosts

# The production bound (MonitorSettings.down_after_s must stay below it), not a speed expectation.
DOWN_DEADLINE_S = 30.0
# The network-cut test runs the monitor as shipped (poll every 5 s, down after 15 s): that is where keepalive
# must turn a silent host into an error in time. The others poll faster to keep the suite short.
FAST_MONITOR = {"poll_interval_s": 1.0, "down_after_s": 5.0}
HOSTS = ("hv5", "hv6", "hv7")
FIRST_OCTET = 15  # 10.77.0.15 .. 17


@pytest.fixture(scope="module")
def fault_hosts(tmp_path_factory) -> Iterator[LabHosts]:
    with own_lab_hosts(tmp_path_factory.mktemp("lab"), HOSTS, FIRST_OCTET) as hosts:
        yield hosts


def lab_config(tmp_path, fault_hosts: LabHosts, pool: str, monitor: dict) -> Config:
    hosts = [lab_host_settings(fault_hosts, name, pool).model_dump() for name in fault_hosts.names]
    return make_broker_config(tmp_path / "broker.db", hosts=hosts, monitor=monitor)


class Lab:
    def __init__(self, config: Config, drivers: dict[str, LibvirtProvider], url: str, db: Database) -> None:
        self.config, self.drivers, self.url, self.db = config, drivers, url, db

    def only(self, host: str) -> None:
        """Let placement choose `host` alone (the others disabled) for the next desktop."""
        for name in self.drivers:
            set_admin_state(self.db, name, "enabled" if name == host else "disabled")

    def enable_all(self) -> None:
        for name in self.drivers:
            set_admin_state(self.db, name, "enabled")

    def state(self, host: str) -> str:
        return row(self.db, Host, host).state


@pytest.fixture
def lab(request, tmp_path, fault_hosts, lab_pool, demo_image: DemoImage, broker_server) -> Iterator[Lab]:
    """The broker on the module's hv5..hv7; afterwards every host is healed and every desktop of the test destroyed.

    Monitor settings come from `@pytest.mark.parametrize("lab", [settings], indirect=True)`, else FAST_MONITOR.
    """
    config = lab_config(tmp_path, fault_hosts, lab_pool, getattr(request, "param", FAST_MONITOR))
    drivers = {host.name: LibvirtProvider(host) for host in config.hosts}
    url = broker_server(
        config,
        authenticator=FakeAuthenticator(),
        providers=drivers,
        image_resolver=lambda pool: BootImage.of(demo_image),
    )
    db = Database(config.database)
    yield Lab(config, drivers, url, db)
    for name in fault_hosts.names:
        fault_hosts.restore_network(name)
    fault_hosts.up()  # restarts a killed libvirtd; its guests kept running and are destroyed below
    with db.transaction() as session:
        placed = session.execute(select(Desktop.host_name, Desktop.domain_name)).all()
    for host, domain in placed:
        cleaner = LibvirtProvider(lab_host_settings(fault_hosts, host, lab_pool))
        destroy_quietly(cleaner, domain)
        cleaner.close()
    for driver in drivers.values():
        driver.close()
    db.close()


def test_host_whose_libvirtd_dies_is_marked_down_and_new_desktops_go_elsewhere(lab, fault_hosts):
    client = BrokerClient(lab.url)
    client.login("kimmj")
    lab.only("hv6")
    first = connect(client, "mois-office")
    domain = first["desktop"]["name"]
    assert desktop_by_domain(lab.db, domain).host_name == "hv6"
    lab.enable_all()

    runner = MonitorRunner(lab.config, lab.drivers)
    try:
        wait_until(lambda: row(lab.db, Host, "hv6").cpu_load is not None, 30, "a health sample of hv6")
        fault_hosts.kill_libvirtd("hv6")
        wait_until(lambda: lab.state("hv6") == "down", DOWN_DEADLINE_S, "hv6 marked down")
    finally:
        runner.stop()

    assert desktop_by_domain(lab.db, domain).state == "lost"
    assert (lab.state("hv5"), lab.state("hv7")) == ("up", "up")
    session = client.get(f"/api/v1/sessions/{first['session_id']}").json()
    assert (session["state"], session["desktop"]["state"]) == ("ended", "lost")
    (down,) = audit_actions(lab.db, "host_down")
    assert (down.target, down.detail["desktops"]) == ("hv6", [domain])

    second = connect(client, "mois-office")
    assert second["session_id"] != first["session_id"]
    replacement = desktop_by_domain(lab.db, second["desktop"]["name"])
    assert (replacement.host_name in ("hv5", "hv7"), replacement.state) == (True, "running")


@pytest.mark.parametrize("lab", [{}], ids=["default-monitor-settings"], indirect=True)
def test_host_whose_network_is_cut_is_marked_down_and_back_up_when_it_returns(lab, fault_hosts):
    runner = MonitorRunner(lab.config, lab.drivers)
    try:
        wait_until(lambda: row(lab.db, Host, "hv7").cpu_load is not None, 30, "a health sample of hv7")
        fault_hosts.cut_network("hv7")
        # Nothing answers and nothing refuses: only libvirt's keepalive tells the connection is dead.
        wait_until(lambda: not lab.drivers["hv7"].is_connected(), DOWN_DEADLINE_S, "keepalive closing hv7")
        wait_until(lambda: lab.state("hv7") == "down", DOWN_DEADLINE_S, "hv7 marked down")
        assert (lab.state("hv5"), lab.state("hv6")) == ("up", "up")

        fault_hosts.restore_network("hv7")
        wait_until(lambda: lab.state("hv7") == "up", DOWN_DEADLINE_S, "hv7 marked up again")
    finally:
        runner.stop()
    assert [event.target for event in audit_actions(lab.db, "host_down")] == ["hv7"]
    assert [event.target for event in audit_actions(lab.db, "host_up")] == ["hv7"]


def test_draining_host_takes_no_new_desktops_and_keeps_its_own(lab):
    kim = BrokerClient(lab.url)
    kim.login("kimmj")
    lab.only("hv5")
    kept = connect(kim, "mois-office")["desktop"]["name"]
    lab.enable_all()
    set_admin_state(lab.db, "hv5", "draining")

    runner = MonitorRunner(lab.config, lab.drivers)
    try:
        choi = BrokerClient(lab.url)
        choi.login("choijw")
        new = connect(choi, "moef-office")["desktop"]["name"]
        # A few monitor passes over the draining host (cpu_load needs two samples) must leave it be.
        wait_until(lambda: row(lab.db, Host, "hv5").cpu_load is not None, 30, "monitor passes over hv5")
    finally:
        runner.stop()

    assert desktop_by_domain(lab.db, new).host_name in ("hv6", "hv7")
    assert desktop_by_domain(lab.db, kept).state == "running"
    assert lab.drivers["hv5"].desktop_state(kept) == "running"
    assert lab.state("hv5") == "up"
    assert kept in lab.drivers["hv5"].list_desktops()
