"""The database side of placement: host candidates as the engine sees them, and the claim.

A claim is one transaction: lock the host's row and bump its generation (one UPDATE … RETURNING whose
sub-select skips a row another transaction holds), then count what the host holds and check the
desktop still fits, then insert the desktop. `claim_slot`/`reserve` with a generation (the guard of
old) lose when anything changed on the host since it was read; the placement worker's
`reserve_many` instead judges the host as it now is: it must pass the engine's filters again, still
fit, and hold no more desktops than the decision counted (another broker placed there since: the
decision is stale for a spread policy). A lost claim is a ClaimLost, for that claim alone.

HostCatalog keeps the candidates in memory for callers that place at a high rate, so a decision does
not read a thousand host rows: a claim updates the host it took, `sync` (every SYNC_S, and after lost
claims) reads every host's generation and re-reads the hosts that moved — the other brokers' claims —
and the whole list is re-read after `max_age_s`, which picks up capacity freed elsewhere.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, make_transient_to_detached

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


_HOSTS = Host.__table__  # claims and catalog reads use the table's columns, not the ORM entity
_DESKTOPS = Desktop.__table__

# How often a decision first asks for every host's generation and re-reads the hosts whose generation
# moved (HostCatalog.sync): other brokers' claims reach this broker's figures within this delay.
SYNC_S = 0.1
# After lost claims, at most this often (else only the lost hosts are read again): HostCatalog.catch_up.
CATCH_UP_S = 0.02


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
    desktops = Desktop.__table__.c  # the table's columns: nothing for the ORM to compile or load
    query = (
        select(
            desktops.host_name,
            desktops.pool_name,
            func.count(),
            func.coalesce(func.sum(desktops.vcpus), 0),
            func.coalesce(func.sum(desktops.memory_mib), 0),
        )
        .where(desktops.state.in_(HOLDING_STATES), desktops.host_name.is_not(None))
        .group_by(desktops.host_name, desktops.pool_name)
    )
    if host_names is not None:
        query = query.where(desktops.host_name.in_(list(host_names)))
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
    # The table's rows, not ORM objects: a catalog refresh reads a thousand of them.
    query = select(*_HOSTS.c).order_by(_HOSTS.c.name)
    if names is not None:
        query = query.where(_HOSTS.c.name.in_(names))
    usage = host_usage(db, names)
    return [candidate_of(host, usage.get(host.name, HostUsage())) for host in db.execute(query)]


def claim_host(session: Session, host_name: str, generation: int) -> bool:
    """Take a slot on the host if nobody else has since we read it; False means retry placement.

    The host must also still be up and enabled: a decision taken on figures read a moment ago (a
    catalog) must not land on a host the monitor or an administrator has taken out since.
    """
    host = lock_hosts(session, [host_name], generation).get(host_name)
    return host is not None and host.state == "up" and host.admin_state == "enabled"


def lock_hosts(db: Session, host_names: list[str], generation: int | None = None) -> dict:
    """Bump the hosts' generations and return their rows as they are now, by name, in one statement.

    A host missing from the answer is lost: removed, or (with `generation`, for one host) changed. The
    rows are locked through a SKIP LOCKED sub-select (PostgreSQL; SQLite has one writer and ignores it):
    a host another transaction is claiming now is lost at once instead of waited for. The locks are held
    until commit, so what is read after this in the same transaction cannot change before our desktops
    are inserted.
    """
    names = _HOSTS.c.name == host_names[0] if len(host_names) == 1 else _HOSTS.c.name.in_(host_names)
    unclaimed = select(_HOSTS.c.name).where(names).with_for_update(skip_locked=True)
    statement = update(_HOSTS).where(_HOSTS.c.name.in_(unclaimed))
    if generation is not None:
        statement = statement.where(_HOSTS.c.generation == generation)
    statement = statement.values(generation=_HOSTS.c.generation + 1).returning(*_HOSTS.c)
    return {row.name: row for row in db.execute(statement)}


def still_fits(candidate: HostCandidate, request: PlacementRequest) -> bool:
    if not candidate.fits(request.vcpus, request.memory_mib):
        return False
    per_pool = candidate.pool_desktops.get(request.pool, 0)
    return request.max_per_host is None or per_pool < request.max_per_host


# Answers whether a host, as the claim found it, may take the request: None if it may, else the name of
# the filter that drops it (PlacementEngine.refusal: the engine's filters asked again about that host).
Admission = Callable[[HostCandidate, PlacementRequest], "str | None"]


def _lost(host_name: str, kind: ClaimConflict) -> ClaimLost:
    PLACEMENT_CLAIM_CONFLICTS.labels(kind=kind.value).inc()
    return ClaimLost(host_name, kind)


def _judge(
    current: HostCandidate, request: PlacementRequest, admits: Admission | None, strict: bool
) -> ClaimLost | None:
    if current.state != "up" or current.admin_state != "enabled":
        return _lost(current.name, ClaimConflict.GENERATION if strict else ClaimConflict.CHANGED)
    refused = admits(current, request) if admits is not None else None
    if refused is None and not still_fits(current, request):
        refused = "capacity"
    if refused in ("capacity", "anti_affinity"):
        return _lost(current.name, ClaimConflict.CAPACITY)
    return None if refused is None else _lost(current.name, ClaimConflict.CHANGED)


def claim_slot(
    db: Session,
    host_name: str,
    generation: int | None,
    request: PlacementRequest,
    admits: Admission | None = None,
) -> HostCandidate:
    """Claim the host and re-check it still fits, in the caller's transaction; ClaimLost if not.

    With a `generation`, the host must not have changed since it was read (any claim or change bumps
    it). Without one (the placement worker), the host may have changed — another broker's claim on it
    is the usual case — as long as, read under the claim's lock, it still passes `admits` (the engine's
    filters) and fits. Either way the host must be up and enabled.

    Returns the host as it is after the claim (generation bumped, the new desktop not yet counted).
    """
    rows = lock_hosts(db, [host_name], generation)
    if host_name not in rows:
        raise _lost(host_name, ClaimConflict.GENERATION if generation is not None else ClaimConflict.BUSY)
    current = candidate_of(rows[host_name], host_usage(db, [host_name]).get(host_name, HostUsage()))
    lost = _judge(current, request, admits, strict=generation is not None)
    if lost is not None:
        raise lost
    return current


def reserve(
    db: Session,
    host_name: str,
    generation: int | None,
    request: PlacementRequest,
    desktop: Desktop,
    admits: Admission | None = None,
) -> tuple[Desktop, HostCandidate]:
    """Claim a slot and record the desktop with the resources it holds, in the caller's transaction.

    Returns the desktop and the host as the claim found it (for HostCatalog.record_claim).
    """
    host = claim_slot(db, host_name, generation, request, admits)
    _record(db, desktop, host_name, request)
    db.flush()
    return desktop, host


def _record(db: Session, desktop: Desktop, host_name: str, request: PlacementRequest) -> None:
    _hold(desktop, host_name, request)
    db.add(desktop)


def _hold(desktop: Desktop, host_name: str, request: PlacementRequest) -> None:
    """The desktop as placed: on its host, with the resources it holds there."""
    desktop.host_name = host_name
    desktop.vcpus, desktop.memory_mib = request.vcpus, request.memory_mib


def insert_desktops(db: Session, desktops: list[Desktop]) -> None:
    """Insert new (transient) Desktop objects with Core statements rather than the ORM's flush, and leave
    each as the flush and commit would have: its id and every column set, detached from any session.

    The unit of work (identity map, state tracking, the flush's ordering) was the largest single part of
    a claim's transaction (docs/placement.md); the rows are the same. The columns a desktop leaves unset
    get their defaults from the table, as in a flush; desktops that set the same columns go in one
    statement (RETURNING every column, in the order of the desktops).
    """
    columns = [column.key for column in _DESKTOPS.c if column.key != "id"]
    groups: dict[tuple[str, ...], list[Desktop]] = {}
    for desktop in desktops:
        given = vars(desktop)
        groups.setdefault(tuple(key for key in columns if key in given), []).append(desktop)
    for keys, group in groups.items():
        statement = insert(_DESKTOPS).returning(*_DESKTOPS.c, sort_by_parameter_order=True)
        rows = db.execute(statement, [{key: vars(desktop)[key] for key in keys} for desktop in group])
        for desktop, row in zip(group, rows, strict=True):
            for key, value in row._mapping.items():
                setattr(desktop, key, value)
            make_transient_to_detached(desktop)


def reserve_many(
    db: Session,
    claims: list[tuple[HostCandidate, PlacementRequest, Desktop]],
    admits: Admission | None = None,
) -> list[tuple[Desktop, HostCandidate] | ClaimLost]:
    """Several claims in the caller's transaction, in four statements whatever their number.

    Each (host as decided on, request, desktop) is judged in order, the desktops accepted before it on
    the same host counted: the host must still pass `admits` and fit as it is now, and hold no more
    desktops than the decision counted. Another broker's claim that landed there since is a lost claim
    (kind generation), as with the generation guard, but one that is not a conflict by itself: a host
    whose generation moved for nothing placement weighs is still taken. Each answer is (desktop, the
    host as that claim found it) or the ClaimLost of that claim alone. The accepted desktops are
    inserted together.
    """
    names = sorted({decided.name for decided, _, _ in claims})
    rows = lock_hosts(db, names)
    usage = host_usage(db, list(rows)) if rows else {}
    current = {name: candidate_of(row, usage.get(name, HostUsage())) for name, row in rows.items()}
    answers: list[tuple[Desktop, HostCandidate] | ClaimLost] = []
    accepted: list[Desktop] = []
    for decided, request, desktop in claims:
        name = decided.name
        host = current.get(name)
        if host is None:
            answers.append(_lost(name, ClaimConflict.BUSY))
            continue
        if host.desktops > decided.desktops:
            # Placed on since the decision read it: a spread decision would now rank it lower.
            answers.append(_lost(name, ClaimConflict.GENERATION))
            continue
        lost = _judge(host, request, admits, strict=False)
        if lost is not None:
            answers.append(lost)
            continue
        _hold(desktop, name, request)
        accepted.append(desktop)
        answers.append((desktop, host))
        current[name] = with_desktop(host, request, host.generation)
    if accepted:
        insert_desktops(db, accepted)
    return answers


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
        self._synced_at = float("-inf")

    def candidates(self) -> list[HostCandidate]:
        with self._lock:
            if time.monotonic() - self._loaded_at > self.max_age_s:
                self.refresh()
            return list(self._table.hosts)

    def decide(self, engine, request: PlacementRequest) -> tuple[PlacementDecision, HostCandidate | None]:
        """The engine's decision and the chosen host as read (its generation is what to claim with)."""
        with self._lock:
            now = time.monotonic()
            if now - self._loaded_at > self.max_age_s:
                self.refresh()
            elif now - self._synced_at > SYNC_S and not self._pending:
                self.sync()
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
            self._loaded_at = self._synced_at = time.monotonic()

    def sync(self, also: Iterable[str] = ()) -> None:
        """Re-read the hosts whose generation moved since we read them (other brokers' claims, changes),
        and the hosts named in `also` (claims of ours that were lost: their figures here assumed them).

        One narrow query for every host's generation, then those hosts only; a host added or removed
        reads them all. Capacity freed by desktops that went away does not move a generation: that
        waits for the full refresh after `max_age_s` (or for nothing fitting).
        """
        names = self._names()
        with self.database.transaction() as db:
            query = select(_HOSTS.c.name, _HOSTS.c.generation)
            if names is not None:
                query = query.where(_HOSTS.c.name.in_(names))
            generations = dict(db.execute(query).all())
            with self._lock:
                table = self._table
                if set(generations) != set(table.index):
                    changed = None
                else:
                    hosts, index = table.hosts, table.index
                    changed = {
                        name for name, gen in generations.items() if hosts[index[name]].generation != gen
                    }
                    changed.update(name for name in also if name in generations)
            fresh = load_host_candidates(db, sorted(changed)) if changed else []
        if changed is None:
            self.refresh()
            return
        with self._lock:
            for host in fresh:
                self._put(host)
            self._synced_at = time.monotonic()

    def catch_up(self, lost: list[str]) -> None:
        """Claims on these hosts were lost: another broker is placing where this one is. Read them again,
        and every host whose generation moved unless that was done less than CATCH_UP_S ago."""
        with self._lock:
            recent = time.monotonic() - self._synced_at < CATCH_UP_S
        if recent:
            self.refresh_hosts(lost)
        else:
            self.sync(also=lost)

    def refresh_hosts(self, names: list[str]) -> None:
        """Forget what this process assumed about these hosts (lost claims) and read them again.

        The other brokers' claims elsewhere reach the catalog through `sync`, every SYNC_S."""
        with self.database.transaction() as db:
            fresh = load_host_candidates(db, names)
        with self._lock:
            for host in fresh:
                self._put(host)
            if len(fresh) < len({name for name in names if name in self._table.index}):
                self.invalidate()  # a host was removed: read the list again without it

    def refresh_host(self, name: str) -> None:
        self.refresh_hosts([name])

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
