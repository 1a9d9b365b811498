"""Claims against a real SQLite database: the generation guard, the capacity re-check, and
(property-based, with hypothesis) concurrent claims on threads never overcommitting a host."""

import random
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from broker.db.models import Desktop, Host
from broker.placement import PlacementEngine, PlacementRequest
from broker.placement.claim import (
    ClaimLost,
    HostCatalog,
    claim_slot,
    load_host_candidates,
    reserve,
    reserve_many,
    with_desktop,
)
from broker.placement.config import PlacementSettings
from monitoring.metrics import ClaimConflict
from tests.fixtures.placement import add_host, desktop_row, new_database

REQUEST = PlacementRequest(pool="p", vcpus=2, memory_mib=1024)


@pytest.fixture
def database(tmp_path):
    database = new_database(tmp_path / "claims.db")
    yield database
    database.close()


def test_claim_records_the_desktop_with_its_resources(database):
    add_host(database, "a", vcpus=4, memory_mib=4096)
    with database.transaction() as session:
        desktop, after = reserve(session, "a", 0, REQUEST, desktop_row(1))
    assert (desktop.host_name, desktop.vcpus, desktop.memory_mib) == ("a", 2, 1024)
    assert after.generation == 1
    with database.transaction() as session:
        (host,) = load_host_candidates(session, ["a"])
    assert (host.desktops, host.vcpus_used, host.memory_used_mib, host.generation) == (1, 2, 1024, 1)


def conflicts(kind):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("vdi_placement_claim_conflicts_total", {"kind": kind}) or 0


def test_a_stale_generation_loses_and_leaves_nothing(database):
    add_host(database, "a")
    before = conflicts("generation")
    with database.transaction() as session:
        reserve(session, "a", 0, REQUEST, desktop_row(1))
    with pytest.raises(ClaimLost) as lost, database.transaction() as session:
        reserve(session, "a", 0, REQUEST, desktop_row(2))
    assert lost.value.kind is ClaimConflict.GENERATION
    assert conflicts("generation") == before + 1
    with database.transaction() as session:
        assert session.scalars(select(Desktop.domain_name)).all() == ["vdi-p-1"]


def test_capacity_is_rechecked_inside_the_claim(database):
    # 2 CPUs, no overcommit: one 2-vCPU desktop fits, the second must not, even with the right generation.
    add_host(database, "a", vcpus=2, memory_mib=8192)
    before = conflicts("capacity")
    with database.transaction() as session:
        reserve(session, "a", 0, REQUEST, desktop_row(1))
    with pytest.raises(ClaimLost) as lost, database.transaction() as session:
        claim_slot(session, "a", 1, REQUEST)
    assert lost.value.kind is ClaimConflict.CAPACITY
    assert conflicts("capacity") == before + 1
    with database.transaction() as session:
        # The failed claim rolled back: the generation did not move.
        assert session.scalar(select(Host.generation).where(Host.name == "a")) == 1


def candidate(database, name):
    with database.transaction() as session:
        (host,) = load_host_candidates(session, [name])
    return host


def test_a_claim_without_a_generation_takes_a_host_changed_since_if_it_still_fits(database):
    # The placement worker's way: another broker's claim moved the generation, the host still has room.
    add_host(database, "a", vcpus=8, memory_mib=8192)
    engine = PlacementEngine.default()
    with database.transaction() as session:
        reserve(session, "a", 0, REQUEST, desktop_row(1))
    with database.transaction() as session:
        _, after = reserve(session, "a", None, REQUEST, desktop_row(2), engine.refusal)
    assert (after.desktops, after.generation) == (1, 2)
    assert candidate(database, "a").desktops == 2


def test_a_claim_refuses_a_host_the_filters_would_now_drop(database):
    # Moved to the internet zone after the decision: the filters, asked again under the claim's lock, say no.
    add_host(database, "a")
    decided = candidate(database, "a")
    with database.transaction() as session:
        session.get(Host, "a").labels = {"zone": "internet"}
    before = conflicts("changed")
    engine = PlacementEngine.from_settings(PlacementSettings())
    with database.transaction() as session:
        (answer,) = reserve_many(session, [(decided, REQUEST, desktop_row(1))], engine.refusal)
    assert isinstance(answer, ClaimLost) and answer.kind is ClaimConflict.CHANGED
    assert conflicts("changed") == before + 1
    assert candidate(database, "a").desktops == 0


def test_claims_together_lose_only_on_their_own_host(database):
    add_host(database, "a")
    add_host(database, "b", max_desktops=1)
    add_host(database, "c")
    decided = {name: candidate(database, name) for name in ("a", "b", "c")}
    with database.transaction() as session:
        reserve(session, "a", None, REQUEST, desktop_row(0))  # another broker placed on "a" since
    claims = [
        (decided["a"], REQUEST, desktop_row(1)),  # lost: "a" holds more than the decision counted
        (decided["b"], REQUEST, desktop_row(2)),
        # Decided counting the one above (the catalog's own claim in flight): lost as "b" is full.
        (with_desktop(decided["b"], REQUEST, 0), REQUEST, desktop_row(3)),
        (decided["c"], REQUEST, desktop_row(4)),
    ]
    with database.transaction() as session:
        answers = reserve_many(session, claims, PlacementEngine.default().refusal)
    kinds = [answer.kind if isinstance(answer, ClaimLost) else answer[0].host_name for answer in answers]
    assert kinds == [ClaimConflict.GENERATION, "b", ClaimConflict.CAPACITY, "c"]
    with database.transaction() as session:
        placed = dict(session.execute(select(Desktop.domain_name, Desktop.host_name)).all())
    assert placed == {"vdi-p-0": "a", "vdi-p-2": "b", "vdi-p-4": "c"}


HOSTS = st.lists(
    st.tuples(st.integers(0, 4), st.sampled_from([None, 2, 4, 6]), st.sampled_from([None, 2048, 3072])),
    min_size=1,
    max_size=5,
)


def place_from_database(database, engine, request, attempts):
    """The connect flow's way: fresh candidates from the database for every attempt."""
    for _ in range(attempts):
        with database.transaction() as session:
            hosts = load_host_candidates(session)
        decision = engine.select(hosts, request)
        if decision.host is None:
            return
        generation = next(h.generation for h in hosts if h.name == decision.host)
        try:
            with database.transaction() as session:
                reserve(session, decision.host, generation, request, desktop_row(random.getrandbits(48)))
            return
        except ClaimLost:
            continue


def place_from_catalog(catalog, database, engine, request, attempts):
    """The benchmark's way: a shared in-memory catalog, claims still judged by the database."""
    for _ in range(attempts):
        _decision, chosen = catalog.decide(engine, request)
        if chosen is None:
            return
        try:
            with database.transaction() as session:
                _, after = reserve(
                    session, chosen.name, chosen.generation, request, desktop_row(random.getrandbits(48))
                )
        except ClaimLost:
            catalog.refresh_host(chosen.name)
            continue
        finally:
            catalog.claim_done(chosen.name)
        catalog.record_claim(after, request)
        return


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hosts=HOSTS,
    threads=st.integers(2, 8),
    per_thread=st.integers(1, 6),
    pack=st.booleans(),
    use_catalog=st.booleans(),
)
def test_concurrent_claims_never_overcommit_a_host(
    tmp_path_factory, hosts, threads, per_thread, pack, use_catalog
):
    database = new_database(tmp_path_factory.mktemp("prop") / "claims.db")
    try:
        for index, (max_desktops, vcpus, memory_mib) in enumerate(hosts):
            add_host(database, f"h{index}", max_desktops, vcpus, memory_mib, cpu_ratio=1.5, ram_ratio=1.0)
        weighers = {"desktop_count": -1.0} if pack else {"desktop_count": 1.0}
        engine = PlacementEngine.from_settings(PlacementSettings(weighers=weighers, best_of=1))
        catalog = HostCatalog(database)

        def worker():
            for _ in range(per_thread):
                if use_catalog:
                    place_from_catalog(catalog, database, engine, REQUEST, attempts=3)
                else:
                    place_from_database(database, engine, REQUEST, attempts=3)

        workers = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        with database.transaction() as session:
            final = load_host_candidates(session)
        for host in final:
            assert host.desktops <= host.max_desktops, host
            assert host.vcpu_limit is None or host.vcpus_used <= host.vcpu_limit, host
            assert host.memory_limit_mib is None or host.memory_used_mib <= host.memory_limit_mib, host
    finally:
        database.close()
