"""Placement chooses a host that can take the desktop and can say why."""

import random

import pytest
from sqlalchemy import select

from broker.db import Database
from broker.db.config import DatabaseSettings
from broker.db.migrate import upgrade
from broker.db.models import Host
from broker.placement import HostCandidate, PlacementEngine, PlacementRequest, claim_host
from broker.placement.filters.capacity import DesktopCapacityFilter
from broker.placement.filters.host_state import HostStateFilter
from broker.placement.weighers.free_slots import FreeSlotsWeigher

REQUEST = PlacementRequest(pool="mois-office")


def host(name, desktops=0, max_desktops=10, state="up", generation=0):
    return HostCandidate(name, state, max_desktops, desktops, generation)


def test_picks_the_emptiest_host_when_spreading():
    engine = PlacementEngine.default()
    engine.best_of = 1
    decision = engine.select([host("a", 5), host("b", 1), host("c", 9)], REQUEST)
    assert decision.host == "b"
    assert decision.weights["b"] > decision.weights["a"] > decision.weights["c"]


def test_negative_multiplier_packs():
    engine = PlacementEngine(
        [HostStateFilter(), DesktopCapacityFilter()], [FreeSlotsWeigher(-1.0)], best_of=1
    )
    assert engine.select([host("a", 5), host("b", 1), host("c", 9)], REQUEST).host == "c"


def test_full_and_down_hosts_are_dropped_and_named():
    decision = PlacementEngine.default().select(
        [host("a", 10), host("b", state="down"), host("c", 3)], REQUEST
    )
    assert decision.host == "c"
    assert any("host_state: kept 2 of 3" in line and "b" in line for line in decision.explanation)
    assert any("capacity: kept 1 of 2" in line and "a" in line for line in decision.explanation)


def test_no_host_reason_says_why():
    decision = PlacementEngine.default().select([host("a", 10), host("b", 10)], REQUEST)
    assert decision.host is None
    assert "of 2 host(s)" in decision.reason and "full" in decision.reason


def test_no_hosts_configured():
    assert "no hypervisor hosts" in PlacementEngine.default().select([], REQUEST).reason


def test_random_pick_stays_among_the_best_few():
    engine = PlacementEngine.default()
    engine._rng = random.Random(7)
    hosts = [host(f"h{i}", desktops=i) for i in range(10)]
    picks = {engine.select(hosts, REQUEST).host for _ in range(50)}
    assert picks <= {"h0", "h1", "h2"}
    assert len(picks) > 1


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path}/placement.db"
    upgrade(url)
    database = Database(DatabaseSettings(url=url))
    with database.transaction() as session:
        session.add(Host(name="a", uri="test:///default", state="up", max_desktops=2, generation=0))
    yield database
    database.close()


def test_claim_with_a_stale_generation_loses(db):
    with db.transaction() as session:
        assert claim_host(session, "a", 0)
    with db.transaction() as session:
        assert not claim_host(session, "a", 0)
        assert session.scalar(select(Host.generation).where(Host.name == "a")) == 1
