"""Leases: of several brokers on one database, exactly one runs each background job, and a dead
broker's jobs move to another (broker/leases.py)."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request

from sqlalchemy import select

from broker.db import Database
from broker.db.migrate import upgrade
from broker.db.models import Lease, utcnow
from broker.leases import hold
from tests.fixtures.broker import COOKIE_SECRET, BrokerThread, make_broker_config
from tests.fixtures.common import wait_until

NOW = dt.datetime(2026, 12, 6, 9, 0, tzinfo=dt.UTC)
JOBS = {"rollout-manager", "console-token-purge", "seat-ends"}  # what a broker without pools or monitor runs


def owners(db: Database) -> dict[str, str]:
    with db.transaction() as session:
        return {row.name: row.owner for row in session.scalars(select(Lease)) if row.expires_at > utcnow()}


def test_one_owner_at_a_time_and_an_expired_lease_moves(broker_db):
    with broker_db.transaction() as s:
        assert hold(s, "pool-manager", "broker-a", NOW, 10)
    with broker_db.transaction() as s:
        assert not hold(s, "pool-manager", "broker-b", NOW + dt.timedelta(seconds=5), 10)
        assert hold(s, "pool-manager", "broker-a", NOW + dt.timedelta(seconds=5), 10)  # renewed
    with broker_db.transaction() as s:
        # broker-a's renewal ran to NOW + 15 s; after that broker-b may take the job, and then a is out.
        assert not hold(s, "pool-manager", "broker-b", NOW + dt.timedelta(seconds=14), 10)
        assert hold(s, "pool-manager", "broker-b", NOW + dt.timedelta(seconds=16), 10)
        assert not hold(s, "pool-manager", "broker-a", NOW + dt.timedelta(seconds=17), 10)


def broker_pair(tmp_path, fake_authenticator):
    config = make_broker_config(
        tmp_path / "broker.db",
        broker={"cookie_secret": COOKIE_SECRET, "gateway_url": "ws://127.0.0.1:9/ws", "lease_ttl_s": 1.5},
    )
    upgrade(config.database.url)
    brokers = [
        BrokerThread(config, authenticator=fake_authenticator, providers={}, leases=True) for _ in range(2)
    ]
    return config, brokers


def leads(broker: BrokerThread) -> list[str]:
    with urllib.request.urlopen(f"{broker.base_url}/healthz", timeout=10) as response:
        return json.loads(response.read())["leads"]


def test_two_brokers_share_out_the_jobs_and_a_dead_ones_move_within_15_s(tmp_path, fake_authenticator):
    config, (first, second) = broker_pair(tmp_path, fake_authenticator)
    db = Database(config.database)
    try:
        wait_until(lambda: set(owners(db)) == JOBS, 15, "every job leased")
        ids = {first.app.leases.owner: first, second.app.leases.owner: second}
        assert set(owners(db).values()) <= set(ids)
        # /healthz says who leads what; between them the two lead each job exactly once.
        wait_until(lambda: sorted(leads(first) + leads(second)) == sorted(JOBS), 15, "health shows leads")
        leader = ids[owners(db)["rollout-manager"]]
        survivor = second if leader is first else first
        # A broker that dies gives nothing up: its leases just stop being renewed.
        leader.app.leases.give_up = _never
        leader.stop()
        died = utcnow()
        wait_until(lambda: set(owners(db).values()) == {survivor.app.leases.owner}, 15, "jobs moved")
        assert (utcnow() - died).total_seconds() < 15
        # The survivor's loop learns of its renewal just after the database has it.
        wait_until(lambda: set(survivor.app.leases.held) == JOBS, 5, "the survivor runs every job")
    finally:
        db.close()
        for broker in (first, second):
            if broker._loop_thread.loop.is_running():
                broker.stop()


async def _never() -> None:
    return None


def test_a_clean_stop_hands_the_jobs_over_at_once(tmp_path, fake_authenticator):
    config, (first, second) = broker_pair(tmp_path, fake_authenticator)
    db = Database(config.database)
    try:
        wait_until(lambda: set(owners(db)) == JOBS, 15, "every job leased")
        first.stop()
        wait_until(lambda: set(owners(db).values()) == {second.app.leases.owner}, 5, "jobs handed over")
    finally:
        db.close()
        if second._loop_thread.loop.is_running():
            second.stop()
