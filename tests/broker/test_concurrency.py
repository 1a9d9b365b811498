"""Two brokers on one database, correct by construction: one live session per user and pool whoever
takes the Connect, and spares that never overshoot, with no in-process lock to rely on."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from sqlalchemy import select

from broker.app import BrokerApp, sync_inventory
from broker.auth import PortalUser
from broker.db import Database
from broker.db.migrate import upgrade
from broker.db.models import Desktop, DesktopSession, User
from broker.pools import EnoughSpares, spare_still_missing
from monitoring.metrics import CONNECTS_JOINED
from tests.fixtures.broker import LoopThread, make_broker_config
from tests.fixtures.toy_provider import ToyProvider

USER = PortalUser("kimmj", "김민준", ["mois"])


class MeetingProvider(ToyProvider):
    """A toy host whose first desktop start of each broker waits for the other broker's, so both are
    inside Connect, each with a desktop of its own, before either opens a session."""

    meeting = threading.Barrier(2, timeout=10)

    def create_desktop(self, spec):
        with contextlib.suppress(threading.BrokenBarrierError):
            self.meeting.wait()
        return super().create_desktop(spec)


class IdleBroker:
    """A broker app on a loop of its own, built but not started: no background pass runs unless a test
    calls it, so what two brokers do at once is all the test's own."""

    def __init__(self, config, authenticator) -> None:
        self.db = Database(config.database)
        host = config.hosts[0]
        providers = {host.name: MeetingProvider(host)}
        self.app = BrokerApp(config, self.db, authenticator, providers, monitor=False, leases=False)
        self._loop_thread = LoopThread("idle-broker")

    def stop(self) -> None:
        self._loop_thread.call(self.app.stop())
        self._loop_thread.close()


def two_brokers(tmp_path, fake_authenticator, pool: dict) -> tuple[Database, list[IdleBroker]]:
    config = make_broker_config(
        tmp_path / "broker.db",
        hosts=[{"name": "toy1", "provider": "toy", "uri": "toy:///toy1", "max_desktops": 10}],
        pools=[{"name": "mois-office", "display_name": "업무용", "groups": ["mois"], **pool}],
    )
    upgrade(config.database.url)
    db = Database(config.database)
    with db.transaction() as session:
        sync_inventory(session, config)
        session.add(User(username=USER.username, display_name=USER.display_name, groups=USER.groups))
    return db, [IdleBroker(config, fake_authenticator) for _ in range(2)]


@pytest.fixture
def pair(tmp_path, fake_authenticator, toy_provider, request):
    MeetingProvider.meeting = threading.Barrier(2, timeout=10)
    db, brokers = two_brokers(tmp_path, fake_authenticator, request.param)
    yield db, brokers
    for broker in brokers:
        broker.stop()
        broker.db.close()
    db.close()


def on_both(brokers: list[IdleBroker], call) -> list:
    """Run `call(app)` on each broker's own loop at the same time; their results in order."""
    futures = [asyncio.run_coroutine_threadsafe(call(b.app), b._loop_thread.loop) for b in brokers]
    return [future.result(30) for future in futures]


@pytest.mark.parametrize("pair", [{"kind": "floating"}], indirect=True)
def test_connect_for_one_user_on_two_brokers_at_once_yields_one_session(pair):
    db, brokers = pair
    joined = CONNECTS_JOINED._value.get()
    views = on_both(brokers, lambda app: app.desktops.connect(USER, "mois-office", "192.0.2.7"))
    assert views[0].id == views[1].id
    assert views[0].desktop.name == views[1].desktop.name
    with db.transaction() as session:
        live = session.scalars(select(DesktopSession).where(DesktopSession.state == "active")).all()
        desktops = session.scalars(select(Desktop).order_by(Desktop.id)).all()
    assert [(s.username, s.pool_name) for s in live] == [("kimmj", "mois-office")]
    # Both brokers started a desktop; the loser's went back to the pool as a spare, not lost.
    assert len(desktops) == 2
    assert sorted(d.assigned_user or "" for d in desktops) == ["", "kimmj"]
    assert CONNECTS_JOINED._value.get() == joined + 1


@pytest.mark.parametrize("pair", [{"kind": "floating", "spares": 2, "max_size": 2}], indirect=True)
def test_spare_starts_from_two_brokers_stop_at_the_pool_size(pair):
    db, brokers = pair
    MeetingProvider.meeting = threading.Barrier(1)  # nobody waits: the guard alone decides

    async def three_spares(app) -> list[str]:
        pool = app.config.pool("mois-office")

        async def one():
            try:
                await app.desktops.start_spare(pool, lambda s: spare_still_missing(s, pool))
                return "started"
            except EnoughSpares:
                return "enough"

        return await asyncio.gather(one(), one(), one())

    outcomes = [outcome for each in on_both(brokers, three_spares) for outcome in each]
    assert sorted(outcomes) == ["enough"] * 4 + ["started"] * 2
    with db.transaction() as session:
        assert len(session.scalars(select(Desktop)).all()) == 2


@pytest.mark.parametrize("pair", [{"kind": "floating", "spares": 3, "max_size": 3}], indirect=True)
def test_two_pool_managers_fill_the_spares_without_overshooting(pair):
    db, brokers = pair
    MeetingProvider.meeting = threading.Barrier(1)
    on_both(brokers, lambda app: app.pool_manager.reconcile_once())
    with db.transaction() as session:
        spares = session.scalars(select(Desktop).where(Desktop.assigned_user.is_(None))).all()
    assert len(spares) == 3
