"""Prewarmed spares with real QEMU guests: the pool manager fills, a connect takes, the pool refills."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from broker.app import prepare_database
from broker.db import Database
from broker.db.migrate import upgrade
from broker.db.models import Desktop, User, utcnow
from broker.desktops import take_spare
from broker.pools import pool_counts
from hypervisor.libvirt_provider import LibvirtProvider
from tests.fixtures.broker import (
    BrokerClient,
    BrokerThread,
    demo_image_broker,
    make_broker_config,
    migrated_database,
)
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
    with migrated_database(spares_config) as db:
        yield db


@pytest.fixture
def broker(spares_config, spares_db, fake_authenticator, demo_image, libvirt_host) -> Iterator[BrokerThread]:
    # The pool manager stops refilling before what the test started is removed.
    with demo_image_broker(
        spares_config, spares_db, fake_authenticator, demo_image, libvirt_host, "pool_manager"
    ) as broker:
        yield broker


def running_spares(db: Database) -> list[str]:
    with db.transaction() as session:
        query = select(Desktop.domain_name).where(
            Desktop.pool_name == POOL, Desktop.assigned_user.is_(None), Desktop.state == "running"
        )
        return list(session.scalars(query).all())


def spare_gauge(use: str = "spare") -> float | None:
    return REGISTRY.get_sample_value("vdi_pool_desktops", {"pool": POOL, "use": use})


def ready_at(db: Database, name: str) -> dt.datetime | None:
    with db.transaction() as session:
        return session.scalar(select(Desktop.ready_at).where(Desktop.domain_name == name))


def test_pool_fills_a_spare_a_connect_takes_it_and_the_pool_refills(broker, spares_db):
    (spare,) = wait_until(lambda: running_spares(spares_db), 120, "the pool's first running spare")
    # The gauge follows on the pool manager's next pass after the spare's state changes.
    wait_until(lambda: spare_gauge() == 1, 30, "the spare gauge at 1")
    # Running is not yet ready: the spare counts as ready once its guest shows the ready marker.
    wait_until(lambda: spare_gauge("spare_ready") == 1, 120, "the spare's guest to show ready")
    assert ready_at(spares_db, spare) is not None
    driver = LibvirtProvider(broker.config.hosts[0])
    try:
        assert "smartwork-vdi: desktop ready" in driver.console_log(spare)
    finally:
        driver.close()

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


def test_a_connect_takes_a_ready_spare_before_an_older_booting_one_and_never_a_canary(tmp_path):
    config = make_broker_config(
        tmp_path / "broker.db",
        pools=[{"name": POOL, "display_name": "기획재정부", "groups": ["moef"], "spares": 2}],
    )
    upgrade(config.database.url)
    db = Database(config.database)
    try:
        asyncio.run(prepare_database(db, config))
        with db.transaction() as session:
            session.add_all(User(username=name) for name in ("choijw", "jungdh", "kangye"))
            # A rollout's canary is never handed out before the rollout promotes its version.
            for name, ready in (
                ("vdi-moef-office-canary-r1-abcdef", utcnow()),
                ("vdi-moef-office-spare-booting", None),
                ("vdi-moef-office-spare-ready", utcnow()),
            ):
                session.add(
                    Desktop(pool_name=POOL, domain_name=name, image="demo:1", state="running", ready_at=ready)
                )
        pool = config.pools[0]
        with db.transaction() as session:
            first = take_spare(session, pool, "choijw")
            second = take_spare(session, pool, "jungdh")
            third = take_spare(session, pool, "kangye")
        assert (first.domain_name, first.assigned_user) == ("vdi-moef-office-spare-ready", "choijw")
        assert (second.domain_name, second.assigned_user) == ("vdi-moef-office-spare-booting", "jungdh")
        assert third is None
    finally:
        db.close()


def test_canaries_on_trial_take_places_but_never_stand_in_for_spares(tmp_path):
    config = make_broker_config(
        tmp_path / "broker.db",
        pools=[{"name": POOL, "display_name": "기획재정부", "groups": ["moef"], "spares": 2, "max_size": 4}],
    )
    upgrade(config.database.url)
    db = Database(config.database)
    try:
        asyncio.run(prepare_database(db, config))
        with db.transaction() as session:
            for name, ready in (
                ("vdi-moef-office-canary-r1-abcdef", utcnow()),
                ("vdi-moef-office-canary-r1-012345", utcnow()),
                ("vdi-moef-office-spare-ready", utcnow()),
            ):
                session.add(
                    Desktop(pool_name=POOL, domain_name=name, image="demo:1", state="running", ready_at=ready)
                )
        pool = config.pools[0]
        with db.transaction() as session:
            counts = pool_counts(session, pool)
        assert (counts.total, counts.spare, counts.spare_ready) == (3, 1, 1)
        # One more spare to keep two takeable; max_size still counts the canaries' places.
        assert counts.missing(pool) == 1
    finally:
        db.close()
