"""Session lifecycle: each pool's idle timeout and maximum session time, enforced by the broker.

Idle time counts from the last client input the gateway recorded (sessions.last_input_at), or
from the start when there was none. A pass finds the sessions over either limit and logs them off
through DesktopService, so the pool's kind decides what happens to the desktop.
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import errors
from broker.config import PoolSettings
from broker.db.models import Desktop, DesktopSession, utcnow
from broker.pool_task import PoolTask

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 15.0
POLICY_ACTOR = "session-policy"


def overdue_action(pool: PoolSettings, session: DesktopSession, now: dt.datetime) -> str | None:
    if pool.max_session_s is not None and (now - session.started_at).total_seconds() > pool.max_session_s:
        return "max_time_logoff"
    last_input = session.last_input_at or session.started_at
    if pool.idle_timeout_s is not None and (now - last_input).total_seconds() > pool.idle_timeout_s:
        return "idle_logoff"
    return None


def overdue_sessions(db: Session, pool: PoolSettings, now: dt.datetime) -> list[str]:
    """The ids of the pool's active sessions over one of its limits."""
    sessions = db.scalars(
        select(DesktopSession)
        .join(Desktop, Desktop.id == DesktopSession.desktop_id)
        .where(Desktop.pool_name == pool.name, DesktopSession.state == "active")
    ).all()
    return [session.id for session in sessions if overdue_action(pool, session, now)]


def still_overdue(db: Session, session_id: str, pool: PoolSettings, now: dt.datetime) -> str | None:
    """The session's overdue action as of now; None once it has ended or its user has typed since."""
    session = db.get(DesktopSession, session_id)
    if session is None or session.state != "active":
        return None
    return overdue_action(pool, session, now)


class SessionLifecycle(PoolTask):
    """One asyncio task on the broker's loop that logs off sessions over their pool's limits."""

    name = "session-lifecycle"
    pass_interval_s = PASS_INTERVAL_S

    @property
    def wanted(self) -> bool:
        return any(pool.idle_timeout_s or pool.max_session_s for pool in self.config.pools)

    async def run_once(self) -> int:
        return await self.enforce_once()

    async def enforce_once(self) -> int:
        """Log off every session over its pool's limits now; returns how many were logged off."""
        count = 0
        for pool in self.config.pools:
            if pool.idle_timeout_s or pool.max_session_s:
                count += await self._enforce_pool(pool)
        return count

    async def _enforce_pool(self, pool: PoolSettings) -> int:
        overdue = await self.db.run(partial(overdue_sessions, pool=pool, now=utcnow()))
        logged_off = 0
        for session_id in overdue:
            # Logoffs run one after another, each with its hypervisor call, so the pass's first read can
            # be seconds old by the time a session's turn comes: its user may have typed since.
            action = await self.db.run(partial(still_overdue, session_id=session_id, pool=pool, now=utcnow()))
            if action is None:
                continue
            try:
                await self.desktops.end_session(session_id, POLICY_ACTOR, action)
            except errors.BrokerError as exc:
                # A host that cannot be reached keeps the session; the next pass tries again.
                log.warning("%s of session %s failed: %s", action, session_id, exc.message)
            else:
                logged_off += 1
        return logged_off
