"""The database side of placement: host candidates as the engine sees them, and the claim.

A claim is one transaction: bump the host's generation only if it is still the one the decision
read (a stale writer loses), then count what the host holds and check the desktop still fits,
then insert the desktop. A lost claim raises ClaimLost, so the transaction rolls back and the
caller places again with fresh figures.

HostCatalog keeps the candidates in memory for callers that place at a high rate (the placement
benchmark), so a decision does not read a thousand host rows: a claim updates the host it took,
a lost claim re-reads that one host, and the whole list is re-read after `max_age_s`, which picks
up hosts freed or changed by other brokers.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from broker.db.models import Desktop, Host
from broker.placement.candidates import HostCandidate, PlacementRequest
from broker.placement.decision import PlacementDecision
from broker.placement.table import HostTable
from hypervisor.registry import provider_class
from monitoring.metrics import PLACEMENT_CLAIM_CONFLICTS, ClaimConflict

# Desktops in these states occupy a slot on their host; "error" and "deleted" rows are history.
# A kept desktop that is powered off (broker/power.py) still holds its slot: its disk is on that host
# and it starts there again when its user connects.
HOLDING_STATES = ("provisioning", "running", "starting", "stopping", "stopped", "suspending", "suspended")


# A lost claim reads every host again if the catalog is older than this (HostCatalog.refresh_after_loss).
LOSS_REFRESH_S = 1.0


class ClaimLost(Exception):
    """Another request changed the host since the decision, or the host filled up; place again."""

    def __init__(self, host: str, kind: ClaimConflict) -> None:
        super().__init__(f"claim on host {host} lost ({kind.value})")
        self.host = host
        self.kind = kind


@dataclasses.dataclass
class HostUsage:
    desktops: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    pools: dict[str, int] = dataclasses.field(default_factory=dict)


def host_usage(db: Session, host_names: Iterable[str] | None = None) -> dict[str, HostUsage]:
    """What each host's holding desktops use, per host and per pool, in one grouped query."""
    query = (
        select(
            Desktop.host_name,
            Desktop.pool_name,
            func.count(),
            func.coalesce(func.sum(Desktop.vcpus), 0),
            func.coalesce(func.sum(Desktop.memory_mib), 0),
        )
        .where(Desktop.state.in_(HOLDING_STATES), Desktop.host_name.is_not(None))
        .group_by(Desktop.host_name, Desktop.pool_name)
    )
    if host_names is not None:
        query = query.where(Desktop.host_name.in_(list(host_names)))
    usage: dict[str, HostUsage] = defaultdict(HostUsage)
    for host, pool, count, vcpus, memory in db.execute(query):
        entry = usage[host]
        entry.desktops += count
        entry.vcpus += vcpus
        entry.memory_mib += memory
        entry.pools[pool] = count
    return usage


def candidate_of(host: Host, usage: HostUsage) -> HostCandidate:
    return HostCandidate(
        name=host.name,
        state=host.state,
        max_desktops=host.max_desktops,
        desktops=usage.desktops,
        generation=host.generation,
        admin_state=host.admin_state,
        labels=dict(host.labels or {}),
        vcpus=host.vcpus,
        memory_mib=host.memory_mib,
        cpu_ratio=host.cpu_ratio,
        ram_ratio=host.ram_ratio,
        vcpus_used=usage.vcpus,
        memory_used_mib=usage.memory_mib,
        cpu_load=host.cpu_load,
        images=frozenset(host.images or ()),
        pool_desktops=usage.pools,
        runs_sessions=runs_sessions(host.provider),
    )


def runs_sessions(provider: str) -> bool:
    """Whether a host of this provider starts user sessions (no images) rather than VMs."""
    try:
        return bool(provider_class(provider).runs_sessions)
    except ValueError:  # a provider this broker does not know: it can start nothing, VMs or sessions
        return False


def load_host_candidates(db: Session, host_names: Iterable[str] | None = None) -> list[HostCandidate]:
    """Candidates for the named hosts (all hosts when None), sorted by name."""
    names = None if host_names is None else list(host_names)
    query = select(Host).order_by(Host.name)
    if names is not None:
        query = query.where(Host.name.in_(names))
    usage = host_usage(db, names)
    return [candidate_of(host, usage.get(host.name, HostUsage())) for host in db.scalars(query)]


def claim_host(session: Session, host_name: str, generation: int) -> bool:
    """Take a slot on the host if nobody else has since we read it; False means retry placement.

    The host must also still be up and enabled: a decision taken on figures read a moment ago (a
    catalog) must not land on a host the monitor or an administrator has taken out since.
    """
    # The row is locked through a SKIP LOCKED sub-select (PostgreSQL; SQLite has one writer and ignores
    # it): a host another broker's transaction is claiming now is lost at once, as it would be anyway
    # once that one commits a new generation, instead of waited for.
    unclaimed = (
        select(Host.name)
        .where(
            Host.name == host_name,
            Host.generation == generation,
            Host.state == "up",
            Host.admin_state == "enabled",
        )
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    result = session.execute(
        update(Host)
        .where(Host.name == unclaimed, Host.generation == generation)
        .values(generation=Host.generation + 1)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def still_fits(candidate: HostCandidate, request: PlacementRequest) -> bool:
    if not candidate.fits(request.vcpus, request.memory_mib):
        return False
    per_pool = candidate.pool_desktops.get(request.pool, 0)
    return request.max_per_host is None or per_pool < request.max_per_host


def claim_slot(db: Session, host_name: str, generation: int, request: PlacementRequest) -> HostCandidate:
    """Claim the host and re-check it still fits, in the caller's transaction; ClaimLost if not.

    Returns the host as it is after the claim (generation bumped, the new desktop not yet counted).
    """
    if not claim_host(db, host_name, generation):
        PLACEMENT_CLAIM_CONFLICTS.labels(kind=ClaimConflict.GENERATION.value).inc()
        raise ClaimLost(host_name, ClaimConflict.GENERATION)
    # The UPDATE above holds the host's row (and SQLite's write lock) until commit, so these
    # figures cannot change under us before our desktop is inserted.
    (current,) = load_host_candidates(db, [host_name])
    if not still_fits(current, request):
        PLACEMENT_CLAIM_CONFLICTS.labels(kind=ClaimConflict.CAPACITY.value).inc()
        raise ClaimLost(host_name, ClaimConflict.CAPACITY)
    return current


def reserve(
    db: Session, host_name: str, generation: int, request: PlacementRequest, desktop: Desktop
) -> tuple[Desktop, HostCandidate]:
    """Claim a slot and record the desktop with the resources it holds, in the caller's transaction.

    Returns the desktop and the host as the claim found it (for HostCatalog.record_claim).
    """
    host = claim_slot(db, host_name, generation, request)
    desktop.host_name = host_name
    desktop.vcpus, desktop.memory_mib = request.vcpus, request.memory_mib
    db.add(desktop)
    db.flush()
    return desktop, host


def with_desktop(candidate: HostCandidate, request: PlacementRequest, generation: int) -> HostCandidate:
    """The candidate after one more desktop of the request's size was claimed on it."""
    pools = dict(candidate.pool_desktops)
    pools[request.pool] = pools.get(request.pool, 0) + 1
    return dataclasses.replace(
        candidate,
        desktops=candidate.desktops + 1,
        vcpus_used=candidate.vcpus_used + request.vcpus,
        memory_used_mib=candidate.memory_used_mib + request.memory_mib,
        generation=generation,
        pool_desktops=pools,
    )


class HostCatalog:
    """Placement candidates kept in memory between decisions (see the module docstring).

    `decide` runs the engine and takes the chosen host's resources in memory under one lock, so
    concurrent requests in this process see each other's picks before the claims commit and
    spread instead of racing for the same host; the claim in the database stays the arbiter.
    """

    def __init__(
        self,
        database,
        host_names: Callable[[], Iterable[str]] | Iterable[str] | None = None,
        max_age_s: float = 5.0,
    ) -> None:
        self.database = database
        # A callable is asked at every refresh (the broker's hosts change while it runs).
        self.host_names = host_names if callable(host_names) or host_names is None else sorted(host_names)
        self.max_age_s = max_age_s
        self._lock = threading.RLock()
        self._table = HostTable([])
        self._pending: dict[str, int] = {}
        self._loaded_at = float("-inf")

    def candidates(self) -> list[HostCandidate]:
        with self._lock:
            if time.monotonic() - self._loaded_at > self.max_age_s:
                self.refresh()
            return list(self._table.hosts)

    def decide(self, engine, request: PlacementRequest) -> tuple[PlacementDecision, HostCandidate | None]:
        """The engine's decision and the chosen host as read (its generation is what to claim with)."""
        with self._lock:
            if time.monotonic() - self._loaded_at > self.max_age_s:
                self.refresh()
            table = self._table
            decision = engine.select(table, request, self._pending_rows())
            if decision.host is None and self._pending:
                decision = engine.select(table, request)  # only busy hosts fit: race for them
            if decision.host is None:
                return decision, None
            chosen = table.hosts[table.index[decision.host]]
            self._put(with_desktop(chosen, request, chosen.generation))
            self._pending[chosen.name] = self._pending.get(chosen.name, 0) + 1
            return decision, chosen

    def _pending_rows(self) -> np.ndarray | None:
        # A host with a claim of ours in flight will change generation, so a second claim on it
        # now would lose (or make ours lose); pick among the others while there are any.
        if not self._pending:
            return None
        busy = np.zeros(len(self._table), dtype=bool)
        index = self._table.index
        busy[[index[name] for name in self._pending if name in index]] = True
        return busy

    def claim_done(self, name: str) -> None:
        """The claim decided by `decide` committed or lost; the host is no longer busy."""
        with self._lock:
            left = self._pending.get(name, 0) - 1
            if left > 0:
                self._pending[name] = left
            else:
                self._pending.pop(name, None)

    def invalidate(self) -> None:
        """Read every host again before the next decision."""
        with self._lock:
            self._loaded_at = float("-inf")

    def _names(self) -> list[str] | None:
        names = self.host_names
        return sorted(names()) if callable(names) else names

    def refresh(self) -> None:
        with self.database.transaction() as db:
            hosts = load_host_candidates(db, self._names())
        table = HostTable(hosts)
        with self._lock:
            self._table = table
            self._loaded_at = time.monotonic()

    def refresh_after_loss(self, name: str) -> None:
        """A claim on `name` was lost: another broker has been claiming since the catalog was read. All
        hosts are read again when the catalog is older than LOSS_REFRESH_S (the other broker's claims
        since then are all traps like this one), else only that host."""
        with self._lock:
            stale = time.monotonic() - self._loaded_at > LOSS_REFRESH_S
        if stale:
            self.refresh()
        else:
            self.refresh_host(name)

    def refresh_host(self, name: str) -> None:
        """Forget what this process assumed about the host (a lost claim) and read it again."""
        with self.database.transaction() as db:
            fresh = load_host_candidates(db, [name])
        with self._lock:
            if fresh:
                self._put(fresh[0])
            elif name in self._table.index:
                self.refresh()  # the host was removed: rebuild the list without it

    def record_claim(self, after_claim: HostCandidate, request: PlacementRequest) -> None:
        """Count our own claim without a read: `after_claim` is what claim_slot returned."""
        # claim_slot read the host after bumping its generation, so that generation is current.
        with self._lock:
            self._put(with_desktop(after_claim, request, after_claim.generation))

    def _put(self, host: HostCandidate) -> None:
        try:
            self._table.put(host)
        except KeyError:
            # A host added since the last refresh: rebuild the table with it (rare).
            self._table = HostTable([*self._table.hosts, host])
