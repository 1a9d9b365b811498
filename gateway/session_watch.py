"""Closes the console tunnels of desktop sessions that ended elsewhere (sign-out, admin revoke, logoff).

The broker writes the end into the shared database; each gateway polls for the sessions of its own open
tunnels, once a second, in the database's worker thread, so a revoke reaches every gateway within a
couple of seconds without the broker knowing where the tunnels are.
"""

from __future__ import annotations

import logging
from functools import partial

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from tornado.ioloop import PeriodicCallback

from broker.db import Database
from broker.db.models import ConsoleCutoff, DesktopSession
from gateway.relay import CLOSE_POLICY_VIOLATION, TunnelRegistry
from monitoring.metrics import TUNNELS_CLOSED_REVOKED

log = logging.getLogger(__name__)

REVOKED_REASON = "session revoked"
ENDED_REASON = "session ended"
POLL_INTERVAL_S = 1.0


def ended_sessions(db: Session, session_ids: list[str]) -> list[tuple[str, bool]]:
    """Of these desktop sessions, the ended ones, and whether a revoke ended them."""
    rows = db.execute(
        select(DesktopSession.id, ConsoleCutoff.session_id)
        .outerjoin(ConsoleCutoff, ConsoleCutoff.session_id == DesktopSession.id)
        .where(DesktopSession.id.in_(session_ids), DesktopSession.state == "ended")
    ).all()
    return [(session_id, revocation is not None) for session_id, revocation in rows]


class SessionWatch:
    """Polls the database for ended sessions of open tunnels; started with the first tunnel."""

    def __init__(self, tunnels: TunnelRegistry, db: Database, interval_s: float = POLL_INTERVAL_S) -> None:
        self.tunnels = tunnels
        self.db = db
        self._callback = PeriodicCallback(self.check, interval_s * 1000)
        self._checking = False

    def ensure_started(self) -> None:
        if not self._callback.is_running():
            self._callback.start()

    def stop(self) -> None:
        self._callback.stop()

    async def check(self) -> int:
        """One poll; returns how many tunnels it closed. Overlapping polls are skipped, not queued."""
        session_ids = self.tunnels.sessions()
        if not session_ids or self._checking:
            return 0
        self._checking = True
        try:
            ended = await self.db.run(partial(ended_sessions, session_ids=session_ids))
        except SQLAlchemyError as exc:
            # The database may be restarting; tunnels keep relaying and the next poll tries again.
            log.warning("session watch: database unavailable: %s", type(exc).__name__)
            return 0
        finally:
            self._checking = False
        return sum(self._close(session_id, revoked) for session_id, revoked in ended)

    def _close(self, session_id: str, revoked: bool) -> int:
        reason = REVOKED_REASON if revoked else ENDED_REASON
        closed = self.tunnels.close_session(session_id, reason, CLOSE_POLICY_VIOLATION)
        if closed:
            log.info("closed %d tunnel(s) of session %s: %s", closed, session_id, reason)
            if revoked:
                TUNNELS_CLOSED_REVOKED.inc(closed)
        return closed
