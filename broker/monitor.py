"""The host monitor: notice dead hypervisor hosts fast, tell users, and converge database and hosts.

One asyncio task in the broker. Every `poll_interval_s` it asks each enabled host for its statistics (in a
thread of its own pool: libvirt calls block, and a host that hangs must not starve the database's threads).
A host silent for `down_after_s` is marked down: its desktops become "lost" and their sessions end, so the
portal says so and the next connect starts a new desktop on a healthy host (placement skips hosts that are
not "up"). A host that answers again goes back up, and is reconciled on every pass:

- a desktop the database has as running whose domain is gone → lost;
- a domain the database has as provisioning, running on the host, older than ADOPT_AFTER_S → adopted as
  running (the broker that started it died before recording it);
- a domain of ours the database does not know, or knows as deleted → orphan: reported, or destroyed when
  `[monitor] orphans = "destroy"`;
- a running desktop that ended by itself on its host (an SBC session whose user logged out from the desktop's
  panel, or whose published application was closed) → removed from the host and recorded like a logoff: the
  desktop deleted, its sessions ended, its slot free.

Everything is level-triggered: a pass looks at what is, not at what happened, so it is idempotent and
catches up after a broker restart or a lost event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.background import PeriodicTask
from broker.config import MonitorSettings
from broker.db import Database, move_state
from broker.db.models import AuditEvent, Desktop, DesktopSession, Host, Pool, utcnow
from broker.inventory import update_host_gauges
from hypervisor.base import DisplayEndpoint, DomainEvent, HostStats, HypervisorError
from hypervisor.provider import DesktopProvider
from monitoring.metrics import (
    DESKTOPS_LOST,
    DOMAIN_EVENTS,
    HOST_DOWN_TRANSITIONS,
    ORPHAN_DOMAINS,
    RECONCILE_FIXES,
    SESSIONS_ACTIVE,
    OrphanAction,
    ReconcileFix,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

ACTOR = "monitor"
HOST_DOWN_REASON = "host_down"
CRASHED_REASON = "desktop_crashed"
# A start takes seconds (define, boot, VNC port); a row still "provisioning" this long after its domain runs
# was left by a broker that died between starting the domain and recording it.
ADOPT_AFTER_S = 60.0
LIVE_STATES = ("provisioning", "running")
GONE_STATES = ("deleted", "lost", "error")


# -- database work, run in Database.run's worker thread ----------------------------------------------


def _audit(action: str, result: str, target: str, **detail: Any) -> AuditEvent:
    return AuditEvent(actor=ACTOR, action=action, result=result, target=target, detail=detail)


def enabled_hosts(db: Session) -> dict[str, str]:
    """Name → health state of the hosts the monitor polls (disabled hosts are left alone)."""
    rows = db.execute(select(Host.name, Host.state).where(Host.admin_state != "disabled"))
    return dict(rows.all())


def record_up(db: Session, name: str, stats: HostStats) -> bool:
    """Store the host's stats and mark it up; True if it was down before."""
    host = db.get(Host, name)
    if host is None:
        return False
    host.cpu_load = stats.cpu_load if stats.cpu_load is not None else host.cpu_load
    # Physical size as the host reports it, unless an administrator set it (vdi host add --vcpus …).
    if host.vcpus is None and stats.cpus:
        host.vcpus = stats.cpus
    if host.memory_mib is None and stats.memory_mib:
        host.memory_mib = stats.memory_mib
    was_down, host.state = host.state != "up", "up"
    if was_down:
        db.add(_audit("host_up", "success", name))
        update_host_gauges(db)
    return was_down


def _end_sessions(db: Session, desktop: Desktop, reason: str) -> int:
    sessions = db.scalars(
        select(DesktopSession).where(
            DesktopSession.desktop_id == desktop.id, DesktopSession.state == "active"
        )
    ).all()
    for session in sessions:
        session.state, session.ended_at = "ended", utcnow()
        db.add(_audit("session_end", "success", desktop.pool_name, session=session.id, reason=reason))
    return len(sessions)


def _mark_lost(
    db: Session, desktop: Desktop, reason: str, states: tuple[str, ...] = LIVE_STATES
) -> int | None:
    """Mark the desktop lost and end its sessions; how many sessions ended, None if its state moved on."""
    # Conditional: a logoff may have destroyed the domain itself and recorded "deleted" since the monitor
    # read the row; writing "lost" over that would show a logged-off user a lost desktop.
    if not move_state(db, Desktop, desktop.id, states, "lost", error=reason):
        return None
    db.add(_audit("desktop_lost", "failure", desktop.pool_name, desktop=desktop.domain_name, reason=reason))
    return _end_sessions(db, desktop, reason)


@dataclass
class DownResult:
    desktops: list[str] = field(default_factory=list)
    sessions_ended: int = 0


def record_down(db: Session, name: str, silent_s: float) -> DownResult | None:
    """Mark the host down, its live desktops lost and their sessions ended, in one transaction.

    None if the host was down already (or is gone): the transition happens once.
    """
    host = db.get(Host, name)
    if host is None or host.state == "down":
        return None
    result = DownResult()
    host.state = "down"
    desktops = db.scalars(
        select(Desktop).where(Desktop.host_name == name, Desktop.state.in_(LIVE_STATES))
    ).all()
    for desktop in desktops:
        ended = _mark_lost(db, desktop, HOST_DOWN_REASON)
        if ended is not None:
            result.sessions_ended += ended
            result.desktops.append(desktop.domain_name)
    db.add(_audit("host_down", "failure", name, silent_s=round(silent_s, 1), desktops=result.desktops))
    update_host_gauges(db)
    return result


def record_crash(db: Session, host: str, domain: str, detail: str) -> tuple[str, int] | None:
    """A live desktop's guest died on its own: end its sessions; None if the domain is not a live desktop.

    A floating desktop is lost (the next connect gets a fresh one). A dedicated desktop's disk holds its
    user's work, so it becomes "stopped" and the next connect starts it again from that disk.
    Returns the desktop's new state and how many sessions ended.
    """
    desktop = db.scalars(
        select(Desktop).where(
            Desktop.host_name == host, Desktop.domain_name == domain, Desktop.state.in_(LIVE_STATES)
        )
    ).first()
    if desktop is None:
        return None
    pool = db.get(Pool, desktop.pool_name)
    if pool is not None and pool.kind == "dedicated":
        if not move_state(db, Desktop, desktop.id, LIVE_STATES, "stopped", error=CRASHED_REASON):
            return None
        outcome = "stopped", _end_sessions(db, desktop, CRASHED_REASON)
    else:
        ended = _mark_lost(db, desktop, CRASHED_REASON)
        if ended is None:
            return None
        outcome = "lost", ended
    db.add(_audit("desktop_crashed", "failure", host, desktop=domain, detail=detail))
    return outcome


@dataclass(frozen=True)
class ReconcilePlan:
    """What the database knows about the domains on one host, split by what reconcile does with each."""

    lost: list[int]  # desktop ids: running in the database, no domain on the host
    adopt: list[tuple[int, str]]  # (desktop id, domain name): provisioning too long, domain present
    orphans: list[str]  # domain names the database does not know or knows as deleted


def plan_reconcile(db: Session, name: str, domains: list[str]) -> ReconcilePlan:
    present = set(domains)
    rows = db.scalars(select(Desktop).where(Desktop.host_name == name, Desktop.state.in_(LIVE_STATES))).all()
    cutoff = utcnow() - dt.timedelta(seconds=ADOPT_AFTER_S)
    known = dict(
        db.execute(select(Desktop.domain_name, Desktop.state).where(Desktop.domain_name.in_(present))).all()
    )
    return ReconcilePlan(
        lost=[d.id for d in rows if d.state == "running" and d.domain_name not in present],
        adopt=[
            (d.id, d.domain_name)
            for d in rows
            if d.state == "provisioning" and d.domain_name in present and d.created_at < cutoff
        ],
        orphans=sorted(n for n in present if known.get(n) in (None, "deleted")),
    )


def mark_missing_lost(db: Session, desktop_ids: list[int]) -> tuple[int, int]:
    """Desktops whose domain vanished: how many were marked lost and how many sessions ended.

    Rows that changed state since the plan was made (a logoff that destroyed the domain itself, say)
    are left alone.
    """
    marked = ended = 0
    candidates = db.scalars(select(Desktop).where(Desktop.id.in_(desktop_ids), Desktop.state == "running"))
    for desktop in candidates.all():
        sessions = _mark_lost(db, desktop, "domain_missing", states=("running",))
        if sessions is None:
            continue
        marked, ended = marked + 1, ended + sessions
        RECONCILE_FIXES.labels(fix=ReconcileFix.LOST.value).inc()
    return marked, ended


def adopt_running(db: Session, desktop_id: int, endpoint: DisplayEndpoint) -> bool:
    desktop = db.get(Desktop, desktop_id)
    if desktop is None or not move_state(
        db, Desktop, desktop_id, ("provisioning",), "running", vnc_host=endpoint.host, vnc_port=endpoint.port
    ):
        return False
    db.add(_audit("desktop_adopted", "success", desktop.pool_name, desktop=desktop.domain_name))
    return True


def record_ended(db: Session, desktop_ids: list[int]) -> tuple[list[str], int]:
    """Desktops whose session ended on the host, now removed from it: deleted, their sessions ended, like a
    logoff. Returns the names recorded and how many sessions ended; rows that moved on are left alone."""
    names, ended = [], 0
    for desktop in db.scalars(select(Desktop).where(Desktop.id.in_(desktop_ids))).all():
        if not move_state(db, Desktop, desktop.id, ("running",), "deleted"):
            continue  # a logoff or another broker's monitor recorded it first
        names.append(desktop.domain_name)
        ended += _end_sessions(db, desktop, "session_ended")
        db.add(_audit("session_ended", "success", desktop.pool_name, desktop=desktop.domain_name))
        RECONCILE_FIXES.labels(fix=ReconcileFix.ENDED.value).inc()
    return names, ended


def running_desktops(db: Session, name: str, domains: list[str]) -> dict[str, int]:
    """Domain name → id of the host's desktops among `domains` that the database has as running."""
    rows = db.execute(
        select(Desktop.domain_name, Desktop.id).where(
            Desktop.host_name == name, Desktop.state == "running", Desktop.domain_name.in_(domains)
        )
    )
    return dict(rows.all())


def record_orphan(db: Session, host: str, domain: str, action: OrphanAction) -> None:
    db.add(_audit("orphan_domain", action.value, host, domain=domain))


# -- the monitor task --------------------------------------------------------------------------------


class HostMonitor(PeriodicTask):
    """Polls hosts and reconciles them; `start()` on the broker's loop, `await stop()` at shutdown."""

    name = "host-monitor"

    def __init__(
        self, settings: MonitorSettings, db: Database, providers: dict[str, DesktopProvider]
    ) -> None:
        super().__init__(settings.poll_interval_s)
        self.settings = settings
        self.db = db
        self.providers = providers
        # One thread per host at most: a hung host blocks only its own poll (see _pending).
        self._executor = ThreadPoolExecutor(max_workers=max(2, len(providers)), thread_name_prefix="monitor")
        self._pending: dict[str, Future] = {}
        self._last_answer: dict[str, float] = {}
        self._reported_orphans: set[tuple[str, str]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event_tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        log.info(
            "host monitor: polling every %.1f s, down after %.1f s, orphans: %s",
            self.settings.poll_interval_s,
            self.settings.down_after_s,
            self.settings.orphans,
        )
        self._loop = asyncio.get_running_loop()
        watching = [
            name
            for name, provider in self.providers.items()
            if provider.watch_events(self._event_from_provider)
        ]
        if watching:
            log.info("host monitor: lifecycle events from %s", ", ".join(sorted(watching)))
        super().start()

    async def stop(self) -> None:
        await super().stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run_once(self) -> None:
        await self.pass_once()

    async def pass_once(self) -> None:
        """Poll every enabled host once, concurrently, and reconcile the ones that answered."""
        hosts = await self.db.run(enabled_hosts)
        names = [name for name in hosts if name in self.providers]
        await asyncio.gather(*(self._check_host(name) for name in names))

    async def _check_host(self, name: str) -> None:
        now = time.monotonic()
        self._last_answer.setdefault(name, now)
        stats = await self._poll(name)
        if stats is None:
            # Measured when the poll gave up, not when the pass began: a hung poll (a remote host whose
            # network is gone) already waited a whole poll interval, which counts as silence too.
            silent_s = time.monotonic() - self._last_answer[name]
            if silent_s >= self.settings.down_after_s:
                await self._host_down(name, silent_s)
            return
        self._last_answer[name] = now
        if await self.db.run(partial(record_up, name=name, stats=stats)):
            log.warning("host %s: answering again; marked up (its lost desktops stay lost)", name)
        await self.reconcile_host(name)

    async def _poll(self, name: str) -> HostStats | None:
        """The host's stats, or None if it did not answer within one poll interval."""
        future = self._pending.get(name)
        if future is None or future.done():
            # A call still hanging from an earlier pass is awaited again rather than piled up.
            future = self._executor.submit(self.providers[name].host_stats)
            self._pending[name] = future
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.poll_interval_s)
        except TimeoutError:
            log.info("host %s: no answer within %.1f s", name, self.settings.poll_interval_s)
        except HypervisorError as exc:
            log.info("host %s: not answering: %s", name, exc.message)
        return None

    # -- lifecycle events -------------------------------------------------------------------------------

    def _event_from_provider(self, event: DomainEvent) -> None:
        """Called on a provider's thread: hand the event to the broker's loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_event, event)

    def _on_event(self, event: DomainEvent) -> None:
        DOMAIN_EVENTS.labels(event=event.event).inc()
        log.info("host %s: domain %s %s (%s)", event.host, event.domain_name, event.event, event.detail)
        if event.crashed:
            # Held so the task is not garbage-collected before it ran.
            task = asyncio.create_task(self._desktop_crashed(event))
            self._event_tasks.add(task)
            task.add_done_callback(self._event_tasks.discard)

    async def _desktop_crashed(self, event: DomainEvent) -> None:
        """A guest that died on its own is lost now, not at the next poll; its users see it on the portal."""
        try:
            outcome = await self.db.run(
                partial(record_crash, host=event.host, domain=event.domain_name, detail=event.detail)
            )
        except Exception:
            log.exception("host %s: cannot record the crash of %s", event.host, event.domain_name)
            return
        if outcome is None:
            return
        state, ended = outcome
        if state == "lost":
            DESKTOPS_LOST.inc()
        SESSIONS_ACTIVE.dec(ended)
        log.warning(
            "host %s: desktop %s crashed (%s); now %s, %d sessions ended",
            *(event.host, event.domain_name, event.detail, state, ended),
        )

    async def _host_down(self, name: str, silent_s: float) -> None:
        result = await self.db.run(partial(record_down, name=name, silent_s=silent_s))
        if result is None:
            return
        HOST_DOWN_TRANSITIONS.inc()
        DESKTOPS_LOST.inc(len(result.desktops))
        SESSIONS_ACTIVE.dec(result.sessions_ended)
        log.warning(
            "host %s: marked down after %.1f s without an answer; %d desktops lost, %d sessions ended",
            *(name, silent_s, len(result.desktops), result.sessions_ended),
        )

    async def reconcile_all(self) -> None:
        """Reconcile every enabled host that is up (at broker start, before the first poll)."""
        hosts = await self.db.run(enabled_hosts)
        for name, state in hosts.items():
            if state == "up" and name in self.providers:
                await self.reconcile_host(name)

    async def reconcile_host(self, name: str) -> None:
        try:
            domains = await self._call(name, lambda provider: provider.list_desktops())
        except HypervisorError as exc:
            log.info("host %s: cannot reconcile now: %s", name, exc.message)
            return
        plan = await self.db.run(partial(plan_reconcile, name=name, domains=domains))
        lost = await self._still_missing(name, plan.lost) if plan.lost else []
        if lost:
            marked, ended = await self.db.run(partial(mark_missing_lost, desktop_ids=lost))
            SESSIONS_ACTIVE.dec(ended)
            if marked:
                log.warning("host %s: %d running desktops have no domain; marked lost", name, marked)
        for desktop_id, domain in plan.adopt:
            await self._adopt(name, desktop_id, domain)
        for domain in plan.orphans:
            await self._orphan(name, domain)
        await self._remove_ended(name)

    async def _remove_ended(self, name: str) -> None:
        """Desktops of the host that ended by themselves (a user who logged out of an SBC desktop): remove
        what is left of them on the host and record it like a logoff, so their slots are free at once."""
        try:
            ended = await self._call(name, lambda provider: provider.ended_desktops())
            if not ended:
                return
            candidates = await self.db.run(partial(running_desktops, name=name, domains=ended))
            # Listed again after the database was read: a desktop recorded running meanwhile had finished
            # starting, so one still listed as ended really ended (the same care as _still_missing).
            confirmed = set(await self._call(name, lambda provider: provider.ended_desktops()))
            gone = {domain: desktop_id for domain, desktop_id in candidates.items() if domain in confirmed}
            for domain in gone:
                await self._call(name, lambda provider, domain=domain: provider.destroy_desktop(domain))
        except HypervisorError as exc:
            log.info("host %s: cannot remove ended desktops now: %s", name, exc.message)
            return
        if not gone:
            return
        names, sessions = await self.db.run(partial(record_ended, desktop_ids=list(gone.values())))
        SESSIONS_ACTIVE.dec(sessions)
        if names:
            log.info("host %s: %s ended on the host; removed like a logoff", name, ", ".join(names))

    async def _still_missing(self, name: str, lost: list[int]) -> list[int]:
        """Of the desktops the plan found missing, those still missing from a second listing.

        The host was listed before the database was read: a desktop created in between (by this broker or,
        with several brokers, by another one) is running in the database but was not in the listing.
        Listing again after the read tells it from a desktop that really vanished.
        """
        try:
            domains = await self._call(name, lambda provider: provider.list_desktops())
        except HypervisorError as exc:
            log.info("host %s: cannot confirm missing desktops now: %s", name, exc.message)
            return []
        again = await self.db.run(partial(plan_reconcile, name=name, domains=domains))
        return [desktop_id for desktop_id in lost if desktop_id in set(again.lost)]

    async def _adopt(self, name: str, desktop_id: int, domain: str) -> None:
        try:
            endpoint = await self._call(name, lambda provider: provider.display(domain))
        except HypervisorError as exc:
            log.info("host %s: cannot adopt %s yet: %s", name, domain, exc.message)
            return
        if await self.db.run(partial(adopt_running, desktop_id=desktop_id, endpoint=endpoint)):
            RECONCILE_FIXES.labels(fix=ReconcileFix.ADOPTED.value).inc()
            log.warning(
                "host %s: adopted %s, left provisioning by an earlier broker, as running", name, domain
            )

    async def _orphan(self, name: str, domain: str) -> None:
        if self.settings.orphans == "destroy":
            try:
                await self._call(name, lambda provider: provider.destroy_desktop(domain))
            except HypervisorError as exc:
                log.warning("host %s: cannot destroy orphan %s: %s", name, domain, exc.message)
                return
            action = OrphanAction.DESTROYED
        elif (name, domain) in self._reported_orphans:
            return  # reported once per broker process; the audit log is not a heartbeat
        else:
            action = OrphanAction.REPORTED
            self._reported_orphans.add((name, domain))
        await self.db.run(partial(record_orphan, host=name, domain=domain, action=action))
        ORPHAN_DOMAINS.labels(action=action.value).inc()
        log.warning("host %s: orphan domain %s (not in the database): %s", name, domain, action.value)

    async def _call(self, name: str, call: Callable[[DesktopProvider], T]) -> T:
        """Run `call` with the host's provider on the monitor's own threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, self.providers[name])
