"""The placement worker against a real SQLite database: it places from host figures it keeps, so it
must notice what changed behind its back — a host taken out, capacity freed — and never overcommit."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from broker.db import Database
from broker.db.models import Desktop, Host
from broker.placement import PlacementEngine, PlacementRequest
from broker.placement.claim import load_host_candidates
from broker.placement.filters.capacity import DesktopCapacityFilter
from broker.placement.filters.host_state import HostStateFilter
from broker.placement.weighers.desktop_count import DesktopCountWeigher
from broker.placement.worker import ClaimsKeptFailing, NoHostFits, PlacementWorker
from tests.fixtures.placement import add_host, desktop_row, new_database

REQUEST = PlacementRequest(pool="p", vcpus=1, memory_mib=512)


@pytest.fixture
def database(tmp_path):
    database = new_database(tmp_path / "worker.db")
    yield database
    database.close()


@pytest.fixture
def worker(database):
    # A long catalog life: only the worker's own rules may make it read the hosts again. The best
    # host every time (no random pick among the best few), so each test knows where desktops go.
    default = PlacementEngine.default()
    engine = PlacementEngine(default.filters, default.weighers, best_of=1)
    worker = PlacementWorker(database, engine, attempts=3, max_age_s=3600)
    yield worker
    worker.close()


def place(worker, number):
    return worker.place(REQUEST, lambda: desktop_row(number))


def host_of(database, domain):
    with database.transaction() as session:
        return session.scalar(select(Desktop.host_name).where(Desktop.domain_name == domain))


def test_a_host_disabled_after_the_catalog_was_read_gets_no_desktop(database, worker):
    add_host(database, "a", max_desktops=10)
    add_host(database, "b", max_desktops=1)
    place(worker, 1)  # the catalog now holds both hosts; "a" has more room and is preferred
    with database.transaction() as session:
        session.execute(update(Host).where(Host.name == "a").values(admin_state="draining"))

    placed = place(worker, 2)

    assert placed.desktop.host_name == "b"
    assert placed.attempts == 2  # the claim on "a" was refused, the host read again, then "b"


def test_capacity_freed_behind_the_catalog_is_found_before_saying_no(database, worker):
    add_host(database, "a", max_desktops=1)
    place(worker, 1)
    with database.transaction() as session:
        session.execute(delete(Desktop))  # another broker logged that desktop off

    assert place(worker, 2).desktop.host_name == "a"


def test_no_host_says_why(database, worker):
    add_host(database, "a", max_desktops=1)
    place(worker, 1)

    with pytest.raises(NoHostFits) as refused:
        place(worker, 2)

    assert refused.value.decision.reason.startswith("the only host, a, is full")


def test_requests_from_many_threads_never_overcommit(database, worker):
    for name in ("a", "b", "c"):
        add_host(database, name, max_desktops=5)

    def attempt(number):
        try:
            return worker.submit(REQUEST, lambda: desktop_row(number)).result().desktop.host_name
        except NoHostFits:
            return None

    with ThreadPoolExecutor(max_workers=20) as pool:
        hosts = list(pool.map(attempt, range(40)))

    assert sum(1 for host in hosts if host) == 15
    with database.transaction() as session:
        final = {host.name: host.desktops for host in load_host_candidates(session)}
    assert final == {"a": 5, "b": 5, "c": 5}


def two_brokers(database):
    """Two brokers' placement: each its own database engine, catalog, engine and worker thread."""
    workers = []
    for _ in range(2):
        engine = PlacementEngine([HostStateFilter(), DesktopCapacityFilter()], [DesktopCountWeigher(1.0)], 1)
        workers.append(PlacementWorker(Database(database.settings), engine, attempts=8, max_age_s=3600))
    return workers


def place_on_both(workers, count):
    """`count` requests from 16 threads, alternately to each broker; the hosts they landed on (None: no room)."""

    def attempt(number):
        try:
            submitted = workers[number % 2].submit(REQUEST, lambda: desktop_row(number))
            return submitted.result().desktop.host_name
        except (NoHostFits, ClaimsKeptFailing):
            return None

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(attempt, range(count)))
    finally:
        for placer in workers:
            placer.close()
            placer.database.close()


def desktops_per_host(database):
    with database.transaction() as session:
        return {host.name: host.desktops for host in load_host_candidates(session)}


def test_two_brokers_placing_at_once_never_overcommit(database):
    for name in ("a", "b", "c", "d"):
        add_host(database, name, max_desktops=5)

    hosts = place_on_both(two_brokers(database), 30)

    assert sum(1 for host in hosts if host) == 20
    assert desktops_per_host(database) == {"a": 5, "b": 5, "c": 5, "d": 5}


def test_two_brokers_placing_at_once_keep_the_spread_even(database):
    # A claim on a host the other broker placed on since the decision is lost and decided again, so no
    # host ever gets a desktop while another holds fewer: equal hosts end within one desktop of each other.
    for index in range(8):
        add_host(database, f"h{index}", max_desktops=20)

    hosts = place_on_both(two_brokers(database), 60)

    counts = desktops_per_host(database)
    assert sum(counts.values()) == sum(1 for host in hosts if host) > 0
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_a_desktop_refused_in_a_batch_fails_only_its_own_request(database, worker):
    add_host(database, "a", max_desktops=10)
    place(worker, 1)
    release = threading.Event()
    # The worker's thread waits in this request's guard while the next two queue up behind it, so they
    # are claimed together; one of them repeats the first desktop's name, which the database refuses.
    held = worker.submit(REQUEST, lambda: desktop_row(2), guard=lambda _db: release.wait(timeout=60))
    duplicate = worker.submit(REQUEST, lambda: desktop_row(1))
    fresh = worker.submit(REQUEST, lambda: desktop_row(3))
    release.set()

    assert held.result().desktop.host_name == "a"
    with pytest.raises(IntegrityError):
        duplicate.result()
    assert fresh.result().desktop.host_name == "a"
    assert desktops_per_host(database) == {"a": 3}


def test_a_placed_desktop_comes_back_as_stored_with_every_column_and_its_defaults(database, worker):
    # The claim inserts the desktops with Core (claim.insert_desktops): each comes back as the ORM's flush
    # and commit left it, its id and defaults set, usable after its transaction ended.
    add_host(database, "a", max_desktops=10)
    bare = Desktop(pool_name="p", domain_name="vdi-p-bare", image="demo:test")  # state, created_at: defaults
    sealed = Desktop(
        pool_name="p", domain_name="vdi-p-sealed", image="demo:test", vnc_password_sealed="s", state="running"
    )
    futures = [worker.submit(REQUEST, lambda d=d: d) for d in (bare, sealed)]
    placed = [future.result(timeout=30).desktop for future in futures]

    with database.transaction() as session:
        stored = {d.domain_name: d for d in session.scalars(select(Desktop))}
    for desktop in placed:
        row = stored[desktop.domain_name]
        assert desktop.id == row.id
        columns = (
            "state",
            "host_name",
            "vcpus",
            "memory_mib",
            "created_at",
            "vnc_password_sealed",
            "ready_at",
        )
        assert {c: getattr(desktop, c) for c in columns} == {c: getattr(row, c) for c in columns}
    assert (placed[0].state, placed[0].created_at is not None, placed[0].host_name) == (
        "provisioning",
        True,
        "a",
    )
    assert placed[1].vnc_password_sealed == "s" and placed[1].vcpus == REQUEST.vcpus
