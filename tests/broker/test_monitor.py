"""The host monitor against the real libvirtd: a host that dies, and reconcile of orphan domains.

A host "dies" without touching the shared libvirtd: its URI goes through a unix-socket relay the test owns,
and stopping the relay (closing its listener and every relayed connection) makes the host stop answering.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, select

from broker.app import prepare_database
from broker.db import Database
from broker.db.migrate import upgrade
from broker.db.models import Desktop, DesktopSession, Host, utcnow
from broker.desktops import record_logoff
from broker.monitor import ADOPT_AFTER_S, HostMonitor, mark_missing_lost
from hypervisor.base import BootImage, DesktopSpec
from hypervisor.config import HostSettings
from hypervisor.libvirt_provider import LibvirtProvider
from images.demo import DemoImage
from tests.fixtures.broker import (
    BrokerClient,
    FakeAuthenticator,
    LoopThread,
    make_broker_config,
    seed_session,
)
from tests.fixtures.common import wait_until
from tests.fixtures.libvirt import desktop_prefix, destroy_quietly
from tests.fixtures.libvirt_relay import UnixRelay
from tests.fixtures.monitor import MonitorRunner, audit_actions, desktop_by_domain, row, set_admin_state
from tests.fixtures.toy_provider import ToyProvider
from vdi.config import Config, ConfigError

DOWN_DEADLINE_S = 30.0


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[UnixRelay]:
    relay = UnixRelay(tmp_path / "libvirt-relay.sock")
    yield relay
    relay.stop()


def two_host_config(tmp_path: Path, libvirt_host: HostSettings, relay: UnixRelay, **monitor) -> Config:
    common = {"storage_pool": libvirt_host.storage_pool, "storage_path": libvirt_host.storage_path}
    hosts = [
        {"name": "flaky", "uri": f"qemu+unix:///system?socket={relay.path}", **common},
        {"name": "healthy", "uri": "qemu:///system", **common},
    ]
    settings = {"poll_interval_s": 0.5, "down_after_s": 3.0, **monitor}
    return make_broker_config(tmp_path / "broker.db", hosts=hosts, monitor=settings)


class SessionScopedDriver(LibvirtProvider):
    """The real driver, seeing only this test session's domains: other sessions share the libvirtd, and
    an orphan policy of "destroy" must never reach their desktops."""

    def __init__(self, host: HostSettings, prefix: str) -> None:
        super().__init__(host)
        self.prefix = prefix

    def list_desktops(self) -> list[str]:
        return [name for name in super().list_desktops() if name.startswith(self.prefix)]


def start_lab(
    config, demo_image: DemoImage, broker_server
) -> tuple[dict[str, LibvirtProvider], str, Database]:
    """The broker on `config`'s hosts (the real libvirtd) booting the demo image: its drivers, URL and database."""
    upgrade(config.database.url)
    drivers = {host.name: LibvirtProvider(host) for host in config.hosts}
    url = broker_server(
        config,
        authenticator=FakeAuthenticator(),
        providers=drivers,
        image_resolver=lambda pool: BootImage.of(demo_image),
    )
    return drivers, url, Database(config.database)


@pytest.fixture
def lab(tmp_path, libvirt_host, relay, demo_image: DemoImage, broker_server):
    """Two hosts on the real libvirtd (one behind the relay), the broker, and cleanup of every domain."""
    config = two_host_config(tmp_path, libvirt_host, relay)
    drivers, url, db = start_lab(config, demo_image, broker_server)
    yield config, drivers, url, db
    cleaner = LibvirtProvider(libvirt_host)
    with db.transaction() as session:
        domains = session.scalars(select(Desktop.domain_name)).all()
    for domain in domains:
        destroy_quietly(cleaner, domain)
    cleaner.close()
    for driver in drivers.values():
        driver.close()
    db.close()


def test_dead_host_is_marked_down_its_desktop_lost_and_new_connects_go_elsewhere(lab, relay):
    config, drivers, url, db = lab
    set_admin_state(db, "healthy", "disabled")  # the first desktop must land on the host that will die
    client = BrokerClient(url)
    client.login("kimmj")
    first = client.post("/api/v1/pools/mois-office/connect").json()
    domain = first["desktop"]["name"]
    assert desktop_by_domain(db, domain).host_name == "flaky"
    set_admin_state(db, "healthy", "enabled")

    runner = MonitorRunner(config, drivers)
    try:
        wait_until(lambda: row(db, Host, "flaky").cpu_load is not None, 10, "a first health sample")
        relay.stop()
        wait_until(lambda: row(db, Host, "flaky").state == "down", DOWN_DEADLINE_S, "flaky marked down")
    finally:
        runner.stop()

    assert desktop_by_domain(db, domain).state == "lost"
    assert row(db, Host, "healthy").state == "up"
    session = client.get(f"/api/v1/sessions/{first['session_id']}").json()
    assert (session["state"], session["desktop"]["state"]) == ("ended", "lost")
    (down,) = audit_actions(db, "host_down")
    assert (down.target, down.detail["desktops"]) == ("flaky", [domain])
    assert [e.detail["reason"] for e in audit_actions(db, "session_end")] == ["host_down"]
    assert "연결 끊김: 호스트 또는 데스크톱 장애" in client.get("/desktops").text
    english = client.get("/desktops", headers={"Accept-Language": "en"}).text
    assert 'data-state="lost">Lost: its host or the desktop failed' in english

    second = client.post("/api/v1/pools/mois-office/connect").json()
    assert second["session_id"] != first["session_id"]
    assert desktop_by_domain(db, second["desktop"]["name"]).host_name == "healthy"
    assert 'data-state="running"' in client.get("/desktops").text


def qemu_pid(domain: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())


def crash_on_healthy(config, drivers, db: Database, domain: str, state: str, what: str) -> None:
    """Kill the QEMU of `domain` (on host healthy) under a monitor whose polls are a minute apart, so that only
    libvirt's lifecycle event can act in time, and wait until the desktop is in `state`."""
    slow = config.model_copy(
        update={"monitor": config.monitor.model_copy(update={"poll_interval_s": 60.0, "down_after_s": 60.0})}
    )
    runner = MonitorRunner(slow, drivers)
    try:
        # The first poll (physical size, asserted below) may otherwise commit after the crash event's update.
        wait_until(
            lambda: row(db, Host, "healthy").vcpus is not None, 20, "the first health sample of healthy"
        )
        os.kill(qemu_pid(domain), signal.SIGKILL)
        wait_until(lambda: desktop_by_domain(db, domain).state == state, 20, what)
    finally:
        runner.stop()


def test_a_crashed_desktop_is_lost_at_once_from_the_hosts_lifecycle_event(lab):
    """A guest whose QEMU dies is noticed from libvirt's lifecycle event, not by waiting for polls."""
    config, drivers, url, db = lab
    set_admin_state(db, "flaky", "disabled")
    client = BrokerClient(url)
    client.login("kimmj")
    first = client.post("/api/v1/pools/mois-office/connect").json()
    domain = first["desktop"]["name"]
    assert desktop_by_domain(db, domain).host_name == "healthy"

    crash_on_healthy(config, drivers, db, domain, "lost", "the crashed desktop marked lost")

    assert desktop_by_domain(db, domain).error == "desktop_crashed"
    (crash,) = audit_actions(db, "desktop_crashed")
    assert (crash.target, crash.detail["desktop"]) == ("healthy", domain)
    assert crash.detail["detail"] in ("failed", "crashed")
    healthy = row(db, Host, "healthy")
    assert healthy.state == "up"  # the host is fine; only the guest died
    # The monitor also learnt the host's physical size for placement (no override was configured).
    assert healthy.vcpus == os.cpu_count()
    mem_total_mib = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    assert abs(healthy.memory_mib - mem_total_mib) <= 1
    session = client.get(f"/api/v1/sessions/{first['session_id']}").json()
    assert (session["state"], session["desktop"]["state"]) == ("ended", "lost")
    assert [e.detail["reason"] for e in audit_actions(db, "session_end")] == ["desktop_crashed"]
    assert 'data-state="lost"' in client.get("/desktops").text

    # Connecting again gives the user a working desktop.
    second = client.post("/api/v1/pools/mois-office/connect").json()
    assert second["session_id"] != first["session_id"]
    assert desktop_by_domain(db, second["desktop"]["name"]).state == "running"


def test_a_crashed_dedicated_desktop_is_started_again_from_its_own_disk(
    tmp_path, libvirt_host, relay, demo_image: DemoImage, broker_server
):
    """The user's work is on a dedicated desktop's disk: a crash stops it, it is not replaced."""
    config = two_host_config(tmp_path, libvirt_host, relay)
    pools = [pool.model_copy(update={"kind": "dedicated"}) for pool in config.pools]
    config = config.model_copy(update={"pools": pools})
    drivers, url, db = start_lab(config, demo_image, broker_server)
    set_admin_state(db, "flaky", "disabled")
    client = BrokerClient(url)
    client.login("kimmj")
    first = client.post("/api/v1/pools/mois-office/connect").json()
    domain = first["desktop"]["name"]
    crash_on_healthy(config, drivers, db, domain, "stopped", "the crashed desktop stopped")
    try:
        assert desktop_by_domain(db, domain).error == "desktop_crashed"
        session = client.get(f"/api/v1/sessions/{first['session_id']}").json()
        assert session["state"] == "ended"

        second = client.post("/api/v1/pools/mois-office/connect").json()
        assert second["desktop"]["name"] == domain  # the same desktop, started again
        assert desktop_by_domain(db, domain).state == "running"
        assert drivers["healthy"].desktop_state(domain) == "running"
    finally:
        cleaner = LibvirtProvider(libvirt_host)
        destroy_quietly(cleaner, domain)
        cleaner.close()
        for driver in drivers.values():
            driver.close()
        db.close()


def prepared_database(config) -> Database:
    """The config's database, migrated and seeded as a broker's start does it, with no broker running."""
    upgrade(config.database.url)
    db = Database(config.database)
    prepare = LoopThread("prepare")
    prepare.call(prepare_database(db, config))
    prepare.close()
    return db


@pytest.mark.parametrize("policy", ["report", "destroy"])
def test_orphan_domain_is_reported_or_destroyed(
    policy, tmp_path, libvirt_host, relay, demo_image, libvirt_session_token
):
    config = two_host_config(tmp_path, libvirt_host, relay, orphans=policy)
    db = prepared_database(config)
    healthy = SessionScopedDriver(config.hosts[1], desktop_prefix(libvirt_session_token))
    orphan = f"{desktop_prefix(libvirt_session_token)}orphan-{policy}"
    healthy.create_desktop(DesktopSpec(domain_name=orphan, image=BootImage.of(demo_image)))
    runner = MonitorRunner(config, {"healthy": healthy})
    try:
        wait_until(lambda: audit_actions(db, "orphan_domain"), DOWN_DEADLINE_S, "the orphan audited")
        events = [(e.target, e.detail["domain"], e.result) for e in audit_actions(db, "orphan_domain")]
        expected = "reported" if policy == "report" else "destroyed"
        assert ("healthy", orphan, expected) in events
        still_there = orphan in healthy.list_desktops()
        assert still_there == (policy == "report")
    finally:
        runner.stop()
        destroy_quietly(healthy, orphan)
        healthy.close()
        db.close()


def test_reconcile_marks_vanished_desktops_lost_and_adopts_ones_a_dead_broker_left_provisioning(
    tmp_path, libvirt_host, relay, demo_image, libvirt_session_token
):
    config = two_host_config(tmp_path, libvirt_host, relay)
    db = prepared_database(config)
    healthy = SessionScopedDriver(config.hosts[1], desktop_prefix(libvirt_session_token))
    started = f"{desktop_prefix(libvirt_session_token)}adopt"
    healthy.create_desktop(DesktopSpec(domain_name=started, image=BootImage.of(demo_image)))
    vanished_session, vanished_id = seed_session(db, "kimmj", "mois-office", host="healthy")
    _, adopted_id = seed_session(db, "choijw", "moef-office", host="healthy", state="provisioning")
    with db.transaction() as session:
        adopted = session.get(Desktop, adopted_id)
        adopted.domain_name, adopted.vnc_port = started, None
        adopted.created_at = utcnow() - dt.timedelta(seconds=ADOPT_AFTER_S + 60)
    runner = MonitorRunner(config, {"healthy": healthy})
    try:
        wait_until(lambda: row(db, Desktop, adopted_id).state == "running", 30, "the desktop adopted")
        wait_until(lambda: row(db, Desktop, vanished_id).state == "lost", 30, "the vanished desktop lost")
        assert row(db, Desktop, adopted_id).vnc_port == healthy.display(started).port
    finally:
        runner.stop()
        destroy_quietly(healthy, started)
        healthy.close()
    assert row(db, DesktopSession, vanished_session).state == "ended"
    assert row(db, Desktop, vanished_id).error == "domain_missing"
    db.close()


def test_a_logoff_that_commits_while_reconcile_decides_is_not_undone(broker_config, broker_db):
    """The race CI once hit: a logoff destroys the domain, reconcile lists the host and reads the desktop as
    running, the logoff commits "deleted", and only then does reconcile write. Its write must not bring the
    desktop back as "lost": the user logged off, and their portal would show a lost desktop."""
    prepare = LoopThread("prepare")
    prepare.call(prepare_database(broker_db, broker_config))
    prepare.close()
    session_id, desktop_id = seed_session(broker_db, "kimmj", "mois-office")
    logged_off = []

    def logoff_between_read_and_write(conn, cursor, statement, *_args) -> None:
        if logged_off or not statement.lstrip().upper().startswith("SELECT") or "desktops" not in statement:
            return
        logged_off.append(True)  # before the nested transaction, whose own SELECTs come through here too
        with broker_db.transaction() as other:
            record_logoff(other, other.get(Desktop, desktop_id), username="kimmj", client_ip="127.0.0.1")

    event.listen(broker_db.engine, "after_cursor_execute", logoff_between_read_and_write)
    try:
        with broker_db.transaction() as session:
            marked, ended = mark_missing_lost(session, [desktop_id])
    finally:
        event.remove(broker_db.engine, "after_cursor_execute", logoff_between_read_and_write)

    assert logged_off, "the logoff ran in between"
    assert (marked, ended) == (0, 0)
    assert row(broker_db, Desktop, desktop_id).state == "deleted"
    assert row(broker_db, DesktopSession, session_id).state == "ended"
    assert audit_actions(broker_db, "desktop_lost") == []
    assert [e.actor for e in audit_actions(broker_db, "logoff")] == ["kimmj"]


@pytest.mark.parametrize(
    ("monitor", "key"),
    [({"down_after_s": 30}, "monitor.down_after_s"), ({"orphans": "delete"}, "monitor.orphans")],
)
def test_monitor_settings_errors_name_the_key(tmp_path, monitor, key):
    with pytest.raises(ConfigError, match=key):
        make_broker_config(tmp_path / "broker.db", monitor=monitor)


class CreatedWhileListing(ToyProvider):
    """A host whose first listing was taken just before a desktop on it was started (the listing did not
    have it, the database then did): reconcile's race with a connect, on this broker or another."""

    def __init__(self, host, starting: str) -> None:
        super().__init__(host)
        self.starting, self.listings = starting, 0

    def list_desktops(self) -> list[str]:
        self.listings += 1
        listing = super().list_desktops()
        if self.listings == 1:
            self._mine()[self.starting] = None  # started right after this listing was taken
        return listing


def test_a_desktop_started_while_reconcile_lists_the_host_is_not_marked_lost(broker_config, broker_db):
    prepare = LoopThread("prepare")
    prepare.call(prepare_database(broker_db, broker_config))
    prepare.close()
    session_id, desktop_id = seed_session(broker_db, "kimmj", "mois-office")
    domain = row(broker_db, Desktop, desktop_id).domain_name
    ToyProvider.desktops = {}
    provider = CreatedWhileListing(broker_config.hosts[0], domain)
    runner = LoopThread("reconcile")
    try:
        monitor = HostMonitor(broker_config.monitor, broker_db, {"local": provider})
        runner.call(monitor.reconcile_host("local"))
    finally:
        runner.close()
    assert provider.listings == 2  # the second listing, after the database was read, found it
    assert row(broker_db, Desktop, desktop_id).state == "running"
    assert row(broker_db, DesktopSession, session_id).state == "active"
    assert audit_actions(broker_db, "desktop_lost") == []
