"""Prewarmed spares with real QEMU guests: the pool manager fills, a connect takes, the pool refills."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from broker.db import Database
from broker.db.migrate import upgrade
from broker.db.models import Desktop
from hypervisor.libvirt_driver import LibvirtDriver
from tests.fixtures.broker import BrokerClient, BrokerThread, make_broker_config
from tests.fixtures.common import wait_until

pytestmark = pytest.mark.e2e

POOL = "moef-office"


@pytest.fixture
def spares_config(tmp_path, libvirt_host):
    pool = {"name": POOL, "display_name": "기획재정부", "groups": ["moef"], "kind": "floating", "spares": 1}
    return make_broker_config(
        tmp_path / "broker.db",
        hosts=[libvirt_host.model_dump(exclude_none=True)],
        pools=[pool | {"max_size": 3}],
    )


@pytest.fixture
def spares_db(spares_config) -> Iterator[Database]:
    upgrade(spares_config.database.url)
    db = Database(spares_config.database)
    yield db
    db.close()


@pytest.fixture
def broker(spares_config, spares_db, fake_authenticator, demo_image, libvirt_host) -> Iterator[BrokerThread]:
    broker = BrokerThread(
        spares_config, authenticator=fake_authenticator, image_resolver=lambda pool: demo_image.boot_image()
    )
    yield broker
    # Stop refilling before removing what the test started.
    broker._loop_thread.call(broker.app.settings["pool_manager"].stop())
    broker.stop()
    destroy_desktops(spares_db, libvirt_host)


def destroy_desktops(db: Database, host) -> None:
    driver = LibvirtDriver(host)
    try:
        with db.transaction() as session:
            names = session.scalars(select(Desktop.domain_name).where(Desktop.state != "deleted")).all()
        for name in names:
            driver.destroy_desktop(name)
    finally:
        driver.close()


def running_spares(db: Database) -> list[str]:
    with db.transaction() as session:
        query = select(Desktop.domain_name).where(
            Desktop.pool_name == POOL, Desktop.assigned_user.is_(None), Desktop.state == "running"
        )
        return list(session.scalars(query).all())


def spare_gauge() -> float | None:
    return REGISTRY.get_sample_value("vdi_pool_desktops", {"pool": POOL, "use": "spare"})


def test_pool_fills_a_spare_a_connect_takes_it_and_the_pool_refills(broker, spares_db):
    (spare,) = wait_until(lambda: running_spares(spares_db), 120, "the pool's first running spare")
    assert spare_gauge() == 1

    client = BrokerClient(broker.base_url)
    assert client.login("choijw").status == 200
    response = client.post(f"/api/v1/pools/{POOL}/connect")
    assert response.status == 200, response.body
    assert response.json()["desktop"]["name"] == spare

    (refill,) = wait_until(lambda: running_spares(spares_db), 120, "a new spare after the connect")
    assert refill != spare
    wait_until(lambda: spare_gauge() == 1, 30, "the spare gauge back at 1")
    in_use = {"pool": POOL, "use": "in_use"}
    wait_until(lambda: REGISTRY.get_sample_value("vdi_pool_desktops", in_use) == 1, 30, "one desktop in use")
