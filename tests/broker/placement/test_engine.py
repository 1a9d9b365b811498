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
    assert decision.reason == "all 2 hosts are full (a, b)"


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


def zoned(name, zone, desktops=0, max_desktops=2):
    return HostCandidate(name, "up", max_desktops, desktops, 0, labels={"zone": zone})


def configured_engine(**settings):
    from broker.placement.config import PlacementSettings

    return PlacementEngine.from_settings(PlacementSettings(**settings), rng=random.Random(1))


def test_no_capacity_names_the_zone_and_what_else_was_dropped():
    hosts = [zoned(f"b{i}", "business", desktops=2) for i in range(3)] + [zoned("i1", "internet")]
    request = PlacementRequest(pool="mois-office", zone="business")
    decision = configured_engine().select(hosts, request)
    assert decision.host is None
    assert decision.reason == (
        "all 3 hosts in zone business are full (b0, b1, b2); "
        "also 1 host outside the pool's zone, site or labels"
    )


def test_draining_host_gets_nothing_new():
    hosts = [
        HostCandidate("drain", "up", 10, 0, 0, admin_state="draining"),
        HostCandidate("busy", "up", 10, 9, 0),
    ]
    assert configured_engine().select(hosts, REQUEST).host == "busy"


def test_explanation_lists_filters_and_top_weights():
    hosts = [HostCandidate(f"h{i}", "up", 10, i, 0) for i in range(5)] + [
        HostCandidate("x", "down", 10, 0, 0)
    ]
    body = configured_engine(best_of=2).explain(hosts, REQUEST).as_json()
    assert body["filters"][0] == {
        "filter": "host_state",
        "reason": "down, disabled or draining",
        "kept": 5,
        "dropped": ["x"],
    }
    assert [c["host"] for c in body["top_candidates"]] == ["h0", "h1"]
    assert body["host"] in {"h0", "h1"}


def test_pack_multipliers_fill_the_fullest_host_first():
    hosts = [HostCandidate("empty", "up", 10, 0, 0), HostCandidate("half", "up", 10, 5, 0)]
    engine = configured_engine(weighers={"desktop_count": -1.0}, best_of=1)
    assert engine.select(hosts, REQUEST).host == "half"


def test_decisions_are_counted_by_result_and_reason():
    from prometheus_client import REGISTRY

    def count(result, reason):
        return REGISTRY.get_sample_value("vdi_placements_total", {"result": result, "reason": reason}) or 0

    before = count("no_host", "capacity"), count("placed", "none")
    engine = configured_engine()
    engine.select([host("full", desktops=10)], REQUEST)
    engine.select([host("room")], REQUEST)
    assert (count("no_host", "capacity"), count("placed", "none")) == (before[0] + 1, before[1] + 1)


def test_unknown_filter_or_weigher_is_a_config_error_naming_it():
    from pydantic import ValidationError

    from broker.placement.config import PlacementSettings

    with pytest.raises(ValidationError, match="unknown filter 'ram'"):
        PlacementSettings(filters=["ram"])
    with pytest.raises(ValidationError, match="unknown weigher 'magic'"):
        PlacementSettings(weighers={"magic": 1.0})
