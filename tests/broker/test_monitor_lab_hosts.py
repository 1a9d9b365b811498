"""Host failures on the multi-host lab: the broker and its real HostMonitor over qemu+ssh to hv1..hv3.

The hosts are real libvirtds behind real sshds in network namespaces (tests/fixtures/lab_hosts.py); a host
"fails" the way a machine does: its libvirtd is killed, or its network is cut so packets vanish.
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
from tests.fixtures.lab_hosts import lab_host_settings
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


def lab_config(tmp_path, lab_hosts: LabHosts, pool: str, monitor: dict) -> Config:
    hosts = [lab_host_settings(lab_hosts, name, pool).model_dump() for name in lab_hosts.names]
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
def lab(request, tmp_path, lab_hosts, lab_pool, demo_image: DemoImage, broker_server) -> Iterator[Lab]:
    """The broker on hv1..hv3; afterwards every host is healed and every desktop of the test destroyed.

    Monitor settings come from `@pytest.mark.parametrize("lab", [settings], indirect=True)`, else FAST_MONITOR.
    """
    config = lab_config(tmp_path, lab_hosts, lab_pool, getattr(request, "param", FAST_MONITOR))
    drivers = {host.name: LibvirtProvider(host) for host in config.hosts}
    url = broker_server(
        config,
        authenticator=FakeAuthenticator(),
        providers=drivers,
        image_resolver=lambda pool: BootImage.of(demo_image),
    )
    db = Database(config.database)
    yield Lab(config, drivers, url, db)
    for name in lab_hosts.names:
        lab_hosts.restore_network(name)
    lab_hosts.up()  # restarts a killed libvirtd; its guests kept running and are destroyed below
    with db.transaction() as session:
        placed = session.execute(select(Desktop.host_name, Desktop.domain_name)).all()
    for host, domain in placed:
        cleaner = LibvirtProvider(lab_host_settings(lab_hosts, host, lab_pool))
        destroy_quietly(cleaner, domain)
        cleaner.close()
    for driver in drivers.values():
        driver.close()
    db.close()


def test_host_whose_libvirtd_dies_is_marked_down_and_new_desktops_go_elsewhere(lab, lab_hosts):
    client = BrokerClient(lab.url)
    client.login("kimmj")
    lab.only("hv2")
    first = connect(client, "mois-office")
    domain = first["desktop"]["name"]
    assert desktop_by_domain(lab.db, domain).host_name == "hv2"
    lab.enable_all()

    runner = MonitorRunner(lab.config, lab.drivers)
    try:
        wait_until(lambda: row(lab.db, Host, "hv2").cpu_load is not None, 30, "a health sample of hv2")
        lab_hosts.kill_libvirtd("hv2")
        wait_until(lambda: lab.state("hv2") == "down", DOWN_DEADLINE_S, "hv2 marked down")
    finally:
        runner.stop()

    assert desktop_by_domain(lab.db, domain).state == "lost"
    assert (lab.state("hv1"), lab.state("hv3")) == ("up", "up")
    session = client.get(f"/api/v1/sessions/{first['session_id']}").json()
    assert (session["state"], session["desktop"]["state"]) == ("ended", "lost")
    (down,) = audit_actions(lab.db, "host_down")
    assert (down.target, down.detail["desktops"]) == ("hv2", [domain])

    second = connect(client, "mois-office")
    assert second["session_id"] != first["session_id"]
    replacement = desktop_by_domain(lab.db, second["desktop"]["name"])
    assert (replacement.host_name in ("hv1", "hv3"), replacement.state) == (True, "running")


@pytest.mark.parametrize("lab", [{}], ids=["default-monitor-settings"], indirect=True)
def test_host_whose_network_is_cut_is_marked_down_and_back_up_when_it_returns(lab, lab_hosts):
    runner = MonitorRunner(lab.config, lab.drivers)
    try:
        wait_until(lambda: row(lab.db, Host, "hv3").cpu_load is not None, 30, "a health sample of hv3")
        lab_hosts.cut_network("hv3")
        # Nothing answers and nothing refuses: only libvirt's keepalive tells the connection is dead.
        wait_until(lambda: not lab.drivers["hv3"].is_connected(), DOWN_DEADLINE_S, "keepalive closing hv3")
        wait_until(lambda: lab.state("hv3") == "down", DOWN_DEADLINE_S, "hv3 marked down")
        assert (lab.state("hv1"), lab.state("hv2")) == ("up", "up")

        lab_hosts.restore_network("hv3")
        wait_until(lambda: lab.state("hv3") == "up", DOWN_DEADLINE_S, "hv3 marked up again")
    finally:
        runner.stop()
    assert [event.target for event in audit_actions(lab.db, "host_down")] == ["hv3"]
    assert [event.target for event in audit_actions(lab.db, "host_up")] == ["hv3"]


def test_draining_host_takes_no_new_desktops_and_keeps_its_own(lab):
    kim = BrokerClient(lab.url)
    kim.login("kimmj")
    lab.only("hv1")
    kept = connect(kim, "mois-office")["desktop"]["name"]
    lab.enable_all()
    set_admin_state(lab.db, "hv1", "draining")

    runner = MonitorRunner(lab.config, lab.drivers)
    try:
        choi = BrokerClient(lab.url)
        choi.login("choijw")
        new = connect(choi, "moef-office")["desktop"]["name"]
        # A few monitor passes over the draining host (cpu_load needs two samples) must leave it be.
        wait_until(lambda: row(lab.db, Host, "hv1").cpu_load is not None, 30, "monitor passes over hv1")
    finally:
        runner.stop()

    assert desktop_by_domain(lab.db, new).host_name in ("hv2", "hv3")
    assert desktop_by_domain(lab.db, kept).state == "running"
    assert lab.drivers["hv1"].desktop_state(kept) == "running"
    assert lab.state("hv1") == "up"
    assert kept in lab.drivers["hv1"].list_desktops()
