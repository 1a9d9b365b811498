"""Placement at scale: `vdi bench placement --hosts 1000 --concurrency 50 [--requests N] [--policy …]`.

A real SQLite file (or, with --postgresql, the lab's PostgreSQL) migrated by Alembic holds the hosts
and the desktops; the real engine decides (filters and weighers from PlacementSettings), and the real
claim code (the host locked and judged again as it now is, capacity re-checked, one transaction per
batch of queued requests) records each desktop. `concurrency` request threads hand their requests to
one PlacementWorker, as the broker's connect flow does, and wait; --brokers N runs N such brokers as
processes at once.
No driver is involved: placement never calls one, so no stand-in (libvirt's test:///) is needed.

Figures: decisions per second; decision latency: the engine's filtering and weighing as wall
time (decision_ms), the worker thread's CPU time for the whole decision (decision_cpu_ms) and its
wall time with the catalog (decision_with_queue_ms); request latency (the queue for the worker +
decision + claim + retries), CPU per placement of the brokers and of the PostgreSQL server, claim
conflicts and retries, hosts over capacity at the end (must be 0, read back from the database), and
the balance of the hosts' utilisation (max/mean and coefficient of variation) for spread and pack.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from prometheus_client import REGISTRY

from broker.db import Database
from broker.db.config import DatabaseSettings
from broker.db.migrate import upgrade
from broker.db.models import Desktop, Host, Pool
from broker.placement import PlacementEngine, PlacementRequest
from broker.placement.candidates import HostCandidate
from broker.placement.claim import load_host_candidates
from broker.placement.config import PlacementSettings
from broker.placement.worker import ClaimsKeptFailing, DecisionTiming, NoHostFits, PlacementWorker
from monitoring.metrics import ClaimConflict
from vdi.bench import tree_cpu_s

POOL = "bench"
REQUEST = PlacementRequest(pool=POOL, vcpus=2, memory_mib=4096, image="demo:bench")
# (physical CPUs, memory MiB, max desktops): a mix of host sizes, so spreading has to weigh.
HOST_SIZES = ((16, 65536, 40), (32, 131072, 60), (64, 262144, 100))
# The worker is the only writer: one database connection is enough.
DB_WORKERS = 1
CONFLICT_METRIC = "vdi_placement_claim_conflicts_total"
PACK_WEIGHERS = {"free_ram": -1.0, "desktop_count": -1.0, "cpu_load": 0.5, "image_cached": 0.5}


@dataclass
class Tally:
    decision_s: list[float] = field(default_factory=list)
    decision_cpu_s: list[float] = field(default_factory=list)  # this thread's CPU time only
    decide_s: list[float] = field(default_factory=list)  # with the wait for the catalog's lock
    request_s: list[float] = field(default_factory=list)
    placed: int = 0
    no_host: int = 0
    gave_up: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def conflict_counts() -> dict[str, float]:
    """Lost claims by kind so far in this process, from the broker's own metric."""
    return {
        kind.value: REGISTRY.get_sample_value(CONFLICT_METRIC, {"kind": kind.value}) or 0.0
        for kind in ClaimConflict
    }


def settings_for(policy: str, best_of: int | None = None) -> PlacementSettings:
    # Several brokers deciding on the same catalog pick the same few best hosts: a larger best_of
    # spreads their picks and so their claims (docs/ha.md has the figures).
    more = {} if best_of is None else {"best_of": best_of}
    if policy == "pack":
        return PlacementSettings(weighers=PACK_WEIGHERS, **more)
    return PlacementSettings(**more)


def create_hosts(db: Database, count: int) -> None:
    with db.transaction() as session:
        session.add(Pool(name=POOL, display_name=POOL, image="demo", groups=[], memory_mib=4096, vcpus=2))
        for index in range(count):
            vcpus, memory_mib, max_desktops = HOST_SIZES[index % len(HOST_SIZES)]
            session.add(
                Host(
                    name=f"hv{index:04d}",
                    uri="test:///default",
                    state="up",
                    admin_state="enabled",
                    max_desktops=max_desktops,
                    generation=0,
                    labels={"site": f"site{index % 10}", "zone": "business"},
                    vcpus=vcpus,
                    memory_mib=memory_mib,
                    cpu_ratio=4.0,
                    ram_ratio=1.0,
                    images=["demo:bench"] if index % 2 else [],
                )
            )


class Runner:
    """`concurrency` request threads hand their requests to one PlacementWorker and wait for them.

    That is the broker's own arrangement: the connect flow awaits `PlacementWorker.place_async`,
    whose thread decides and claims in turn (broker/placement/worker.py).
    """

    def __init__(
        self, db: Database, engine: PlacementEngine, settings: PlacementSettings, policy: str, broker: int = 0
    ):
        self.policy = policy
        self.broker = broker
        self.placement = PlacementWorker(db, engine, settings.claim_attempts, max_age_s=30.0)
        self.tally = Tally()
        self._next = 0
        self._counter = threading.Lock()

    def _take(self, total: int) -> int | None:
        with self._counter:
            if self._next >= total:
                return None
            self._next += 1
            return self._next

    def worker(self, total: int) -> None:
        while (number := self._take(total)) is not None:
            started = time.perf_counter()
            self.place(number)
            elapsed = time.perf_counter() - started
            with self.tally.lock:
                self.tally.request_s.append(elapsed)

    def place(self, number: int) -> None:
        def new_desktop() -> Desktop:
            desktop = Desktop(
                pool_name=POOL, domain_name=f"bench-{self.policy}-{self.broker}-{number}", image="demo:bench"
            )
            desktop.state = "running"
            return desktop

        try:
            placed = self.placement.submit(REQUEST, new_desktop).result()
        except NoHostFits as refused:
            self.record(refused.timings, conflicts=0)
            with self.tally.lock:
                self.tally.no_host += 1
            return
        except ClaimsKeptFailing:
            with self.tally.lock:
                self.tally.gave_up += 1
            return
        self.record(placed.timings, conflicts=placed.attempts - 1)
        with self.tally.lock:
            self.tally.placed += 1

    def record(self, timings: list[DecisionTiming], conflicts: int) -> None:
        with self.tally.lock:
            for timing in timings:
                self.tally.decision_s.append(timing.engine_s)
                self.tally.decision_cpu_s.append(timing.cpu_s)
                self.tally.decide_s.append(timing.wall_s)
            self.tally.retries += conflicts

    def run(self, total: int, concurrency: int) -> float:
        self.placement.catalog.refresh()
        threads = [
            threading.Thread(target=self.worker, args=(total,), name=f"bench-{i}") for i in range(concurrency)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        self.placement.close()
        return elapsed


def utilisation(host: HostCandidate) -> float:
    shares = [host.desktops / host.max_desktops if host.max_desktops else 0.0]
    if host.vcpu_limit:
        shares.append(host.vcpus_used / host.vcpu_limit)
    if host.memory_limit_mib:
        shares.append(host.memory_used_mib / host.memory_limit_mib)
    return max(shares)


def over_capacity(host: HostCandidate) -> bool:
    return host.desktops > host.max_desktops or (
        (host.vcpu_limit is not None and host.vcpus_used > host.vcpu_limit)
        or (host.memory_limit_mib is not None and host.memory_used_mib > host.memory_limit_mib)
    )


def balance(hosts: list[HostCandidate]) -> dict:
    loads = [utilisation(host) for host in hosts]
    mean = statistics.fmean(loads) if loads else 0.0
    return {
        "max_over_mean": round(max(loads) / mean, 3) if mean else None,
        "coefficient_of_variation": round(statistics.pstdev(loads) / mean, 3) if mean else None,
        "hosts_used": sum(1 for host in hosts if host.desktops),
        "mean_utilisation": round(mean, 4),
    }


def percentile_ms(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)


def run_broker(
    url: str, policy: str, requests: int, concurrency: int, seed: int, broker: int, best_of: int | None = None
) -> dict:
    """One broker's share: its own database engine and PlacementWorker; raw timings and counts back."""
    import random

    db = Database(DatabaseSettings(url=url, pool_size=DB_WORKERS))
    try:
        settings = settings_for(policy, best_of)
        engine = PlacementEngine.from_settings(settings, rng=random.Random(seed + broker))
        runner = Runner(db, engine, settings, policy, broker)
        conflicts_before = conflict_counts()
        cpu_started = time.process_time()
        wall_s = runner.run(requests, concurrency)
        cpu_s = time.process_time() - cpu_started
        conflicts = {
            kind: int(count - conflicts_before[kind])
            for kind, count in conflict_counts().items()
            if count > conflicts_before[kind]
        }
    finally:
        db.close()
    tally = runner.tally
    return {
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "conflicts": conflicts,
        **{name: getattr(tally, name) for name in ("placed", "no_host", "gave_up", "retries")},
        **{name: getattr(tally, name) for name in ("decision_s", "decision_cpu_s", "decide_s", "request_s")},
    }


def _broker_process(queue, start, args: tuple) -> None:
    start.wait()
    queue.put(run_broker(*args))


def run_brokers(
    url: str,
    policy: str,
    requests: int,
    concurrency: int,
    seed: int,
    brokers: int,
    best_of: int | None = None,
) -> list[dict]:
    """`brokers` processes (each a broker's placement: its own GIL, engine and connections) at once."""
    if brokers == 1:
        return [run_broker(url, policy, requests, concurrency, seed, 0, best_of)]
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue, start = context.Queue(), context.Event()
    share, threads = requests // brokers, max(concurrency // brokers, 1)
    processes = [
        context.Process(
            target=_broker_process, args=(queue, start, (url, policy, share, threads, seed, index, best_of))
        )
        for index in range(brokers)
    ]
    for process in processes:
        process.start()
    start.set()
    parts = [queue.get(timeout=3600) for _ in processes]
    for process in processes:
        process.join()
    return parts


def merge(parts: list[dict]) -> tuple[Tally, float, dict[str, int]]:
    tally, conflicts = Tally(), {}
    for part in parts:
        for name in ("placed", "no_host", "gave_up", "retries"):
            setattr(tally, name, getattr(tally, name) + part[name])
        for name in ("decision_s", "decision_cpu_s", "decide_s", "request_s"):
            getattr(tally, name).extend(part[name])
        for kind, count in part["conflicts"].items():
            conflicts[kind] = conflicts.get(kind, 0) + count
    return tally, max(part["wall_s"] for part in parts), conflicts


def run_policy(
    policy: str,
    hosts: int,
    requests: int,
    concurrency: int,
    url: str,
    seed: int,
    brokers: int = 1,
    best_of: int | None = None,
    server_cpu_s=None,
) -> dict:
    upgrade(url)
    db = Database(DatabaseSettings(url=url, pool_size=DB_WORKERS))
    try:
        create_hosts(db, hosts)
    finally:
        db.close()  # no connection of ours crosses the fork into the brokers
    server_started = server_cpu_s() if server_cpu_s else 0.0
    parts = run_brokers(url, policy, requests, concurrency, seed, brokers, best_of)
    tally, wall_s, conflicts = merge(parts)
    broker_cpu_s = sum(part["cpu_s"] for part in parts)
    # The brokers' server processes have exited with their connections: their CPU is the server's now.
    database_cpu_s = server_cpu_s() - server_started if server_cpu_s else None
    db = Database(DatabaseSettings(url=url, pool_size=DB_WORKERS))
    try:
        with db.transaction() as session:
            final = load_host_candidates(session)
    finally:
        db.close()
    per_placement = 1000 / tally.placed if tally.placed else 0.0
    return {
        "policy": policy,
        "brokers": brokers,
        "best_of": settings_for(policy, best_of).best_of,
        "database": url.split(":", 1)[0].split("+", 1)[0],
        "placed": tally.placed,
        "no_host": tally.no_host,
        "gave_up_after_retries": tally.gave_up,
        "wall_s": round(wall_s, 3),
        "decisions": len(tally.decision_s),
        "decisions_per_s": round(len(tally.decision_s) / wall_s, 1) if wall_s else None,
        "placements_per_s": round(tally.placed / wall_s, 1) if wall_s else None,
        "decision_ms": {
            "p50": percentile_ms(tally.decision_s, 0.5),
            "p99": percentile_ms(tally.decision_s, 0.99),
        },
        "decision_cpu_ms": {
            "p50": percentile_ms(tally.decision_cpu_s, 0.5),
            "p99": percentile_ms(tally.decision_cpu_s, 0.99),
        },
        "decision_with_queue_ms": {
            "p50": percentile_ms(tally.decide_s, 0.5),
            "p99": percentile_ms(tally.decide_s, 0.99),
        },
        "request_ms": {
            "p50": percentile_ms(tally.request_s, 0.5),
            "p99": percentile_ms(tally.request_s, 0.99),
        },
        # CPU per desktop placed: the broker processes (request threads included), and the PostgreSQL
        # server (its backends for the brokers' connections; SQLite works inside the brokers).
        "cpu_ms_per_placement": {
            "brokers": round(broker_cpu_s * per_placement, 3),
            "database": None if database_cpu_s is None else round(database_cpu_s * per_placement, 3),
        },
        "claim_conflicts": dict(sorted(conflicts.items())),
        "retries": tally.retries,
        "hosts_over_capacity": sum(1 for host in final if over_capacity(host)),
        "balance": balance(final),
    }


def main(args) -> int:
    # One INFO line per decision would measure the logger, not placement.
    logging.getLogger("broker.placement").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    policies = ["spread", "pack"] if args.policy == "both" else [args.policy]
    results = []
    with tempfile.TemporaryDirectory(prefix="vdi-bench-") as scratch, _postgres(args, scratch) as postgres:
        for policy in policies:
            if postgres is not None:
                url = postgres.create_database(f"bench_{policy}")
            else:
                path = Path(args.database) if args.database else Path(scratch) / f"{policy}.db"
                if args.database and len(policies) > 1:
                    path = path.with_name(f"{path.stem}-{policy}{path.suffix}")
                url = f"sqlite:///{path}"
            results.append(
                run_policy(
                    policy,
                    args.hosts,
                    args.requests,
                    args.concurrency,
                    url,
                    args.seed,
                    args.brokers,
                    args.best_of,
                    None if postgres is None else partial(postgres_cpu_s, postgres),
                )
            )
    report = {
        "benchmark": "placement",
        "hosts": args.hosts,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "request": {"vcpus": REQUEST.vcpus, "memory_mib": REQUEST.memory_mib},
        "results": results,
    }
    if not args.json:
        print(f"placement benchmark: {args.hosts} hosts, {args.concurrency} concurrent", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0 if all(result["hosts_over_capacity"] == 0 for result in results) else 1


def postgres_cpu_s(server) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster, its live processes (WAL writer,
    checkpointer…) and the backends it has reaped."""
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    return tree_cpu_s(pid, children)


@contextlib.contextmanager
def _postgres(args, scratch: str):
    """With --postgresql: the lab's PostgreSQL in the scratch directory, stopped at the end."""
    if not args.postgresql:
        yield None
        return
    from vdi.lab.ha import free_port
    from vdi.lab.postgres import Postgres

    state = Path(scratch) / "postgres"
    Path(scratch).chmod(0o755)  # the postgres account walks to its data directory
    server = Postgres(state, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
