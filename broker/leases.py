"""Leases: each background job runs on exactly one broker at a time, and moves when that broker dies.

Several brokers share one database. The pool manager, the host monitor (reconcile and orphan policy),
rollouts, the session and power policies and the token purge act on shared state, so each is run by the
broker that holds its lease: a row in `leases` with the owner and an expiry. The lease keeper renews the
leases it holds every third of `broker.lease_ttl_s` and takes any that expired, by conditional writes (one
INSERT … ON CONFLICT DO NOTHING for a job nobody held yet, one UPDATE … WHERE owner = me OR expired), so two
brokers never both win. A broker that dies stops renewing; another takes its jobs within one TTL plus one
renewal interval (15 s with the default 10 s TTL). A broker that cannot reach the database stops acting
when its leases run out, since it cannot know whether another took them. A clean stop gives the leases up
at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from functools import partial

from sqlalchemy import case, delete, or_, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from broker.background import PeriodicTask
from broker.db import Database
from broker.db.models import Lease, utcnow
from monitoring.metrics import LEASE_CHANGES, LEASES_HELD, LeaseChange

log = logging.getLogger(__name__)


def broker_identity() -> str:
    """This broker process among all: host name, process id, and a random part for restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"[:128]


def hold(db: Session, name: str, owner: str, now: dt.datetime, ttl_s: float) -> bool:
    """Take or renew the lease `name` for `owner` until now + ttl; False while another broker holds it."""
    expires = now + dt.timedelta(seconds=ttl_s)
    insert = sqlite_insert if db.get_bind().dialect.name == "sqlite" else postgresql_insert
    # RETURNING, not rowcount: psycopg reports -1 rows for INSERT … ON CONFLICT DO NOTHING.
    fresh = db.execute(
        insert(Lease)
        .values(name=name, owner=owner, acquired_at=now, expires_at=expires)
        .on_conflict_do_nothing()
        .returning(Lease.name)
    ).scalar_one_or_none()
    if fresh is not None:
        return True
    taken = db.execute(
        update(Lease)
        .where(Lease.name == name, or_(Lease.owner == owner, Lease.expires_at < now))
        .values(
            owner=owner,
            expires_at=expires,
            acquired_at=case((Lease.owner == owner, Lease.acquired_at), else_=now),
        )
    ).rowcount
    return bool(taken)


def hold_all(db: Session, names: Iterable[str], owner: str, now: dt.datetime, ttl_s: float) -> set[str]:
    return {name for name in names if hold(db, name, owner, now, ttl_s)}


GIVE_UP_TIMEOUT_S = 3.0


def give_up(db: Session, owner: str) -> None:
    if db.get_bind().dialect.name == "postgresql":
        # At stop, a lease row another transaction holds (a renewal of ours still running after its task
        # was cancelled, another broker taking the lease over) must not hold the stop up: the leases
        # expire by themselves within one TTL anyway.
        db.execute(text("SET LOCAL lock_timeout = '2s'"))
    db.execute(delete(Lease).where(Lease.owner == owner))


class Leases:
    """The leases this broker holds, as its last renewal left them."""

    def __init__(self, db: Database, ttl_s: float, owner: str | None = None) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.owner = owner or broker_identity()
        self.held: set[str] = set()
        self._valid_until = 0.0  # monotonic time the held leases expire by, from the last renewal
        self.on_acquire: dict[str, Callable[[], None]] = {}

    def holds(self, name: str) -> bool:
        # After a failed renewal another broker may have taken the job: act only while surely ours.
        return name in self.held and time.monotonic() < self._valid_until

    async def renew(self, names: Iterable[str]) -> set[str]:
        started = time.monotonic()
        try:
            held = await self.db.run(
                partial(hold_all, names=list(names), owner=self.owner, now=utcnow(), ttl_s=self.ttl_s)
            )
        except Exception:
            log.warning("leases: cannot renew (database unavailable); background jobs pause when they expire")
            raise
        self._valid_until = started + self.ttl_s
        self._changed(held)
        return held

    async def give_up(self) -> None:
        self._changed(set())
        await self.db.run(partial(give_up, owner=self.owner))

    def _changed(self, held: set[str]) -> None:
        for name in sorted(held - self.held):
            log.info("leases: this broker (%s) now runs %s", self.owner, name)
            LEASE_CHANGES.labels(job=name, change=LeaseChange.ACQUIRED.value).inc()
            LEASES_HELD.labels(job=name).set(1)
            if name in self.on_acquire:
                self.on_acquire[name]()  # its first pass now, not at its next interval
        for name in sorted(self.held - held):
            log.warning("leases: this broker (%s) no longer runs %s", self.owner, name)
            LEASE_CHANGES.labels(job=name, change=LeaseChange.LOST.value).inc()
            LEASES_HELD.labels(job=name).set(0)
        self.held = held


class LeaseKeeper(PeriodicTask):
    """Renews this broker's leases of `jobs` every third of their TTL."""

    name = "lease-keeper"

    def __init__(self, leases: Leases, jobs: Iterable[str]) -> None:
        super().__init__(leases.ttl_s / 3)
        self.leases = leases
        self.jobs = list(jobs)

    async def run_once(self) -> set[str]:
        return await self.leases.renew(self.jobs)

    async def stop(self) -> None:
        await super().stop()
        try:
            # Bounded: a stop never waits on the database for long (a broker stopping because the
            # database is gone would otherwise wait for the connect and pool timeouts in turn).
            await asyncio.wait_for(self.leases.give_up(), GIVE_UP_TIMEOUT_S)
        except Exception:
            log.warning(
                "leases: could not give up the leases at stop; they expire in %.0f s", self.leases.ttl_s
            )
